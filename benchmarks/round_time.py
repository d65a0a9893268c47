"""Seconds per FedAvg round (C=0.1, E=1, B=10) on this machine, from one run, for:
  (a) a plain PyTorch loop, one client at a time, a DataLoader per client (as commonly written),
  (b) fedray's in-process engine,
  (c) fedray on Ray with W ClientWorker actors (--workers, default: one per CPU),
with the ratios against (a) and the achieved GFLOP/s against the fp32 matmul peak measured now.
The variants take turns within every timed round, so a shared machine's load swings hit all alike.

    python benchmarks/round_time.py [--models 2nn cnn] [--rounds 5] [--warmup 1] [--workers W]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedray import models
from fedray.client import evaluate
from fedray.config import ExperimentConfig
from fedray.fedavg import ServerState, aggregate, fedavg_round, round_schedules
from fedray.local import initial_state, load_data, make_train
from fedray.partition import make_partition

# Training FLOPs per example: forward 2*MACs, backward about twice the forward.
_FWD_FLOP = {
    "2nn": 2 * (784 * 200 + 200 * 200 + 200 * 10),
    "cnn": 2 * (28 * 28 * 32 * 25 + 14 * 14 * 64 * 32 * 25 + 3136 * 512 + 512 * 10),
}


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def plain_round(cfg, w, data, partition, t):
    """What a typical hand-written FedAvg does: nn.Module + optim.SGD + a DataLoader per client."""
    S, _ = round_schedules(cfg, partition, t)
    outs = []
    for k in S:
        model = models.build(cfg.model)
        model.load_state_dict({n: v for n, v in zip(dict(model.named_parameters()), w.values())}, strict=False)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        idx = torch.as_tensor(partition[k])
        loader = DataLoader(TensorDataset(data.train_x[idx], data.train_y[idx]), batch_size=int(cfg.B), shuffle=True)
        for _ in range(cfg.E):
            for xb, yb in loader:
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
        outs.append({n: p.detach() for n, p in model.named_parameters()})
    return aggregate({n: torch.stack([o[n] for o in outs]) for n in outs[0]}, [len(partition[k]) for k in S])


def time_rounds(steps: dict, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds of each step, the steps taking turns within every round, so that a shared
    machine's load swings hit all of them alike and the ratios stay meaningful."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + rounds):
        for k, step in steps.items():
            t = time.perf_counter()
            step(r + 1)
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(name: str, data, args, peak: float) -> None:
    cfg = ExperimentConfig(model=name, partition="iid", C=0.1, E=1, B=10, lr=0.05, rounds=1000)
    partition = make_partition("iid", data.train_y.numpy(), cfg.K, cfg.seed)
    state = initial_state(cfg, "cpu")
    flop = _FWD_FLOP[name] * 3 * cfg.m * 600 * cfg.E
    train = make_train(cfg, data)
    steps = {
        "(a) plain loop": lambda t: plain_round(cfg, state.w, data, partition, t),
        "(b) in-process": lambda t: fedavg_round(ServerState(t - 1, state.w), cfg, partition, train),
        "eval": lambda t: evaluate(name, state.w, data.test_x, data.test_y),
    }
    if args.workers:
        import ray

        from fedray.ray_runtime import Driver, put_data

        if not ray.is_initialized():
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        # The driver actor's own train/evaluate, timed from here: one broadcast, balanced
        # dispatch, gather, as in a real run (plus shipping the stacked result back here).
        drv = Driver.options(num_cpus=0).remote(cfg, None, put_data(data), args.workers, 1, 0, False, {})

        def ray_round(t):
            S, schedules = round_schedules(cfg, partition, t)
            ray.get(drv.train.remote(state.w, schedules, [cfg.lr] * len(S)))

        steps[f"(c) ray, {args.workers} workers"] = ray_round
        steps["eval on ray"] = lambda t: ray.get(drv.evaluate.remote(state.w, False))
    rows = time_rounds(steps, args.rounds, args.warmup)
    if args.workers:
        ray.kill(drv)
    ev, ev_ray = rows.pop("eval"), rows.pop("eval on ray", None)
    base = rows["(a) plain loop"]
    print(f"\n{name}: C=0.1 E=1 B=10, {cfg.m} clients x 600 examples, {flop / 1e9:.1f} GFLOP of training per round")
    for k, s in rows.items():
        print(f"  {k:24s} train {s:7.3f} s/round  {base / s:5.2f}x vs (a)  {flop / s / 1e9:6.1f} GFLOP/s = {flop / s / 1e9 / peak:5.1%} of peak")
    ev_flop = _FWD_FLOP[name] * len(data.test_y)
    print(f"  evaluation (10k test)    {ev:7.3f} s         {ev_flop / ev / 1e9:6.1f} GFLOP/s; "
          f"{ev / (rows['(b) in-process'] + ev):.1%} of an in-process round")
    if args.workers:
        print(f"  evaluation on Ray        {ev_ray:7.3f} s split over {args.workers} workers")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["2nn", "cnn"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="0 skips the Ray rows")
    args = p.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 matmul peak (2048^2) {peak:.1f} GFLOP/s")
    data = load_data("mnist", "cpu")
    for name in args.models:
        bench_model(name, data, args, peak)


if __name__ == "__main__":
    main()
