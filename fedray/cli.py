"""`fedray` command line: run (one FedAvg run), sweep (a Ray Tune sweep), report (tables, figures).

Every argument is checked, and every config built, before any data is loaded or Ray is started.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from .config import ConfigError, ExperimentConfig, load_mapping

_FIELDS = [f.name for f in dataclasses.fields(ExperimentConfig)]
_BOOLS = {"stop_at_target", "train_loss"}


def _field_help() -> dict[str, str]:
    """The per-field comments of ExperimentConfig, so --help and the dataclass never disagree."""
    import inspect
    import re

    src = inspect.getsource(ExperimentConfig)
    return {m[1]: m[2].replace("%", "%%") for m in re.finditer(r"^\s+(\w+): [^=]+=[^#\n]+#\s*(.+)$", src, re.M)}


def _add_run_parser(sub) -> None:
    helps = _field_help()
    p = sub.add_parser("run", help="one FedAvg run (McMahan et al. 2017, Algorithm 1)")
    p.add_argument("--config", help="YAML or JSON file of config fields; flags override it")
    for name in _FIELDS:
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if name in _BOOLS:
            p.add_argument(*flags, dest=name, nargs="?", const="true", default=None, metavar="BOOL", help=helps.get(name))
        else:
            p.add_argument(*flags, dest=name, default=None, metavar=name.upper() if len(name) > 1 else name,
                           help=helps.get(name))  # fmt: skip
    p.add_argument("--out", help="run directory (default: results/runs/<setting>)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output directory")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (in-process engine)")
    p.add_argument("--method", default="auto", choices=["auto", "stacked", "split", "sequential"],
                   help="how a round's clients are trained in-process")  # fmt: skip
    p.add_argument("--workers", type=int, default=None,
                   help="Ray ClientWorker actors (default: one per CPU, or four per GPU at 0.25 GPU "
                        "each); 0 = the in-process engine, for debugging")  # fmt: skip
    p.add_argument("--worker-cpus", type=float, default=1, help="CPUs per Ray worker (its torch threads)")
    p.add_argument("--worker-gpus", type=float, default=0, help="GPU fraction per Ray worker, e.g. 0.25")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (local Ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    d = {}
    if args.config:
        d.update(load_mapping(args.config))
        d.pop("meta", None)
    d.update({k: getattr(args, k) for k in _FIELDS if getattr(args, k, None) is not None})
    return ExperimentConfig.from_dict(d, where=args.config or "command line")


def default_out(cfg: ExperimentConfig) -> Path:
    B = "inf" if math.isinf(cfg.B) else int(cfg.B)
    return Path("results/runs") / f"{cfg.model}_{cfg.partition}_C{cfg.C:g}_E{cfg.E}_B{B}_lr{cfg.lr:g}_s{cfg.seed}"


def auto_workers(worker_gpus: float) -> tuple[int, float]:
    """One worker per CPU; on a GPU machine four workers per GPU sharing it (0.25 each)."""
    import os

    import torch

    if torch.cuda.is_available() and worker_gpus == 0:
        return 4 * torch.cuda.device_count(), 0.25
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1), worker_gpus


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        out = Path(args.resume)
        cfg = ExperimentConfig.from_file(out / "config.json")
    else:
        cfg = build_config(args)
        out = Path(args.out) if args.out else default_out(cfg)
    if args.workers is None:
        args.workers, args.worker_gpus = auto_workers(args.worker_gpus)
    if args.workers < 0:
        raise ConfigError(f"--workers: got {args.workers}; allowed: an integer >= 0")
    if args.worker_cpus <= 0:
        raise ConfigError(f"--worker-cpus: got {args.worker_cpus}; allowed: a number > 0")
    if not (0 <= args.worker_gpus <= 1 or float(args.worker_gpus).is_integer()):
        raise ConfigError(f"--worker-gpus: got {args.worker_gpus}; allowed: a fraction in [0, 1] or a whole number")
    if args.workers == 0:
        from .local import pick_device

        pick_device(args.device)  # a bad --device fails here, before the run directory is made
    from .runner import prepare_run_dir, sigterm_as_ctrl_c

    prepare_run_dir(out, force=args.force, resume=bool(args.resume))
    from tqdm import tqdm

    bar = tqdm(total=cfg.rounds, initial=0, unit="round", disable=args.no_progress, file=sys.stderr)

    def on_row(row: dict) -> None:
        bar.update(row["round"] - bar.n)
        bar.set_postfix(acc=f"{row['test_accuracy']:.4f}", s_per_round=f"{row['train_s'] + row['eval_s']:.2f}")

    if args.workers > 0:
        from .ray_runtime import init_ray, run_ray

        init_ray(args.address, args.dashboard)  # before our SIGTERM handler, or Ray's replaces it
    with sigterm_as_ctrl_c():  # `ray job stop` or a scheduler's kill stops the run as Ctrl-C does
        if args.workers == 0:
            from .local import run_local

            result = run_local(cfg, out, device=args.device, resume=bool(args.resume), force=True,
                               method=args.method, on_row=on_row)  # fmt: skip
        else:
            result = run_ray(cfg, out, workers=args.workers, num_cpus=args.worker_cpus,
                             num_gpus=args.worker_gpus, resume=bool(args.resume), force=True, on_row=on_row,
                             address=args.address, dashboard=args.dashboard)  # fmt: skip
    bar.close()
    rtt = result.rounds_to_target
    print(f"status: {result.status} after {result.state.round} rounds; "
          f"final test accuracy {result.history[-1]['test_accuracy']:.4f}" if result.history else
          f"status: {result.status}")  # fmt: skip
    reached = f"{rtt:.1f}" if not math.isnan(rtt) else f"not reached within {result.state.round} rounds"
    print(f"rounds to {cfg.target:g}: {reached}")
    print(f"results: {out}")
    return 130 if result.status == "interrupted" else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(sub)
    try:
        from .report import add_report_parser

        add_report_parser(sub)
    except ImportError:
        pass
    try:
        from .sweep import add_sweep_parser

        add_sweep_parser(sub)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        return args.func(args) or 0
    except (ConfigError, FileExistsError, FileNotFoundError) as e:
        print(f"fedray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
