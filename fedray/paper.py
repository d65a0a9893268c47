"""The paper's rounds-to-target numbers (McMahan et al. 2017, Tables 1, 2 and 4) and the cells
that put ours beside them, laid out as the paper prints them.

Pure functions on small DataFrames: `report.py` decides what "ours" is (best learning rate, seeds)
and hands in its per-setting summaries; nothing here reads results or writes files.
"""

from __future__ import annotations

import io
import math
from importlib import resources

import numpy as np
import pandas as pd

N_TRAIN = 60000  # MNIST training examples, the n of u = E n / (K B)
TABLES = ("table1", "table2", "table4")
TITLES = {
    "table1": "Table 1: effect of the client fraction C (2NN E=1, CNN E=5); speedup vs C=0.0",
    "table2": "Table 2: MNIST CNN, 99%, FedAvg vs FedSGD (E=1, B=∞)",
    "table4": "Table 4: MNIST 2NN, 97%, FedAvg vs FedSGD (E=1, B=∞)",
}
PART = {"iid": "IID", "noniid": "Non-IID"}
CELL_COLUMNS = ["table", "model", "target", "partition", "C", "E", "B", "u", "paper_rounds", "paper_speedup", "ran",
                "ours_rounds", "rounds_std", "seeds", "ratio", "speedup", "best_lr", "grid", "edge", "best_acc",
                "budget", "run_target", "cell"]  # fmt: skip


def paper_table() -> pd.DataFrame:
    """The CSV shipped in the package; `rounds` NaN where the paper says the target was not reached."""
    text = resources.files("fedray").joinpath("paper_rounds_to_target.csv").read_text()
    df = pd.read_csv(io.StringIO(text), comment="#")
    df["B"] = df["B"].map(parse_B)
    df["u"] = [u_of(e, b) for e, b in zip(df["E"], df["B"])]
    return df


def parse_B(b) -> float:
    return math.inf if str(b).strip().lower() in ("inf", "∞") else float(b)


def u_of(E: float, B: float, K: int = 100, n: int = N_TRAIN) -> float:
    """Expected local updates per client per round, u = E n / (K B); u = E for B = inf (one full batch)."""
    return float(E) if math.isinf(B) else float(E) * n / (float(K) * float(B))


def fmt_B(B: float) -> str:
    return "∞" if math.isinf(B) else f"{B:g}"


def same_B(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isinf(a) and math.isinf(b)) or (not math.isinf(a) and not math.isinf(b) and math.isclose(a, b))


def is_baseline(row) -> bool:
    """Table 1 compares against C=0.0 (one client per round); Tables 2 and 4 against FedSGD."""
    if row["table"] == "table1":
        return math.isclose(row["C"], 0.0)
    return row["E"] == 1 and math.isinf(row["B"])


def baseline_of(paper: pd.DataFrame, row) -> pd.Series:
    """The row a cell's speedup is measured against: same table, model and partition; for Table 1
    also the same B column (the paper's speedups compare B=10 with B=10, B=∞ with B=∞)."""
    same = (paper["table"] == row["table"]) & (paper["model"] == row["model"]) & (paper["partition"] == row["partition"])
    p = paper[same]
    p = p[[is_baseline(r) for _, r in p.iterrows()]]
    if row["table"] == "table1":
        p = p[[same_B(b, row["B"]) for b in p["B"]]]
    return p.iloc[0]


def cells(paper: pd.DataFrame, ours: dict) -> pd.DataFrame:
    """One row per paper entry. `ours` maps the entry's index in `paper` to a dict with at least
    `rounds` (NaN = not reached), or has no key for an entry nobody ran."""
    out = []
    for i, row in paper.iterrows():
        b = baseline_of(paper, row)
        mine, mine_b = ours.get(i), ours.get(b.name)
        r, pr = (mine or {}).get("rounds", np.nan), row["rounds"]
        rb = (mine_b or {}).get("rounds", np.nan)
        base = is_baseline(row)
        c = {**row.to_dict(), "paper_rounds": pr, "paper_speedup": np.nan if base else pr_speedup(b["rounds"], pr),
             "ran": mine is not None, "ours_rounds": r, "ratio": r / pr if pr > 0 else np.nan,
             "speedup": np.nan if base else pr_speedup(rb, r)}  # fmt: skip
        c.update({k: v for k, v in (mine or {}).items() if k not in c and k != "rounds"})
        c["cell"] = cell_text(c)
        out.append(c)
    return pd.DataFrame(out).drop(columns=["rounds"])  # the paper's, kept as paper_rounds


def pr_speedup(base: float, rounds: float) -> float:
    return base / rounds if rounds > 0 and base > 0 else np.nan  # NaN > 0 is False: unknown stays NaN


def unfinished_text(k: int, behind: int = 0) -> str:
    """k unfinished trials, of which `behind` can no longer change the rounds (report.behind_best)."""
    text = f"{k} trial{'s' if k > 1 else ''} unfinished"
    if behind:
        text += ", already behind the best" if behind == k else f", {behind} of them already behind the best"
    return text


def cell_text(c: dict) -> str:
    """`ours (paper) ×ours/paper; speedup× (paper's speedup×)`, the paper's `—` for not reached.
    The speedup part is left out where ours cannot be computed (baseline not run or not reached)."""
    paper = "—" if np.isnan(c["paper_rounds"]) else f"{c['paper_rounds']:.0f}"
    if not c["ran"]:
        return f"not run ({paper})"
    if np.isnan(c["ours_rounds"]):
        # A run that stopped at a lower target than the paper's says little about the paper's.
        low = c.get("run_target", np.nan) < c["target"] - 1e-9
        text = f"— ({paper})" + (f" stopped at {c['run_target']:.0%}" if low else "")
    else:
        text = f"{c['ours_rounds']:.1f} ({paper})"
        if not np.isnan(c["ratio"]):
            text += f" ×{c['ratio']:.2f}"
        if not np.isnan(c["speedup"]):
            ps = "—" if np.isnan(c["paper_speedup"]) else f"{c['paper_speedup']:.1f}×"
            text += f"; {c['speedup']:.1f}× ({ps})"
    # Trials already behind the best cannot move the number, so the cell leaves them out.
    if k := c.get("unfinished", 0) - c.get("behind", 0):
        text += f" ({unfinished_text(k)})"
    return text + (" ⚑" if c.get("edge") else "")


def layout(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper's layout of one table's cells: Table 1 one block per model, rows C, columns
    partition x B; Tables 2 and 4 rows (E, B, u) in the paper's order, columns IID / Non-IID.
    Blocks where nothing was run are left out."""
    blocks = {}
    for model, g in df.groupby("model", sort=False):
        if not g["ran"].any():
            continue
        if g["table"].iloc[0] == "table1":
            g = g.assign(col=[f"{PART.get(p, p)} B={fmt_B(b)}" for p, b in zip(g["partition"], g["B"])])
            t = g.pivot_table(index="C", columns="col", values="cell", aggfunc="first", sort=False)
            t = t.reset_index().assign(C=lambda d: d["C"].map(lambda c: f"{c:.1f}"))
            title = f"{model.upper()}, E={g['E'].iloc[0]}, target {g['target'].iloc[0]:.0%}"
        else:
            g = g.assign(row=[(e, fmt_B(b), f"{u:g}") for e, b, u in zip(g["E"], g["B"], g["u"])],
                         col=[PART.get(p, p) for p in g["partition"]])  # fmt: skip
            t = g.pivot_table(index="row", columns="col", values="cell", aggfunc="first", sort=False).reset_index()
            t.insert(0, "", ["FedSGD" if e == 1 and b == "∞" else "FedAvg" for e, b, _ in t["row"]])
            for j, name in enumerate(["E", "B", "u"]):
                t.insert(1 + j, name, [r[j] for r in t["row"]])
            t = t.drop(columns="row")
            title = f"{model.upper()}, C=0.1, target {g['target'].iloc[0]:.0%}"
        t.columns.name = None
        blocks[title] = t
    return blocks


def markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "/")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rows = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, "|" + "---|" * len(df.columns), *rows])


def _match(df: pd.DataFrame, row) -> pd.DataFrame:
    """Rows of df with row's (model, partition, C, E, B), floats compared with a tolerance."""
    if not len(df):
        return df
    keep = (df["model"] == row["model"]) & (df["partition"] == row["partition"]) & np.isclose(df["C"], row["C"])
    keep &= np.isclose(df["E"], row["E"]) & np.array([same_B(b, row["B"]) for b in df["B"]], dtype=bool)
    return df[keep]


def _is_paper_mnist(df: pd.DataFrame) -> pd.Series:
    return (df["dataset"] == "mnist") & (df["K"] == 100)


def compare(paper: pd.DataFrame, by_target: dict[float, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Tables 1, 2, 4: every paper entry beside ours at the paper's target (97% 2NN, 99% CNN).
    by_target maps a target to our per-setting summary at that target (report.summarize), so runs
    count whatever target they stopped at. Several matching settings (e.g. lr decays) are one more
    hyper-parameter: the fewest rounds wins, as for the lr."""
    out = {}
    for table in TABLES:
        p, ours = paper[paper["table"] == table], {}
        for i, row in p.iterrows():
            m = _match(by_target.get(row["target"], pd.DataFrame()), row)
            m = m[_is_paper_mnist(m)] if len(m) else m
            if len(m):
                s = m.sort_values(["rounds", "best_acc"], ascending=[True, False], na_position="last").iloc[0]
                ours[i] = {"rounds": s["rounds"], "rounds_std": s["rounds_std"], "seeds": s["seeds"],
                           "best_lr": s["best_lr"], "grid": " ".join(f"{x:g}" for x in s["grid"]),
                           "edge": s["edge"], "best_acc": s["best_acc"], "budget": s["budget"],
                           "run_target": s["run_target"], "unfinished": int(m["unfinished"].sum()),
                           "behind": int(m["behind"].sum())}  # fmt: skip
        out[table] = cells(p, ours).reindex(columns=CELL_COLUMNS)
    return out


def label(s) -> str:
    extra = [] if s["dataset"] == "mnist" else [str(s["dataset"])]
    extra += [] if s["K"] == 100 else [f"K={s['K']:g}"]
    extra += [] if s["lr_decay"] == 1 else [f"decay={s['lr_decay']:g}"]
    alpha = f" α={s['alpha']:g}" if s["partition"] == "dirichlet" else ""
    return " ".join([s["model"], s["partition"] + alpha, f"C={s['C']:g} E={s['E']:g} B={fmt_B(s['B'])}", *extra])


def settings_table(settings: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The flat per-setting table; `paper` and `ratio` list every paper entry of the same setting
    and target (one setting can be in two tables: 2NN C=0.1 E=1 B=10 is 87 in T1, 92 in T4)."""
    rows = []
    for _, s in settings.iterrows():
        pap, rat = [], []
        for t, c in tables.items() if s["dataset"] == "mnist" and s["K"] == 100 else []:
            for _, e in _match(c, s).iterrows():
                if math.isclose(e["target"], s["target"]):
                    pap.append(f"{'—' if np.isnan(e['paper_rounds']) else format(e['paper_rounds'], '.0f')} (T{t[-1]})")
                    if np.isfinite(r := s["rounds"] / e["paper_rounds"]):
                        rat.append(f"×{r:.2f} (T{t[-1]})")
        sd = "" if np.isnan(s["rounds_std"]) else f" ± {s['rounds_std']:.1f}"
        rtt = f"{s['rounds']:.1f}{sd}" if np.isfinite(s["rounds"]) else "—"
        rows.append({"setting": label(s), "target": s["target"], "u": s["u"], "best lr": s["best_lr"],
                     "grid": " ".join(f"{x:g}" for x in s["grid"]), "edge": s["edge"],
                     "rounds to target": f"{rtt} ({s['reached_seeds']}/{s['seeds']} seeds)"
                     + (f"; {unfinished_text(s['unfinished'], s.get('behind', 0))}" if s.get("unfinished") else ""),
                     "rounds": s["rounds"], "rounds_std": s["rounds_std"], "seeds": s["seeds"],
                     "max acc": s["best_acc"], "final acc": s["last_acc"], "budget": s["budget"],
                     "diverged": len(s["diverged"]), "paper": ", ".join(pap), "ratio": ", ".join(rat)})  # fmt: skip
    return pd.DataFrame(rows)
