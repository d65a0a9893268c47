"""Saved runs read back for the report: one row per run directory (config.json + history.csv,
plus summary.json when it ended), and what they cost (hardware, wall-clock, rounds, sweep spans).
Only files are read, never Ray, so a laptop can report a cluster's sweep.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from . import paper as P

__all__ = ["KEY", "load_results", "run_summary"]
# A setting: the runs that differ only by learning rate and seed.
KEY = ["dataset", "model", "partition", "alpha", "K", "C", "E", "B", "lr_decay", "target"]
NOT_STARTED = "not started"  # a sweep.json trial with no run directory
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
    DataFrame), `rounds_done`, `wall_s`, `hostname`, `device`, `started`, `finished`, `duplicate`.
    Also one row (status `not started`, empty history) per trial a sweep.json lists without a run
    directory: a sweep committed half-done counts its missing trials as unfinished, not as absent."""
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
        rows.append(_row(cfg, h, _json(d / "summary.json"), d, root))
    seen = {r["path"] for r in rows}
    for sweep_json in sorted(root.rglob("sweep.json")):
        if skip and sweep_json.resolve().is_relative_to(skip):
            continue
        for t in _json(sweep_json).get("trials", []):
            d = sweep_json.parent / "trials" / str(t.get("key"))
            if str(d) not in seen and "model" in t:
                cfg = {k: v for k, v in t.items() if k != "key"}
                rows.append(_row(cfg, pd.DataFrame(columns=["round", "test_accuracy"]), {"status": NOT_STARTED}, d, root))
    runs = pd.DataFrame(rows)
    if len(runs):  # the same trial twice (a copied or re-run dir): keep the one that ran longest
        order = runs.sort_values(["rounds_done", "run"], ascending=[False, True])
        runs["duplicate"] = order.duplicated(KEY + ["lr", "seed"]).reindex(runs.index)
    return runs


def _row(cfg: dict, h: pd.DataFrame, summ: dict, d: Path, root: Path) -> dict:
    for col in ("test_accuracy", "test_loss", "train_loss", "elapsed_s"):
        h[col] = pd.to_numeric(h[col], errors="coerce") if col in h else np.nan
    h = h.sort_values("round").reset_index(drop=True)
    meta = cfg.pop("meta", None) or {}
    row = {**DEFAULTS, **cfg, "B": P.parse_B(cfg.get("B", "inf"))}
    row["alpha"] = float(row["alpha"]) if row["partition"] == "dirichlet" else np.nan  # unused otherwise
    row["lr"] = float(f"{float(row['lr']):.10g}")  # grids computed on two machines still group
    status = summ.get("status", "unfinished")  # no summary.json: still running, or stopped before it wrote one
    dev = meta.get("device")
    diverged = status == "diverged" or not np.isfinite(h["test_loss"].dropna()).all()
    # No final status yet (running, killed, not started): its setting's best lr may still change.
    unfinished = not diverged and status not in ("completed", "reached")
    row.update(status=status, diverged=diverged, unfinished=unfinished,
               path=str(d), run=d.relative_to(root).as_posix(), history=h,
               rounds_done=int(summ.get("rounds_completed", h["round"].iloc[-1] if len(h) else 0)),
               wall_s=float(summ.get("wall_s", h["elapsed_s"].iloc[-1] if len(h) else math.nan)),
               hostname=meta.get("hostname"), cpu=_cpus(meta), device=",".join(map(str, dev)) if isinstance(dev, list) else dev,
               started=_ts(meta.get("started", summ.get("started"))),
               finished=_ts(meta.get("finished", summ.get("finished"))))  # fmt: skip
    return row


def _cpus(meta: dict) -> str | None:
    """The CPU of the first sitting, then any other CPU a resumption ran on, in order."""
    first, later = meta.get("cpu"), [r.get("cpu") for r in meta.get("resumed", [])]
    others = list(dict.fromkeys(c for c in later if c and c != first))
    return first if not others else f"{first or '?'}, resumed on {' and '.join(others)}"


def _dur(s: float) -> str:
    if not np.isfinite(s):
        return "?"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _n(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cpu(c: str) -> str:
    return "" if c == "?" else f"; {c}"


def run_summary(runs: pd.DataFrame, results_dir: Path) -> list[str]:
    """Hardware, wall-clock and rounds computed; spans come from recorded timestamps only (sweep
    logs, meta), never file times, so the same results give the same report on any checkout."""
    planned = runs
    if len(runs):  # trials a sweep.json lists without a run dir, unless they ran elsewhere (duplicate)
        planned = runs[runs["status"].eq(NOT_STARTED) & ~runs["duplicate"]]
        runs = runs[runs["status"].ne(NOT_STARTED)]
    waiting = [f"{_n(len(planned), 'trial')} of sweep files not started (or not committed): {', '.join(planned['run'])}"
               ] if len(planned) else []  # fmt: skip
    if runs.empty:
        return ["no run directories (config.json + history.csv) found"] + waiting
    cpu = runs["cpu"] if "cpu" in runs else pd.Series("?", index=runs.index)
    hw = runs.groupby([runs["hostname"].fillna("?"), runs["device"].fillna("?"), cpu.fillna("?")]).size()
    w, statuses = runs["wall_s"].astype(float), runs["status"].where(~runs["diverged"], "diverged").value_counts()
    per_hw = ", ".join(f"{h} ({d}{_cpu(c)}): {_n(n, 'run')}" for (h, d, c), n in hw.items())
    lines = [f"hardware: {per_hw}; this report made on {platform.node()}",
             f"{_n(len(runs), 'run')} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})"
             + (f"; {int(runs['duplicate'].sum())} duplicate run dirs ignored" if runs["duplicate"].any() else ""),
             f"wall-clock per run: min {_dur(w.min())}, median {_dur(w.median())}, max {_dur(w.max())}; sum {_dur(w.sum())}",
             f"rounds computed: {int(runs['rounds_done'].sum())}"] + waiting  # fmt: skip
    # Group runs by the sweep that made them (the nearest folder with a sweep log), else results_dir.
    groups: dict[Path, list[int]] = {}
    for i, p in zip(runs.index, runs["path"]):
        home = next((a for a in Path(p).parents if (a / "sweep_runs.jsonl").exists() or a == results_dir), results_dir)
        groups.setdefault(home, []).append(i)
    for home, idx in sorted(groups.items()):
        r = runs.loc[idx]
        log = home / "sweep_runs.jsonl"
        sittings: dict[float, float] = {}  # sweep invocation start -> its wall-clock (nan: killed, no end line)
        for line in log.read_text().splitlines() if log.exists() else []:
            e = json.loads(line) if line.strip() else {}
            t = _ts(e.get("started"))
            if np.isfinite(t) and ("wall_s" in e or t not in sittings):
                sittings[t] = float(e.get("wall_s", math.nan))
        starts = list(r["started"].dropna()) + list(sittings)
        ends = list(r["finished"].dropna()) + [t + (w if np.isfinite(w) else 0.0) for t, w in sittings.items()]
        name = home.relative_to(results_dir).as_posix() if home != results_dir else str(results_dir)
        t0, t1 = (min(starts), max(ends)) if starts and ends else (math.nan, math.nan)
        span = f"; span {_when(t0)} to {_when(t1)} ({_dur(t1 - t0)})" if np.isfinite(t1 - t0) else ""
        if len(sittings) > 1:  # a span across days of idle machine is not what the sweep cost
            ended = [w for w in sittings.values() if np.isfinite(w)]
            span += f" over {len(sittings)} sittings, " + (
                f"{len(ended)} of which logged an end ({_dur(sum(ended))} in all)" if ended else "none of which logged an end")
        wall, done = _dur(r["wall_s"].sum()), int(r["rounds_done"].sum())
        lines.append(f"{name}: {_n(len(r), 'run')}, wall-clock sum {wall}, {done} rounds{span}")
    return lines
