"""Rounds to target from saved runs, as the paper computes them (McMahan et al. 2017, section 3),
beside the paper's Tables 1, 2 and 4; written as Markdown, CSV, PNG and one self-contained HTML.

Method. Each trial's test-accuracy curve is made monotone (best so far) and its first crossing of
the target interpolated between the evaluated rounds around it (`curves.rounds_to_target`).
Diverged trials (summary says so, or a non-finite test loss) count as not reaching. A trial with
no final summary (still running, or killed) is counted as unfinished, and its setting says so. Per setting
the best learning rate is the one with the fewest rounds, mean over seeds, among those whose every
seed reached (ties: the smaller lr); if none reached, the highest mean final monotone accuracy.
Rates are compared on the seeds they share; the chosen rate's numbers are over all its seeds.
Only run directories (config.json + history.csv) are read, so a laptop can report a cluster sweep.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import paper as P
from .curves import monotone, rounds_to_target

__all__ = ["monotone", "rounds_to_target", "load_results", "per_lr_table", "best_lr", "edge_flag",
           "summarize", "paper_cells", "settings_table", "write_report", "main_report",
           "add_report_parser", "run_report", "u_of"]  # fmt: skip
u_of, settings_table = P.u_of, P.settings_table
KEY = ["dataset", "model", "partition", "alpha", "K", "C", "E", "B", "lr_decay", "target"]
DEFAULTS = {"dataset": "mnist", "alpha": np.nan, "K": 100, "lr_decay": 1.0, "seed": 0, "rounds": 0}


def _json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _ts(v) -> float:
    """Epoch seconds from a number or an ISO string; NaN when absent."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    try:
        return datetime.fromisoformat(str(v)).timestamp()
    except ValueError:
        return math.nan


def load_results(results_dir: str | Path, exclude: str | Path | None = None) -> pd.DataFrame:
    """One row per run directory anywhere below results_dir (except below `exclude`): the config
    fields, `status`, `diverged`, `unfinished`, `path`, `run` (path relative to results_dir), `history` (a
    DataFrame), `rounds_done`, `wall_s`, `hostname`, `device`, `started`, `finished`, `duplicate`."""
    root, rows = Path(results_dir), []
    skip = Path(exclude).resolve() if exclude else None
    for cfg_path in sorted(root.rglob("config.json")):
        d = cfg_path.parent
        if (skip and d.resolve().is_relative_to(skip)) or not (d / "history.csv").is_file():
            continue
        cfg = _json(cfg_path)
        try:
            h = pd.read_csv(d / "history.csv")
        except (OSError, ValueError):  # e.g. empty while a run is starting
            h = pd.DataFrame()
        if "model" not in cfg or not {"round", "test_accuracy"} <= set(h.columns):
            print(f"fedray report: skipping {d}: not a run directory", file=sys.stderr)
            continue
        for col in ("test_accuracy", "test_loss", "train_loss", "elapsed_s"):
            h[col] = pd.to_numeric(h[col], errors="coerce") if col in h else np.nan
        h = h.sort_values("round").reset_index(drop=True)
        meta, summ = cfg.pop("meta", None) or {}, _json(d / "summary.json")
        row = {**DEFAULTS, **cfg, "B": P.parse_B(cfg.get("B", "inf"))}
        row["alpha"] = float(row["alpha"]) if row["partition"] == "dirichlet" else np.nan  # unused otherwise
        row["lr"] = float(f"{float(row['lr']):.10g}")  # grids computed on two machines still group
        status = summ.get("status", "unknown")
        dev = meta.get("device")
        diverged = status == "diverged" or not np.isfinite(h["test_loss"].dropna()).all()
        # No final status yet (running, or killed): its setting's best lr may still change.
        unfinished = not diverged and status not in ("completed", "reached")
        row.update(status=status, diverged=diverged, unfinished=unfinished,
                   path=str(d), run=d.relative_to(root).as_posix(), history=h,
                   rounds_done=int(summ.get("rounds_completed", h["round"].iloc[-1] if len(h) else 0)),
                   wall_s=float(summ.get("wall_s", h["elapsed_s"].iloc[-1] if len(h) else math.nan)),
                   hostname=meta.get("hostname"), cpu=meta.get("cpu"), device=",".join(map(str, dev)) if isinstance(dev, list) else dev,
                   started=_ts(meta.get("started", summ.get("started"))),
                   finished=_ts(meta.get("finished", summ.get("finished"))))  # fmt: skip
        rows.append(row)
    runs = pd.DataFrame(rows)
    if len(runs):  # the same trial twice (a copied or re-run dir): keep the one that ran longest
        order = runs.sort_values(["rounds_done", "run"], ascending=[False, True])
        runs["duplicate"] = order.duplicated(KEY + ["lr", "seed"]).reindex(runs.index)
    return runs


def per_lr_table(trials: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per learning rate: seeds, reached (every seed), mean/std rounds over seeds, mean
    final monotone accuracy (NaN if any seed diverged, so a diverged lr is never picked by accuracy)."""
    rtt, acc = [], []
    for h, div in zip(trials["history"], trials["diverged"]):
        m = monotone(h["test_accuracy"])
        rtt.append(math.nan if div else rounds_to_target(h["round"], h["test_accuracy"], target))
        acc.append(math.nan if div or not len(m) else float(m[-1]))
    t = trials.assign(rtt=rtt, acc=acc)
    out = t.groupby("lr", sort=True).agg(
        seeds=("seed", "size"), reached_seeds=("rtt", lambda r: int(np.isfinite(r).sum())),
        reached=("rtt", lambda r: bool(np.isfinite(r).all())), rounds_mean=("rtt", "mean"),
        rounds_std=("rtt", lambda r: float(np.std(r, ddof=1)) if len(r) > 1 else math.nan),
        acc_mean=("acc", lambda a: float(a.mean()) if a.notna().all() else math.nan),
        last_acc=("history", lambda hs: float(np.mean([h["test_accuracy"].iloc[-1] if len(h) else math.nan for h in hs]))),
    ).reset_index()  # fmt: skip
    by_lr = [g for _, g in t.groupby("lr", sort=True)]
    return out.assign(rtt_by_seed=[dict(zip(g["seed"], g["rtt"])) for g in by_lr],
                      acc_by_seed=[dict(zip(g["seed"], g["acc"])) for g in by_lr])  # fmt: skip


def _on_shared_seeds(rows: pd.DataFrame, by_seed: str, mean: str) -> pd.Series:
    """The mean over the seeds every row ran, so that seeds added at one rate (a 3-seed mean)
    are not ranked against a neighbour's single, possibly lucky, seed. Without shared seeds or
    per-seed values, each row's own `mean`; NaN wherever `mean` is NaN (e.g. a diverged seed)."""
    per_seed = rows[by_seed] if by_seed in rows and len(rows) else None
    shared = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed is not None else []
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


def edge_flag(grid, lr: float) -> str:
    """Why the grid may be too narrow (the paper checked its best rates were mid-grid), or ''."""
    grid = sorted(grid)
    if len(grid) < 3:
        return "grid too small"
    return "lowest lr of grid" if lr == grid[0] else "highest lr of grid" if lr == grid[-1] else ""


def summarize(runs: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    """One row per setting (KEY): best lr and its rounds to target (mean, std over seeds), the grid,
    the edge flag, per-lr details (`per_lr`), run indices per lr (`trials`), diverged runs.
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
        out.append({**s, "u": u_of(s["E"], s["B"], s["K"]), "best_lr": b["lr"], "grid": grid,
                    "edge": edge_flag(grid, b["lr"]), "reached_seeds": int(b["reached_seeds"]),
                    "seeds": int(b["seeds"]), "rounds": b["rounds_mean"] if b["reached"] else math.nan,
                    "rounds_std": b["rounds_std"] if b["reached"] else math.nan, "best_acc": b["acc_mean"],
                    "last_acc": b["last_acc"], "budget": int(g["rounds"].max()), "n_trials": len(g),
                    "run_target": g["run_target"].min(), "unfinished": int(g["unfinished"].sum()),
                    "diverged": sorted(g.loc[g["diverged"], "run"]), "per_lr": per_lr,
                    "trials": {lr: list(t.index) for lr, t in g.groupby("lr")}})  # fmt: skip
    return pd.DataFrame(out)


def paper_cells(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Tables 1, 2, 4, one row per paper entry; ours at the paper's target (see `paper.compare`)."""
    paper = P.paper_table()
    return P.compare(paper, {t: summarize(runs, t) for t in paper["target"].unique()} if len(runs) else {})


def _dur(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _cpu(c: str) -> str:
    return "" if c == "?" else f"; {c}"


def run_summary(runs: pd.DataFrame, results_dir: Path) -> list[str]:
    """Hardware, wall-clock and rounds computed; spans come from recorded timestamps only (sweep
    logs, meta), never file times, so the same results give the same report on any checkout."""
    if runs.empty:
        return ["no run directories (config.json + history.csv) found"]
    cpu = runs["cpu"] if "cpu" in runs else pd.Series("?", index=runs.index)
    hw = runs.groupby([runs["hostname"].fillna("?"), runs["device"].fillna("?"), cpu.fillna("?")]).size()
    w, statuses = runs["wall_s"].astype(float), runs["status"].where(~runs["diverged"], "diverged").value_counts()
    lines = [f"hardware: {', '.join(f'{h} ({d}{_cpu(c)}): {n} runs' for (h, d, c), n in hw.items())}; this report made on {platform.node()}",
             f"{len(runs)} runs ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})"
             + (f"; {int(runs['duplicate'].sum())} duplicate run dirs ignored" if runs["duplicate"].any() else ""),
             f"wall-clock per run: min {_dur(w.min())}, median {_dur(w.median())}, max {_dur(w.max())}; sum {_dur(w.sum())}",
             f"rounds computed: {int(runs['rounds_done'].sum())}"]  # fmt: skip
    # Group runs by the sweep that made them (the nearest folder with a sweep log), else results_dir.
    groups: dict[Path, list[int]] = {}
    for i, p in zip(runs.index, runs["path"]):
        home = next((a for a in Path(p).parents if (a / "sweep_runs.jsonl").exists() or a == results_dir), results_dir)
        groups.setdefault(home, []).append(i)
    for home, idx in sorted(groups.items()):
        r = runs.loc[idx]
        starts, ends = list(r["started"].dropna()), list(r["finished"].dropna())
        log = home / "sweep_runs.jsonl"
        for line in log.read_text().splitlines() if log.exists() else []:
            e = json.loads(line) if line.strip() else {}
            if np.isfinite(_ts(e.get("started"))):
                starts.append(_ts(e["started"]))
                ends.append(_ts(e["started"]) + float(e.get("wall_s", 0)))
        name = home.relative_to(results_dir).as_posix() if home != results_dir else str(results_dir)
        t0, t1 = (min(starts), max(ends)) if starts and ends else (math.nan, math.nan)
        span = f"; span {_when(t0)} to {_when(t1)} ({_dur(t1 - t0)})" if np.isfinite(t1 - t0) else ""
        wall, done = _dur(r["wall_s"].sum()), int(r["rounds_done"].sum())
        lines.append(f"{name}: {len(r)} runs, wall-clock sum {wall}, {done} rounds{span}")
    return lines


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
        "is at an end of its grid or the grid has fewer than 3 values. The paper tables use the paper's "
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
