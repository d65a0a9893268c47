"""The in-process engine: one Python process holds the data and trains every client itself.
Used by `fedray run --workers 0`, by tests, and as the reference the Ray runtime must match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import models
from .client import Schedule, evaluate, train_models
from .config import ConfigError, ExperimentConfig
from .fedavg import ServerState
from .partition import make_partition
from .runner import RunResult, load_checkpoint, note_resumed, prepare_run_dir, run_rounds, write_config


@dataclass(frozen=True)
class Data:
    """Normalised images (N, 1, 28, 28) and labels, already on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def pick_device(device: str | None = None) -> torch.device:
    """Checked up front, because torch accepts torch.device("cuda") on a machine without CUDA and
    fails only at the first tensor moved, after the run directory exists."""
    if not device or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    here = "auto, cpu" + (", cuda" if n else "") + "".join(f", cuda:{i}" for i in range(n))
    try:
        dev = torch.device(device)
    except RuntimeError:  # a string torch cannot parse, such as "gpu0"
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and (dev.index or 0) >= n):
        raise ConfigError(f"--device: got {device!r}; allowed on this machine ({n} CUDA devices): {here}")
    return dev


def load_data(dataset: str = "mnist", device: torch.device | str = "cpu", root: str | None = None) -> Data:
    if dataset == "synthetic":
        return synthetic_data(device=device)
    from .data import load_mnist, to_tensors

    return Data(*to_tensors(load_mnist(root), device))


def synthetic_data(n_train: int = 2000, n_test: int = 500, seed: int = 0, device="cpu") -> Data:
    """Ten Gaussian blobs in image space, one per label: learnable in a few rounds, so that
    tests and smoke runs exercise every code path in seconds without MNIST."""
    g = torch.Generator().manual_seed(seed)
    centers = 0.25 * torch.randn(10, 1, 28, 28, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 10
        y = y[torch.randperm(n, generator=g)]
        return centers[y] + torch.randn(n, 1, 28, 28, generator=g), y

    (xa, ya), (xb, yb) = draw(n_train), draw(n_test)
    return Data(xa.to(device), ya.to(device), xb.to(device), yb.to(device))


def make_train(cfg: ExperimentConfig, data: Data, method: str = "auto"):
    def train(w: models.Params, schedules: Sequence[Schedule], lrs: Sequence[float]) -> models.Params:
        return train_models(cfg.model, w, data.train_x, data.train_y, schedules, lrs, method)

    return train


def make_evaluate(cfg: ExperimentConfig, data: Data):
    def evaluate_fn(w: models.Params, with_train_loss: bool) -> dict[str, float]:
        acc, loss = evaluate(cfg.model, w, data.test_x, data.test_y)
        out = {"test_accuracy": acc, "test_loss": loss}
        if with_train_loss:
            out["train_accuracy"], out["train_loss"] = evaluate(cfg.model, w, data.train_x, data.train_y)
        return out

    return evaluate_fn


def initial_state(cfg: ExperimentConfig, device: torch.device | str) -> ServerState:
    return ServerState(0, {k: v.to(device) for k, v in models.init_params(cfg.model, cfg.seed).items()})


def run_local(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    data: Data | None = None,
    device: str | None = None,
    resume: bool = False,
    force: bool = False,
    method: str = "auto",
    on_row=None,
    meta: dict[str, Any] | None = None,
    behind=None,
) -> RunResult:
    dev = pick_device(device)
    if out is not None:
        prepare_run_dir(out, force=force, resume=resume)
    if data is None:
        data = load_data(cfg.dataset, dev)
    partition: list[np.ndarray] = make_partition(
        cfg.partition, data.train_y.cpu().numpy(), cfg.K, cfg.seed, cfg.alpha
    )
    history = None
    if resume:
        state, history = load_checkpoint(out, dev)
        note_resumed(out, state.round, str(dev), torch.get_num_threads())
    else:
        state = initial_state(cfg, dev)
        if out is not None:
            write_config(out, cfg, {"device": str(dev), "runtime": {"engine": "local", "method": method, "threads": torch.get_num_threads()}, **(meta or {})})
    return run_rounds(
        cfg, partition, make_train(cfg, data, method), make_evaluate(cfg, data), state,
        history=history, out=out, on_row=on_row, behind=behind,
    )  # fmt: skip
