"""A setting's whole learning-rate grid as one stacked computation (FedAvg, Algorithm 1 of
McMahan et al. 2017, once per learning rate).

The runs of one setting that differ only in the learning rate sample the same clients and use the
same minibatches in every round (both derive from (seed, round, client)), so their ClientUpdates
can share the stacked engine's model axis: L learning rates x m clients models per SGD step. Each
learning rate keeps its own server model and its own run directory, written exactly as a separate
run would write it, and leaves the stack when its stopping rule fires.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import models
from .client import train_models
from .config import ExperimentConfig
from .fedavg import ServerState, aggregate, round_schedules
from .local import Data, initial_state, load_data, make_evaluate
from .partition import make_partition
from .runner import (RunResult, _history_csv, atomic_write, checkpoint_due, diverged, prepare_run_dir,
                     record_row, run_result, save_checkpoint, write_config, write_summary)


def check_fusable(cfgs: Sequence[ExperimentConfig]) -> None:
    base = dataclasses.replace(cfgs[0], lr=1.0)
    for c in cfgs[1:]:
        if dataclasses.replace(c, lr=1.0) != base:
            raise ValueError("fused runs must differ in lr only")


def run_fused(
    cfgs: Sequence[ExperimentConfig],
    outs: Sequence[Path] | None = None,
    *,
    data: Data | None = None,
    device: str | torch.device = "cpu",
    method: str = "auto",
    checkpoint_every: int = 10,
    on_row: Callable[[int, dict], None] | None = None,
    meta: dict | None = None,
) -> list[RunResult]:
    """Run every config of `cfgs` (one setting, several learning rates) at once. on_row(i, row)
    is called with the index of the learning rate whose round was evaluated."""
    check_fusable(cfgs)
    cfg0, L = cfgs[0], len(cfgs)
    if outs is not None:
        for o in outs:
            prepare_run_dir(o, force=True)
    data = data if data is not None else load_data(cfg0.dataset, device)
    partition = make_partition(cfg0.partition, data.train_y.cpu().numpy(), cfg0.K, cfg0.seed, cfg0.alpha)
    evaluate = make_evaluate(cfg0, data)
    w0 = initial_state(cfg0, data.train_x.device).w
    states = [ServerState(0, w0) for _ in range(L)]
    histories: list[list[dict]] = [[] for _ in range(L)]
    status = ["completed"] * L
    reached: list[int | None] = [None] * L
    active = list(range(L))
    if outs is not None:
        for c, o in zip(cfgs, outs):
            write_config(o, c, {"device": str(data.train_x.device), "runtime": {"engine": "fused", "lrs": L, "threads": torch.get_num_threads()}, **(meta or {})})
    per_round_bytes = cfg0.m * models.nbytes(w0)
    t0, train_s = time.perf_counter(), 0.0
    saved_at = t0
    try:
        for t in range(1, cfg0.rounds + 1):
            active = [i for i in active if not _stopped(cfgs[i], reached[i], t - 1)]
            if not active:
                break
            ts = time.perf_counter()
            S, schedules = round_schedules(cfg0, partition, t)
            m = len(S)
            w_in = {k: torch.cat([states[i].w[k].unsqueeze(0).expand(m, *v.shape) for i in active]) for k, v in w0.items()}
            lrs = [cfgs[i].lr_at(t) for i in active for _ in range(m)]
            w_k = train_models(cfg0.model, w_in, data.train_x, data.train_y, list(schedules) * len(active), lrs, method)
            n_k = [len(partition[k]) for k in S]
            for j, i in enumerate(active):
                states[i] = ServerState(t, aggregate({k: v[j * m : (j + 1) * m] for k, v in w_k.items()}, n_k))
            train_s += time.perf_counter() - ts
            if t % cfg0.eval_every and t != cfg0.rounds:
                continue
            save = checkpoint_due(t, checkpoint_every, saved_at)
            for i in list(active):
                te = time.perf_counter()
                mt = evaluate(states[i].w, cfg0.train_loss)
                row = {"round": t, "test_accuracy": mt["test_accuracy"], "test_loss": mt["test_loss"],
                       "train_loss": mt.get("train_loss", ""), "lr": cfgs[i].lr_at(t), "train_s": round(train_s / len(active), 4),
                       "eval_s": round(time.perf_counter() - te, 4), "elapsed_s": round(time.perf_counter() - t0, 3),
                       "bytes_down": per_round_bytes, "bytes_up": per_round_bytes}  # fmt: skip
                histories[i].append(row)
                if reached[i] is None and row["test_accuracy"] >= cfgs[i].target:
                    reached[i] = t
                if outs is not None:
                    record_row(outs[i], histories[i], fresh=len(histories[i]) == 1)
                    if save:
                        save_checkpoint(outs[i], states[i], histories[i])
                stop = diverged(histories[i], cfgs[i].collapse_rounds)
                if on_row is not None:
                    on_row(i, {**row, "diverged": stop})
                if stop:
                    status[i] = "diverged"
                    active.remove(i)
            train_s = 0.0
            saved_at = time.perf_counter() if save else saved_at
    except KeyboardInterrupt:
        status = ["interrupted" if s == "completed" else s for s in status]
    results = []
    for i, c in enumerate(cfgs):
        if status[i] == "completed" and c.stop_at_target and reached[i] is not None:
            status[i] = "reached"
        r = run_result(status[i], states[i], histories[i], c.target)
        if outs is not None:
            atomic_write(Path(outs[i]) / "history.csv", _history_csv(histories[i]))
            save_checkpoint(outs[i], states[i], histories[i])
            write_summary(outs[i], r)
        results.append(r)
    return results


def _stopped(cfg: ExperimentConfig, reached: int | None, done: int) -> bool:
    return cfg.stop_at_target and reached is not None and done >= reached + cfg.extra_rounds
