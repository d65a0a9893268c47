"""Wall-clock of one setting's learning-rate grid, unfused (one run per lr) against fused (the
grid stacked on the model axis), from one run on this machine, with the training GFLOP/s against
the fp32 matmul peak measured in the same run.

    python benchmarks/sweep_time.py [--lrs 7] [--rounds 50] [--model 2nn]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from fedray.config import ExperimentConfig
from fedray.fused import run_fused
from fedray.local import load_data, run_local

from round_time import _FWD_FLOP, matmul_peak  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", type=int, default=7)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--model", default="2nn")
    args = p.parse_args()
    peak = matmul_peak()
    data = load_data("mnist", "cpu")
    base = ExperimentConfig(model=args.model, partition="iid", C=0.1, E=1, B=10, rounds=args.rounds, target=0.97)
    lrs = [round(0.1 * 10 ** ((k - (args.lrs - 1) // 2) / 6), 6) for k in range(args.lrs)]
    cfgs = [dataclasses.replace(base, lr=lr) for lr in lrs]
    flop = _FWD_FLOP[args.model] * 3 * base.m * 600 * base.E * args.rounds * len(cfgs)

    t = time.perf_counter()
    sep = [run_local(c, data=data) for c in cfgs]
    t_sep = time.perf_counter() - t
    train_sep = sum(sum(h["train_s"] for h in r.history) for r in sep)

    t = time.perf_counter()
    fused = run_fused(cfgs, data=data)
    t_fused = time.perf_counter() - t
    # Each fused row carries the round's training time divided over the active lrs.
    train_fused = sum(sum(h["train_s"] for h in r.history) for r in fused)
    same = all([h["test_accuracy"] for h in a.history] == [h["test_accuracy"] for h in b.history] for a, b in zip(sep, fused))

    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak:.1f} GFLOP/s")
    print(f"{args.model}, IID, C=0.1, E=1, B=10, {len(lrs)} learning rates {lrs}, {args.rounds} rounds each "
          f"({flop / 1e9:.0f} GFLOP of training)")  # fmt: skip
    for name, wall, tr in (("unfused", t_sep, train_sep), ("fused", t_fused, train_fused)):
        print(f"  {name:8s} wall {wall:7.2f} s   training {tr:7.2f} s = {flop / tr / 1e9:6.1f} GFLOP/s "
              f"({flop / tr / 1e9 / peak:5.1%} of peak)")  # fmt: skip
    print(f"  fused is {t_sep / t_fused:.2f}x faster in wall-clock, {train_sep / train_fused:.2f}x in training; "
          f"identical accuracy histories: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
