"""The round loop of one FedAvg run: evaluate, record, checkpoint, stop. Runtime-agnostic: the
in-process engine and the Ray driver both hand it a `train` function and an `evaluate` function.

A run directory holds config.json (the resolved config plus versions and device), history.csv
(one row per evaluated round, flushed as it is written), summary.json, and checkpoint.pt.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from . import models
from .config import ExperimentConfig
from .curves import rounds_to_target
from .fedavg import ServerState, TrainFn, fedavg_round

# A checkpoint also whenever this much wall-clock has passed since the last: a trial killed
# without warning (Tune stopping it on Ctrl-C, a preempted node) then redoes about a minute of
# work, not up to checkpoint_every - 1 rounds (~35 minutes of CNN C=0.5 rounds, ~70 at C=1.0, on
# 2 CPU cores).
CHECKPOINT_S = 60.0

HISTORY_FIELDS = [
    "round", "test_accuracy", "test_loss", "train_loss", "lr",
    "train_s", "eval_s", "elapsed_s", "bytes_down", "bytes_up",
]  # fmt: skip
# A net that predicts one class scores 8.9-11.4% on MNIST's test set (its class frequencies).
CHANCE_ACCURACY = 0.12
EvalFn = Callable[[models.Params, bool], dict[str, float]]  # (w, with_train_loss) -> metrics


def checkpoint_due(t: int, every: int, saved_at: float, every_s: float = CHECKPOINT_S) -> bool:
    """After evaluated round t: save every `every` rounds or once `every_s` seconds have passed
    since `saved_at` (a time.perf_counter()), whichever comes first."""
    return t % every == 0 or time.perf_counter() - saved_at >= every_s


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (`ray job stop`, a batch scheduler's preemption, kill) stops what runs inside as
    Ctrl-C does, so a run or a sweep keeps its last round and logs its end instead of dying."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def as_ctrl_c(_, frame) -> None:
        # Whoever handles Ctrl-C now (Tune during a sweep) handles this too. A job started in the
        # background (`cmd &`, nohup, some job runners) has SIGINT ignored: raise it ourselves.
        ctrl_c = signal.getsignal(signal.SIGINT)
        if not callable(ctrl_c):
            raise KeyboardInterrupt
        ctrl_c(signal.SIGINT, frame)

    old = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class RunDirExists(FileExistsError):
    pass


@dataclass
class RunResult:
    status: str  # completed | reached | diverged | behind | interrupted
    state: ServerState
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds_to_target: float = math.nan


def run_result(status: str, state: ServerState, history: list[dict[str, Any]], target: float) -> RunResult:
    """A RunResult with its rounds to `target` (the paper's interpolated crossing) filled in."""
    rounds, acc = [r["round"] for r in history], [r["test_accuracy"] for r in history]
    return RunResult(status, state, history, rounds_to_target(rounds, acc, target) if history else math.nan)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("fedray", "torch", "numpy", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    """The CPU model, count and the vector ISA torch's kernels use, so a report can say what the
    wall-clock numbers were measured on. The ISA is there because one model name ("AMD EPYC")
    covers hosts with and without AVX-512, whose float sums round differently: a run repeats itself
    bit for bit on one but drifts from round 1 on the other."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs, {torch.backends.cpu.get_cpu_capability()}"


def prepare_run_dir(out: Path, *, force: bool = False, resume: bool = False) -> None:
    """Refuse to overwrite an earlier run: checked before any data is loaded or Ray started."""
    out = Path(out)
    if resume:
        if not (out / "checkpoint.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint.pt in {out}")
        return
    if out.exists() and any(out.iterdir()) and not force:
        raise RunDirExists(f"output directory {out} exists and is not empty; use --force to overwrite it, or --resume to continue it")
    out.mkdir(parents=True, exist_ok=True)


def write_config(out: Path, cfg: ExperimentConfig, meta: dict[str, Any]) -> None:
    meta = {"versions": versions(), "hostname": platform.node(), "cpu": cpu_name(), **meta}
    atomic_write(Path(out) / "config.json", json.dumps({**cfg.to_dict(), "meta": meta}, indent=2))


def note_resumed(out: Path, round: int, device: str, threads: int) -> None:
    """A run resumed from its checkpoint may go on on another machine, or with another number of
    torch threads (a CNN round at E=20, B=10 took 58 s with 2 and 93 s with 1): config.json keeps the
    first sitting's and gains an entry per resumption, so its wall-clock stays attributable."""
    p = Path(out) / "config.json"
    d = json.loads(p.read_text())
    entry = {"round": round, "hostname": platform.node(), "cpu": cpu_name(), "device": device,
             "threads": threads, "at": time.time()}  # fmt: skip
    d.setdefault("meta", {}).setdefault("resumed", []).append(entry)
    atomic_write(p, json.dumps(d, indent=2))


def save_checkpoint(out: Path, state: ServerState, history: list[dict]) -> None:
    buf = io.BytesIO()
    torch.save({"round": state.round, "w": {k: v.cpu() for k, v in state.w.items()}, "history": history}, buf)
    atomic_write(Path(out) / "checkpoint.pt", buf.getvalue())


def load_checkpoint(out: Path, device: torch.device | str = "cpu") -> tuple[ServerState, list[dict]]:
    ck = torch.load(Path(out) / "checkpoint.pt", map_location=device, weights_only=True)
    return ServerState(ck["round"], ck["w"]), ck["history"]


def write_summary(out: Path, result: RunResult) -> None:
    h, rtt = result.history, result.rounds_to_target
    summary = {
        "status": result.status,
        "rounds_completed": result.state.round,
        "rounds_to_target": None if math.isnan(rtt) else rtt,
        "final_test_accuracy": h[-1]["test_accuracy"] if h else None,
        "wall_s": h[-1]["elapsed_s"] if h else 0.0,
        # The report's sweep spans: a sitting still running has no end line in its sweep log yet.
        "finished": time.time(),
    }
    atomic_write(Path(out) / "summary.json", json.dumps(summary, indent=2))


def record_row(out: Path, history: list[dict], fresh: bool) -> None:
    """history.csv gets the newest row appended and flushed (O(1) per round); it is rewritten
    whole, atomically, when `fresh` (first row of this process, e.g. after a resume)."""
    path = Path(out) / "history.csv"
    if fresh or not path.exists():
        atomic_write(path, _history_csv(history))
        return
    with open(path, "a") as f:
        f.write(_history_csv(history[-1:]).split("\n", 1)[1])


def _history_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def diverged(history: Sequence[dict], collapse_rounds: int = 0) -> bool:
    """A non-finite loss in the last row, or (collapse_rounds > 0) the last collapse_rounds rows
    at chance accuracy after an earlier row above it. A run that never rose above chance (a
    rate too small to have moved yet) is slow, not diverged, and goes on."""
    if history and not math.isfinite(history[-1]["test_loss"]):
        return True
    n = collapse_rounds
    if n <= 0 or len(history) <= n:
        return False
    return all(r["test_accuracy"] <= CHANCE_ACCURACY for r in history[-n:]) and any(
        r["test_accuracy"] > CHANCE_ACCURACY for r in history[:-n]
    )


def run_rounds(
    cfg: ExperimentConfig,
    partition: Sequence[Any],
    train: TrainFn,
    evaluate: EvalFn,
    state: ServerState,
    *,
    history: list[dict] | None = None,
    out: Path | None = None,
    checkpoint_every: int = 10,
    checkpoint_s: float = CHECKPOINT_S,
    on_row: Callable[[dict], None] | None = None,
    behind: Callable[[], bool] | None = None,
) -> RunResult:
    """Run rounds state.round+1 .. cfg.rounds (or until the stopping rule), evaluating every
    cfg.eval_every rounds. With `out`, history.csv is rewritten after every evaluation and a
    checkpoint every `checkpoint_every` rounds or `checkpoint_s` seconds, whichever comes first;
    a KeyboardInterrupt keeps both and returns. With cfg.stop_at_target, `behind()`, asked after
    each evaluation below the target, stops the run as "behind" when it says other runs have
    settled the rounds to target (a sweep's better learning rate, report.runs_behind); without
    it, the curve is what is wanted and the run goes on."""
    history = list(history or [])
    per_round_bytes = cfg.m * models.nbytes(state.w)
    t0 = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    train_s, status, fresh = 0.0, "completed", True
    reached_at = next((r["round"] for r in history if r["test_accuracy"] >= cfg.target), None)
    saved_at = time.perf_counter()
    try:
        while state.round < cfg.rounds:
            if cfg.stop_at_target and reached_at is not None and state.round >= reached_at + cfg.extra_rounds:
                status = "reached"
                break
            ts = time.perf_counter()
            # `state` advances only once round t's row is in `history`: a Ctrl-C during the
            # evaluation then saves w_{t-1}, and the resume recomputes round t (same (seed, t)).
            new = fedavg_round(state, cfg, partition, train)
            train_s += time.perf_counter() - ts
            t = new.round
            if t % cfg.eval_every and t != cfg.rounds:
                state = new
                continue
            te = time.perf_counter()
            metrics = evaluate(new.w, cfg.train_loss)
            row = {
                "round": t,
                "test_accuracy": metrics["test_accuracy"],
                "test_loss": metrics["test_loss"],
                "train_loss": metrics.get("train_loss", ""),
                "lr": cfg.lr_at(t),
                "train_s": round(train_s, 4),
                "eval_s": round(time.perf_counter() - te, 4),
                "elapsed_s": round(time.perf_counter() - t0, 3),
                "bytes_down": per_round_bytes,
                "bytes_up": per_round_bytes,
            }
            train_s = 0.0
            history.append(row)
            state = new
            if reached_at is None and row["test_accuracy"] >= cfg.target:
                reached_at = t
            if out is not None:
                record_row(out, history, fresh=fresh)
                fresh = False
                if checkpoint_due(t, checkpoint_every, saved_at, checkpoint_s):
                    save_checkpoint(out, state, history)
                    saved_at = time.perf_counter()
            stop = diverged(history, cfg.collapse_rounds)
            if on_row is not None:  # listeners (Tune) learn of a stop on its row; history.csv does not hold it
                on_row({**row, "diverged": stop})
            if stop:
                status = "diverged"
                break
            if behind is not None and cfg.stop_at_target and reached_at is None and behind():
                status = "behind"
                break
    except KeyboardInterrupt:
        status = "interrupted"
        # A Ctrl-C between the append and `state = new` must not save a row the state lacks.
        history = [r for r in history if r["round"] <= state.round]
    if status == "completed" and cfg.stop_at_target and reached_at is not None:
        status = "reached"
    result = run_result(status, state, history, cfg.target)
    if out is not None:
        atomic_write(Path(out) / "history.csv", _history_csv(history))
        save_checkpoint(out, state, history)
        write_summary(out, result)
    return result
