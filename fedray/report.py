"""Rounds to target from saved runs, as the paper computes them (McMahan et al. 2017, section 3),
beside the paper's Tables 1, 2 and 4; written as Markdown, CSV, PNG and one self-contained HTML.

Method. Each trial's test-accuracy curve is made monotone (best so far) and its first crossing of
the target interpolated between the evaluated rounds around it (`curves.rounds_to_target`).
Diverged trials (summary says so, or a non-finite test loss) count as not reaching. A trial with
no final summary (still running, or killed) is counted as unfinished, and its setting says so, unless
it is already behind a best rate that reached with no trial unfinished: even crossing right after
its last evaluated round, its rate's mean would exceed the best's on the seeds they are compared
on, so it cannot change the setting's rounds however it goes on (`behind_best`). Per setting
the best learning rate is the one with the fewest rounds, mean over seeds, among those whose every
seed reached (ties: the smaller lr); if none reached, the highest mean final monotone accuracy.
Rates are compared on the seeds they share; the chosen rate's numbers are over all its seeds.
Only run directories (config.json + history.csv) are read, so a laptop can report a cluster sweep.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paper as P
from .curves import monotone, rounds_to_target
from .runs import KEY, load_results, run_summary

__all__ = ["monotone", "rounds_to_target", "load_results", "per_lr_table", "best_lr", "edge_flag",
           "summarize", "behind_best", "runs_behind", "paper_cells", "settings_table", "write_report", "main_report",
           "add_report_parser", "run_report", "u_of", "run_summary"]  # fmt: skip
u_of, settings_table = P.u_of, P.settings_table


def per_lr_table(trials: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per learning rate: seeds, reached (every seed), mean/std rounds over seeds, mean
    final monotone accuracy (NaN if any seed diverged, so a diverged lr is never picked by accuracy)."""
    rtt, acc = [], []
    for h, div in zip(trials["history"], trials["diverged"]):
        m = monotone(h["test_accuracy"])
        rtt.append(math.nan if div else rounds_to_target(h["round"], h["test_accuracy"], target))
        acc.append(math.nan if div or not len(m) else float(m[-1]))
    out = []
    for lr, g in trials.assign(rtt=rtt, acc=acc).groupby("lr", sort=True):
        r, a = g["rtt"], g["acc"]
        last = [h["test_accuracy"].iloc[-1] if len(h) else math.nan for h in g["history"]]
        out.append({"lr": lr, "seeds": len(g), "reached_seeds": int(np.isfinite(r).sum()),
                    "reached": bool(np.isfinite(r).all()), "rounds_mean": r.mean(),
                    "rounds_std": float(np.std(r, ddof=1)) if len(r) > 1 else math.nan,
                    "acc_mean": float(a.mean()) if a.notna().all() else math.nan,
                    "last_acc": float(np.mean(last)), "unfinished": int(g["unfinished"].sum()), "rtt_by_seed": dict(zip(g["seed"], r)),
                    "acc_by_seed": dict(zip(g["seed"], a))})  # fmt: skip
    return pd.DataFrame(out)


def _shared_seeds(per_seed) -> list:
    """The seeds every one of the per-seed dicts has, sorted (so means over them add in one order)."""
    return sorted(set.intersection(*(set(d) for d in per_seed))) if len(per_seed) else []


def _on_shared_seeds(rows: pd.DataFrame, by_seed: str, mean: str) -> pd.Series:
    """The mean over the seeds every row ran, so that seeds added at one rate (a 3-seed mean)
    are not ranked against a neighbour's single, possibly lucky, seed. Without shared seeds or
    per-seed values, each row's own `mean`; NaN wherever `mean` is NaN (e.g. a diverged seed)."""
    per_seed = rows[by_seed] if by_seed in rows and len(rows) else None
    shared = _shared_seeds(per_seed) if per_seed is not None else []
    if not shared:
        return rows[mean]
    key = pd.Series([float(np.mean([d[k] for k in shared])) for d in per_seed], index=rows.index)
    return key.where(rows[mean].notna())


def best_lr(per_lr: pd.DataFrame) -> pd.Series:
    """Fewest mean rounds among lrs whose every seed reached; else highest mean final monotone
    accuracy; both means over the seeds the compared lrs share. Ties go to the smaller lr, the
    more conservative choice. The row returned keeps its means over all of its own seeds."""
    ok = per_lr[per_lr["reached"]]
    if len(ok):
        ok = ok.assign(_key=_on_shared_seeds(ok, "rtt_by_seed", "rounds_mean"))
        return ok.sort_values(["_key", "lr"], kind="stable").iloc[0].drop("_key")
    rows = per_lr.assign(_key=_on_shared_seeds(per_lr, "acc_by_seed", "acc_mean"))
    return rows.sort_values(["_key", "lr"], ascending=[False, True], na_position="last").iloc[0].drop("_key")


def edge_flag(grid, lr: float, open_lrs=()) -> str:
    """Why the grid may be too narrow (the paper checked its best rates were mid-grid), or ''.
    `open_lrs`, rates with a trial not finished (nor behind the best), do not yet bracket lr: a
    mid-grid best whose neighbours on one side have not run is not known to be inside the grid."""
    grid = sorted(grid)
    if len(grid) < 3:
        return "grid too small"
    if lr in (grid[0], grid[-1]):
        return "lowest lr of grid" if lr == grid[0] else "highest lr of grid"
    below, above = {x for x in grid if x < lr}, {x for x in grid if x > lr}
    sides = [side for side, rates in (("below", below), ("above", above)) if rates <= set(open_lrs)]
    return f"no finished lr {' or '.join(sides)} it" if sides else ""


def behind_best(g: pd.DataFrame, per_lr: pd.DataFrame, b: pd.Series) -> list[str]:
    """The `path`s of a setting's unfinished trials that cannot change its rounds, whatever they do next.
    b, the best rate, must have reached on every seed with none unfinished. Another rate is then
    out of the race if one of its finished seeds missed the target (it can never count as reached),
    or if, had it reached, `best_lr` would still pick b: it would then compare the rates on the
    seeds the reached ones share and this one ran (fewer, if it ran fewer), so b must still rank
    first among the reached rates there, and this rate's mean over them must already be above b's
    even if every unfinished seed crossed right after its last evaluated round: a crossing is
    interpolated strictly after the last round below the target, so that round bounds it below
    (and a mean equal to b's with such a bound in it is above it in fact). Without shared seeds
    `best_lr` compares each rate's own mean, and so does this. Each rate is judged alone, as if
    the other unfinished ones never reached."""
    if not b["reached"] or b["unfinished"]:
        return []
    reached = per_lr[per_lr["reached"]]
    out = []
    for row in per_lr[(per_lr["lr"] != b["lr"]) & (per_lr["unfinished"] > 0)].itertuples():
        t = g[g["lr"] == row.lr]
        missed = any(np.isnan(row.rtt_by_seed[s]) and not u for s, u in zip(t["seed"], t["unfinished"]))
        # Each seed's crossing, or a lower bound on it: the last round evaluated (0 if none).
        bound = {s: row.rtt_by_seed[s] if not np.isnan(row.rtt_by_seed[s]) else float(h["round"].iloc[-1]) if len(h)
                 else 0.0 for s, h in zip(t["seed"], t["history"])}  # fmt: skip
        out_of_race = missed
        if not missed:
            # best_lr's keys had this rate reached at its bounds: on the seeds all of them share.
            me = pd.DataFrame({"lr": [row.lr], "rtt_by_seed": [bound], "rounds_mean": [np.mean(list(bound.values()))]})
            rows = pd.concat([reached[["lr", "rtt_by_seed", "rounds_mean"]], me], ignore_index=True)
            keys, on = _on_shared_seeds(rows, "rtt_by_seed", "rounds_mean"), _shared_seeds(rows["rtt_by_seed"])
            best, mean = keys.iloc[:-1].min(), keys.iloc[-1]
            still_b = rows["lr"].iloc[:-1][keys.iloc[:-1] == best].min() == b["lr"]  # ties go to the smaller lr
            strict = any(np.isnan(row.rtt_by_seed[s]) for s in (on or bound))
            out_of_race = still_b and (mean > best or (mean == best and strict))
        if out_of_race:
            out += list(t.loc[t["unfinished"], "path"])
    return out


def summarize(runs: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    """One row per setting (KEY): best lr and its rounds to target (mean, std over seeds), the grid,
    the edge flag, per-lr details (`per_lr`), run indices per lr (`trials`), diverged runs, the
    unfinished runs already behind the best (`behind_runs`, their count `behind`).
    `target` replaces every run's own target (the paper tables use the paper's)."""
    if runs.empty:
        return pd.DataFrame(columns=KEY)
    runs = runs[~runs["duplicate"]]
    # Where a run stopped early at its own target, say so beside a paper target it never saw.
    stop = runs.get("stop_at_target", pd.Series(False, index=runs.index)).astype(str).str.lower().eq("true")
    runs = runs.assign(run_target=runs["target"].where(stop, np.nan))
    if target is not None:
        runs = runs.assign(target=target)
    out = []
    for key, g in runs.groupby(KEY, dropna=False, sort=True):
        s = dict(zip(KEY, key))
        per_lr = per_lr_table(g, s["target"])
        b = best_lr(per_lr)
        grid = list(per_lr["lr"])
        behind = behind_best(g, per_lr, b)
        open_lrs = set(g.loc[g["unfinished"] & ~g["path"].isin(behind), "lr"])
        # A best rate with no finished trial yet says nothing about the grid's ends.
        edge = edge_flag(grid, b["lr"], open_lrs) if b["unfinished"] < b["seeds"] else ""
        out.append({**s, "u": u_of(s["E"], s["B"], s["K"]), "best_lr": b["lr"], "grid": grid,
                    "edge": edge, "reached_seeds": int(b["reached_seeds"]),
                    "seeds": int(b["seeds"]), "rounds": b["rounds_mean"] if b["reached"] else math.nan,
                    "rounds_std": b["rounds_std"] if b["reached"] else math.nan, "best_acc": b["acc_mean"],
                    "last_acc": b["last_acc"], "budget": int(g["rounds"].max()), "n_trials": len(g),
                    "run_target": g["run_target"].min(), "unfinished": int(g["unfinished"].sum()),
                    "behind": len(behind), "behind_runs": behind, "diverged": sorted(g.loc[g["diverged"], "run"]), "per_lr": per_lr,
                    "trials": {lr: list(t.index) for lr, t in g.groupby("lr")}})  # fmt: skip
    return pd.DataFrame(out)


def runs_behind(results_dir: str | Path) -> set[Path]:
    """The resolved paths of the unfinished runs under results_dir already behind the best of
    their setting (`behind_best`): a sweep stops such a trial, and --resume does not run it again."""
    runs = load_results(results_dir)
    return {Path(p).resolve() for ps in summarize(runs).get("behind_runs", []) for p in ps}


def paper_cells(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 1, 2, 4, one row per paper entry; ours at the paper's target (see `paper.compare`)."""
    paper = P.paper_table()
    return P.compare(paper, {t: summarize(runs, t) for t in paper["target"].unique()} if len(runs) else {})


def _write(path: Path, data: str | bytes) -> None:
    """tmp + os.replace, so a reader never sees half a report."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


NOTE = ("Rounds to reach the target test accuracy at the best learning rate per setting: the monotone "
        "(best-so-far) curve's first crossing, interpolated between evaluated rounds. Each cell: ours "
        "(the paper's) ×ours/paper; then the speedup against the table's baseline row, ours (the paper's). "
        "— = not reached within our budget (or, in parentheses, in the paper); ⚑ = the best learning rate "
        "is at an end of its grid, or the grid has fewer than 3 values, or no rate on one side of it has "
        "finished (so it is not yet known to be inside the grid). The paper tables use the paper's "
        "target whatever target the runs stopped at. With several seeds: mean over seeds, best lr among "
        "those where every seed reached.")  # fmt: skip


def build(results_dir: str | Path, out: Path | None = None) -> dict[str, Any]:
    """Everything the report holds, without writing: blocks for Markdown/HTML, CSVs, figures."""
    from .figures import figure2, figure6, grid_figures, png_bytes  # matplotlib only when needed

    runs = load_results(results_dir, exclude=out)
    settings = summarize(runs)
    cells = paper_cells(runs)
    flat = P.settings_table(settings, cells)
    blocks: list[tuple] = [("h1", f"Rounds to target: {results_dir}"), ("p", NOTE)]
    for table, c in cells.items():
        if c["ran"].any():
            blocks.append(("h2", P.TITLES[table]))
            for title, t in P.layout(c).items():
                blocks += [("h3", title), ("table", t)]
    show = ["setting", "target", "u", "best lr", "grid", "edge", "rounds to target", "max acc", "final acc",
            "budget", "diverged", "paper", "ratio"]  # fmt: skip
    blocks += [("h2", "Every setting"), ("table", flat[show]) if len(flat) else ("p", "(no results)")]
    diverged = [f"{d} (η={runs.loc[runs['run'] == d, 'lr'].iloc[0]:g})" for ds in settings.get("diverged", []) for d in ds]
    if diverged:
        blocks += [("h2", "Diverged trials (counted as not reaching)"), ("ul", diverged)]
    blocks += [("h2", "Runs"), ("ul", run_summary(runs, Path(results_dir)))]
    figs = {}
    if len(settings):
        for make in (figure2, figure6, grid_figures):
            figs.update({name: png_bytes(f) for name, f in make(runs, settings).items()})
    blocks += [("h2", "Figures")] + [("img", n) for n in figs] if figs else []
    csvs = {"settings.csv": flat.to_csv(index=False)} | {f"{t}.csv": c.to_csv(index=False) for t, c in cells.items()}
    return {"blocks": blocks, "csvs": csvs, "figures": figs, "runs": runs, "settings": settings, "cells": cells}


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write report.md, report.html, settings.csv, table{1,2,4}.csv and the PNGs into out_dir
    (default results_dir/report); nothing else below results_dir is touched."""
    from .figures import to_html, to_markdown

    out = Path(out_dir) if out_dir is not None else Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    r = build(results_dir, out)
    files = {**r["csvs"], **r["figures"], "report.md": to_markdown(r["blocks"]),
             "report.html": to_html(r["blocks"], r["figures"])}  # fmt: skip
    for name, data in files.items():
        _write(out / name, data)
    tables = [t for t, c in r["cells"].items() if c["ran"].any()]
    return {"out_dir": str(out), "files": sorted(files), "figures": list(r["figures"]), "tables": tables,
            "settings": r["settings"], "runs": len(r["runs"]), "markdown": files["report.md"]}  # fmt: skip


def main_report(results_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """write_report, then print the tables (everything up to the run summary) and where it went."""
    info = write_report(results_dir, out)
    md = info["markdown"]
    print(md[: md.find("\n## Runs")] if "\n## Runs" in md else md)
    print(f"report: {info['out_dir']}/report.html ({len(info['files'])} files)")
    return info


def add_report_parser(subparsers) -> None:
    p = subparsers.add_parser("report", help="the paper's rounds-to-target tables and figures from saved runs")
    p.add_argument("results_dir", help="folder holding run directories (searched recursively)")
    p.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/report)")
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    if not Path(args.results_dir).is_dir():
        raise FileNotFoundError(f"results_dir: {args.results_dir} is not a directory")
    info = main_report(args.results_dir, args.out)
    if not info["runs"]:
        print(f"fedray report: no run directories below {args.results_dir}", file=sys.stderr)
        return 1
    return 0
