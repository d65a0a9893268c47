"""FederatedAveraging, Algorithm 1 of McMahan et al. 2017, as pure functions.

One round, in the paper's order: m <- max(C*K, 1); S_t <- a random set of m clients; each client k
in S_t runs ClientUpdate(k, w_t); w_{t+1} <- sum_k n_k w_k / sum_k n_k over S_t. Every random
choice derives from (seed, round[, client]), so a round's result does not depend on which process,
worker or runtime computed it. FedSGD is the special case E=1, B=inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from .client import Schedule, client_batches
from .config import ExperimentConfig
from .models import Params

_SAMPLE_STREAM = 0x5EED_0002

# Trains len(schedules) models from the broadcast weights, returns them stacked (M, ...).
TrainFn = Callable[[Params, Sequence[Schedule], Sequence[float]], Params]


@dataclass(frozen=True)
class ServerState:
    round: int  # rounds completed; w is w_round
    w: Params  # the global model


def sample_clients(seed: int, round_: int, K: int, m: int) -> np.ndarray:
    """S_t: m of the K clients, uniformly without replacement, from (seed, round) alone."""
    return np.random.default_rng([seed, _SAMPLE_STREAM, round_]).choice(K, size=m, replace=False)


def aggregate(w_k: Params, n_k: Sequence[int]) -> Params:
    """sum_k n_k w_k / sum_k n_k, with the clients' weights stacked on the leading axis."""
    p = torch.as_tensor(np.asarray(n_k, dtype=np.float64) / float(np.sum(n_k)))
    return {
        name: torch.tensordot(p.to(v.device, v.dtype), v, dims=1) for name, v in w_k.items()
    }


def round_schedules(
    cfg: ExperimentConfig, partition: Sequence[np.ndarray], round_: int
) -> tuple[np.ndarray, list[Schedule]]:
    """S_t and, for each of its clients, the minibatches (absolute example indices) it will use."""
    S = sample_clients(cfg.seed, round_, cfg.K, cfg.m)
    schedules = [
        [partition[k][b] for b in client_batches(cfg.seed, round_, int(k), len(partition[k]), cfg.E, cfg.B)]
        for k in S
    ]
    return S, schedules


def fedavg_round(
    state: ServerState, cfg: ExperimentConfig, partition: Sequence[np.ndarray], train: TrainFn
) -> ServerState:
    """w_t -> w_{t+1}. `train` is the only thing a runtime supplies (in-process or Ray workers)."""
    t = state.round + 1
    S, schedules = round_schedules(cfg, partition, t)
    w_k = train(state.w, schedules, [cfg.lr_at(t)] * len(S))
    return ServerState(t, aggregate(w_k, [len(partition[k]) for k in S]))
