"""What a sweep still has to run under its storage directory: trials not finished, minus those
already behind their setting's best rate (see `fedray.sweep`), and how a restart keeps what an
earlier sitting wrote. No Ray here: all of it is decided before any Ray work starts."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import ConfigError, ExperimentConfig
from .sweep_file import Sweep, trial_key

FINISHED = ("completed", "reached", "diverged")


def trial_state(cfg: ExperimentConfig, d: Path) -> str:
    """'new', 'finished' or 'partial' for the trial of `cfg` in directory d. A directory holding
    a different config is an error: results already written are never overwritten."""
    if not (d / "config.json").exists():
        return "new"
    old = ExperimentConfig.from_file(d / "config.json")
    if old != cfg:
        raise ConfigError(
            f"{d} holds a trial with a different config than the sweep file asks for "
            f"({_diff(old, cfg)}); use another --storage to keep both"
        )
    summary = d / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") in FINISHED:
        return "finished"
    return "partial"


def _diff(a: ExperimentConfig, b: ExperimentConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k}: {da[k]!r} on disk, {db[k]!r} asked" for k in da if da[k] != db[k])


def compare_root(storage: Path, compare_with: str | Path | None) -> Path:
    """The directory whose runs decide whether a trial is behind: the storage itself, or
    --compare-with, which must contain it (so the sweep's own runs count, each once)."""
    if compare_with is None:
        return Path(storage).resolve()
    root = Path(compare_with).resolve()
    if not root.is_dir():
        raise ConfigError(f"--compare-with: {compare_with} is not a directory; "
                          f"allowed: a directory that contains --storage")  # fmt: skip
    if not Path(storage).resolve().is_relative_to(root):
        raise ConfigError(f"--compare-with: {compare_with} does not contain the storage {storage}; "
                          f"allowed: the storage or a directory above it, e.g. {Path(storage).parent}")  # fmt: skip
    return root


def plan(
    sweep: Sweep, storage: Path, resume: bool, compare_with: str | Path | None = None
) -> list[tuple[ExperimentConfig, Path]]:
    """The trials still to run. Raises before any Ray work if the storage holds results and
    --resume was not given, or holds results of a different sweep, or `compare_with` (see
    `compare_root`) does not contain the storage."""
    among = compare_root(storage, compare_with)
    todo, states = [], {}
    for cfg in sweep.trials:
        d = storage / "trials" / trial_key(cfg)
        states[d] = trial_state(cfg, d)
        if states[d] != "finished":
            todo.append((cfg, d))
    if not resume and any(s != "new" for s in states.values()):
        raise FileExistsError(
            f"{storage} already holds results of this sweep; use --resume to run only the "
            f"unfinished trials, or another --storage"
        )
    if any(s == "partial" for s in states.values()):
        from .report import runs_behind

        behind = runs_behind(among)
        for _, d in todo:
            if d.resolve() in behind:
                print(f"  {d.name}: unfinished, already behind the best rate of its setting; not run again")
        todo = [(c, d) for c, d in todo if d.resolve() not in behind]
    return todo


def keep_restarted_histories(dirs: list[Path], started: float) -> list[tuple[Path, Path]]:
    """An unfinished trial without checkpoint.pt (committed results carry histories, not
    checkpoints) can only start again from round 0, which rewrites history.csv: its earlier rounds
    are moved beside it first, stamped with this sitting's start, never overwritten."""
    kept = []
    for d in dirs:
        h = d / "history.csv"
        if h.exists() and not (d / "checkpoint.pt").exists():
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
            to = d / f"history.before_restart_{stamp}.csv"
            n = 1
            while to.exists():  # two sittings in one second
                n += 1
                to = d / f"history.before_restart_{stamp}_{n}.csv"
            kept.append((d, h.rename(to)))
    return kept
