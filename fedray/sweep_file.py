"""Sweep files: one YAML per paper experiment, expanded into one `ExperimentConfig` per trial.

Every `ExperimentConfig` field may be written as a single value or as a list (a grid axis). The
learning rate may also be written as the paper does (section 3: "11-13 values for eta on a
multiplicative grid of resolution 10^(1/3) or 10^(1/6)"): `lr: {center: 0.1, resolution: 6,
count: 13}` means 0.1 * 10^(k/6) for k = -6..6; or `lr: {values: [...]}`. Sweep-only keys are
listed in SWEEP_KEYS. Everything is checked here, before Ray starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, ExperimentConfig, load_mapping

# Sweep-only keys and their defaults.
SWEEP_KEYS: dict[str, Any] = {
    "name": None,  # results go to ./results/<name> unless --storage says otherwise
    "seeds": [0],  # repeats: a list of seeds, or a count n meaning seeds 0..n-1
    "max_rounds": None,  # round budget of every trial (the config's `rounds`)
    "workers": 1,  # ClientWorker actors per trial; 0 trains in the trial's own process
    "worker_cpus": 1,  # CPUs reserved for each worker (and its torch threads)
    "worker_gpus": 0,  # GPU fraction per worker, e.g. 0.25 puts four workers on one GPU
    "fuse_lr": False,  # train all learning rates of a setting in one trial (stacked engine)
}
_FIELDS = {f.name for f in dataclasses.fields(ExperimentConfig)}


@dataclass(frozen=True)
class Sweep:
    name: str
    trials: list[ExperimentConfig]
    runtime: dict[str, Any] = field(default_factory=dict)  # workers, worker_cpus, worker_gpus, fuse_lr


def lr_grid(spec: Any) -> list[float]:
    """The learning-rate axis: a number, a list, {values: [...]} or {center, resolution, count}."""
    if isinstance(spec, dict):
        keys = set(spec)
        if keys == {"values"}:
            spec = spec["values"]
        elif keys == {"center", "resolution", "count"}:
            c, r, n = spec["center"], spec["resolution"], spec["count"]
            if not (isinstance(n, int) and n >= 1):
                raise ConfigError(f"lr.count: got {n!r}; allowed: an integer >= 1")
            if not (isinstance(r, (int, float)) and r > 0):
                raise ConfigError(f"lr.resolution: got {r!r}; allowed: a number > 0 (3 or 6 in the paper)")
            if not (isinstance(c, (int, float)) and c > 0):
                raise ConfigError(f"lr.center: got {c!r}; allowed: a number > 0")
            return [float(f"{c * 10 ** ((i - (n - 1) // 2) / r):.6g}") for i in range(n)]
        else:
            raise ConfigError(f"lr: got keys {sorted(keys)}; allowed: a number, a list, {{values: [...]}} or {{center, resolution, count}}")
    values = spec if isinstance(spec, list) else [spec]
    if not values:
        raise ConfigError("lr: the grid is empty; allowed: at least one learning rate > 0")
    return values


def load_sweep(path: str | Path) -> Sweep:
    raw = load_mapping(path)
    return expand(raw, where=str(path), default_name=Path(path).stem)


def expand(raw: dict[str, Any], *, where: str = "sweep", default_name: str = "sweep") -> Sweep:
    unknown = sorted(set(raw) - _FIELDS - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_FIELDS | set(SWEEP_KEYS))}")
    opts = {k: raw.get(k, v) for k, v in SWEEP_KEYS.items()}
    name = str(opts["name"] or default_name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"name: got {name!r}; allowed: letters, digits, '_', '-', '.'")
    seeds = opts["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(f"seeds: got {opts['seeds']!r}; allowed: a non-empty list of seeds or a count >= 1")
    for key, lo in (("workers", 0), ("worker_cpus", 0)):
        if not (isinstance(opts[key], (int, float)) and opts[key] >= lo) or isinstance(opts[key], bool):
            raise ConfigError(f"{key}: got {opts[key]!r}; allowed: a number >= {lo}")
    g = opts["worker_gpus"]
    if isinstance(g, bool) or not isinstance(g, (int, float)) or not (0 <= g <= 1 or float(g).is_integer()):
        raise ConfigError(f"worker_gpus: got {g!r}; allowed: a fraction in [0, 1] or a whole number")
    if not isinstance(opts["fuse_lr"], bool):
        raise ConfigError(f"fuse_lr: got {opts['fuse_lr']!r}; allowed: true or false")
    if opts["fuse_lr"] and opts["workers"] != 0:
        raise ConfigError(f"fuse_lr: true trains the grid in the trial's own process; allowed with workers: 0 only (got workers: {opts['workers']})")

    fixed = {k: v for k, v in raw.items() if k in _FIELDS}
    fixed.pop("lr", None)
    if opts["max_rounds"] is not None:
        if "rounds" in raw:
            raise ConfigError("max_rounds and rounds both given; allowed: one of them")
        fixed["rounds"] = opts["max_rounds"]
    fixed.setdefault("stop_at_target", True)
    axes = {k: v for k, v in fixed.items() if isinstance(v, list)}
    for k, v in axes.items():
        if not v:
            raise ConfigError(f"{k}: the grid axis is empty; allowed: a value or a non-empty list")
    axes["lr"] = lr_grid(raw.get("lr", ExperimentConfig.lr))
    axes["seed"] = seeds
    names = list(axes)
    trials = []
    for combo in itertools.product(*(axes[n] for n in names)):
        d = {**fixed, **dict(zip(names, combo))}
        trials.append(ExperimentConfig.from_dict(d, where=where))
    runtime = {k: opts[k] for k in ("workers", "worker_cpus", "worker_gpus", "fuse_lr")}
    return Sweep(name, trials, runtime)


def trial_key(cfg: ExperimentConfig) -> str:
    """A readable, unique directory name for a trial; every field that differs from the defaults
    of a setting's identity (model, data, partition, C, E, B, lr, seed) is in it."""
    B = "inf" if math.isinf(cfg.B) else int(cfg.B)
    part = cfg.partition + (f"{cfg.alpha:g}" if cfg.partition == "dirichlet" else "")
    data = "" if cfg.dataset == "mnist" else f"{cfg.dataset}_"
    decay = "" if cfg.lr_decay == 1 else f"_d{cfg.lr_decay:g}"
    return f"{data}{cfg.model}_{part}_K{cfg.K}_C{cfg.C:g}_E{cfg.E}_B{B}_lr{cfg.lr:g}{decay}_s{cfg.seed}"
