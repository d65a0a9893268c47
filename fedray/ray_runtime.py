"""FedAvg on Ray: `ClientWorker` actors own the data and train the sampled clients, a `Driver`
actor holds the server state and runs the rounds with the core's pure functions (Algorithm 1 of
McMahan et al. 2017 via `fedavg_round`, the loop via `run_rounds`). Nothing here decides *what*
is computed: sampling, minibatch order and aggregation order come from (seed, round), so the
in-process engine, one worker and many workers give the same history.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
import torch

from . import models
from .client import Schedule, evaluate, train_models
from .config import ExperimentConfig
from .fedavg import ServerState
from .local import Data, initial_state, load_data
from .partition import make_partition
from .runner import (RunResult, load_checkpoint, note_resumed, prepare_run_dir, run_result, run_rounds, write_config,
                     write_summary)  # fmt: skip

HEAD_CPUS = 0.05  # the trial/driver share, carved out of the first worker's CPUs (see bundles)


def placement_bundles(workers: int, num_cpus: float = 1, num_gpus: float = 0) -> list[dict[str, float]]:
    """Resources of one run: a small head bundle (the caller and the driver) and one bundle per
    worker. The head share comes out of the first worker's CPUs so that W workers of c CPUs
    reserve exactly W*c CPUs: two one-CPU runs fit on a two-core laptop at once."""
    head = min(HEAD_CPUS, num_cpus / 2)
    gpu = {"GPU": num_gpus} if num_gpus else {}
    return [{"CPU": head}] + [{"CPU": num_cpus - (head if i == 0 else 0), **gpu} for i in range(workers)]


def _device() -> torch.device:
    # Actors asking for no GPU may still see one; Ray's assignment is the truth.
    return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")


@ray.remote
class ClientWorker:
    """Holds the data (read zero-copy from the object store) and trains whatever clients it is
    handed: a thin wrapper around `train_models` and `evaluate`."""

    def __init__(self, model: str, arrays: list, threads: int):
        torch.set_num_threads(max(1, threads))
        self.model, self.device = model, _device()
        # `arrays` is a list so Ray hands over the refs; ray.get maps them without a copy. The
        # training tensors are then made in the worker's own memory: indexing the shared
        # object-store pages directly ran the 2NN 2.5x slower on a 2-core machine.
        arrs = ray.get(arrays)
        if arrs[0].dtype == np.uint8:  # raw MNIST: normalise once, here
            from .data import MNIST, to_tensors

            self.data = Data(*to_tensors(MNIST(*arrs), self.device))
        else:
            self.data = Data(*(torch.tensor(a, device=self.device) for a in arrs))

    def train(self, w: models.Params, schedules: Sequence[Schedule], lrs: Sequence[float]) -> models.Params:
        w = {k: v.to(self.device) for k, v in w.items()}
        out = train_models(self.model, w, self.data.train_x, self.data.train_y, schedules, lrs)
        return {k: v.cpu() for k, v in out.items()}

    def evaluate(self, w: models.Params, split: str, lo: int, hi: int) -> tuple[int, float, int]:
        x, y = (self.data.test_x, self.data.test_y) if split == "test" else (self.data.train_x, self.data.train_y)
        acc, loss = evaluate(self.model, {k: v.to(self.device) for k, v in w.items()}, x[lo:hi], y[lo:hi])
        n = hi - lo
        return round(acc * n), loss * n, n

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "device": str(self.device)}


def balance(costs: Sequence[float], W: int) -> list[list[int]]:
    """Longest-processing-time greedy: each client, largest first, to the least loaded worker."""
    loads, groups = [0.0] * W, [[] for _ in range(W)]
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        j = min(range(W), key=loads.__getitem__)
        groups[j].append(i)
        loads[j] += costs[i]
    return groups


@ray.remote(max_concurrency=2)  # run() in one thread, poll() in the other
class Driver:
    def __init__(self, cfg: ExperimentConfig, out: str | None, arrays: list, workers: int,
                 num_cpus: float, num_gpus: float, resume: bool, meta: dict, pg=None):  # fmt: skip
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cfg, self.out = cfg, Path(out) if out else None
        bundles = placement_bundles(workers, num_cpus, num_gpus)
        self.workers, threads = [], max(1, round(num_cpus))  # torch threads of each worker
        for i, b in enumerate(bundles[1:]):
            opts: dict[str, Any] = {"num_cpus": b["CPU"], "num_gpus": b.get("GPU", 0),
                                    "max_restarts": 3, "max_task_retries": 3}  # fmt: skip
            if pg is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i + 1)
            self.workers.append(ClientWorker.options(**opts).remote(cfg.model, arrays, threads))
        self.info = ray.get([w.info.remote() for w in self.workers])
        labels = ray.get(arrays[1])
        self.partition = make_partition(cfg.partition, labels, cfg.K, cfg.seed, cfg.alpha)
        self.n_test, self.n_train = len(ray.get(arrays[3])), len(labels)
        devices = ",".join(sorted({i["device"] for i in self.info}))
        if resume:
            self.state, self.history = load_checkpoint(self.out)
            note_resumed(self.out, self.state.round, devices, threads)
        else:
            self.state, self.history = initial_state(cfg, "cpu"), []
            if self.out is not None:
                meta = {**meta, "device": devices,
                        "runtime": {**meta.get("runtime", {}), "threads": threads,
                                    "nodes": sorted({i["node"] for i in self.info})}}  # fmt: skip
                write_config(self.out, cfg, meta)
        self.rows: list[dict] = []
        self.lock = threading.Lock()

    def train(self, w: models.Params, schedules: Sequence[Schedule], lrs: Sequence[float]) -> models.Params:
        # Work of a client: its number of SGD steps, E * ceil(n_k / B).
        groups = [g for g in balance([len(s) for s in schedules], len(self.workers)) if g]
        w_ref = ray.put(w)  # one broadcast per round, read by every worker
        parts = ray.get([self.workers[j].train.remote(w_ref, [schedules[i] for i in g], [lrs[i] for i in g])
                         for j, g in enumerate(groups)])  # fmt: skip
        order = np.argsort(np.concatenate(groups))  # back to the sampled order before averaging
        return {k: torch.cat([p[k] for p in parts])[torch.from_numpy(order)] for k in parts[0]}

    def evaluate(self, w: models.Params, with_train_loss: bool) -> dict[str, float]:
        w_ref = ray.put(w)
        out = {}
        for split, n in (("test", self.n_test), ("train", self.n_train))[: 2 if with_train_loss else 1]:
            cuts = np.linspace(0, n, len(self.workers) + 1).astype(int)
            res = ray.get([wk.evaluate.remote(w_ref, split, int(a), int(b)) for wk, a, b in zip(self.workers, cuts, cuts[1:])])
            correct, loss, count = (sum(r[i] for r in res) for i in range(3))
            out[f"{split}_accuracy"], out[f"{split}_loss"] = correct / count, loss / count
        return out

    def run(self, checkpoint_every: int, behind=None) -> dict[str, Any]:
        def on_row(row: dict) -> None:
            with self.lock:
                self.rows.append(row)

        r = run_rounds(self.cfg, self.partition, self.train, self.evaluate, self.state, history=self.history,
                       out=self.out, checkpoint_every=checkpoint_every, on_row=on_row, behind=behind)  # fmt: skip
        self.state, self.history = r.state, r.history
        return {"status": r.status, "round": r.state.round, "w": r.state.w, "history": r.history}

    def poll(self) -> list[dict]:
        with self.lock:
            rows, self.rows = self.rows, []
        return rows

    def workers_info(self) -> list[dict]:
        return self.info

    def worker_handles(self) -> list:
        return self.workers


def put_data(data) -> list:
    """The four arrays (raw uint8 MNIST, or a Data's tensors) in the object store, once."""
    if isinstance(data, Data):
        data = (data.train_x, data.train_y, data.test_x, data.test_y)
    return [ray.put(t.cpu().numpy() if isinstance(t, torch.Tensor) else t) for t in data]


def init_ray(address: str | None = None, dashboard: bool = False) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start Ray embedded in this process.
    Ray sets its own SIGTERM handler here: install ours (sigterm_as_ctrl_c) after this."""
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=dashboard, log_to_driver=False)


def run_ray(
    cfg: ExperimentConfig,
    out: Path | None = None,
    *,
    workers: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
    resume: bool = False,
    force: bool = False,
    on_row=None,
    address: str | None = None,
    data: Data | None = None,
    checkpoint_every: int = 10,
    dashboard: bool = False,
    on_driver=None,
    behind=None,
) -> RunResult:
    if out is not None:
        prepare_run_dir(out, force=force, resume=resume)
    init_ray(address, dashboard)
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()  # inside a Tune trial: its reserved bundles
    if data is None and cfg.dataset == "mnist":
        from .data import load_mnist

        data = load_mnist()  # 55 MB of uint8 in the object store; each worker normalises its copy
    arrays = put_data(data if data is not None else load_data(cfg.dataset, "cpu"))
    meta = {"runtime": {"engine": "ray", "workers": workers, "num_cpus": num_cpus, "num_gpus": num_gpus,
                        "address": ray.get_runtime_context().gcs_address}}  # fmt: skip
    opts: dict[str, Any] = {"num_cpus": 0}
    if pg is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    driver = Driver.options(**opts).remote(cfg, str(out) if out else None, arrays, workers, num_cpus, num_gpus, resume, meta, pg)
    if on_driver is not None:
        on_driver(driver)
    job = driver.run.remote(checkpoint_every, behind)
    try:
        while True:
            ready, _ = ray.wait([job], timeout=0.2)
            for row in ray.get(driver.poll.remote()):
                if on_row is not None:
                    on_row(row)
            if ready:
                break
        res = ray.get(job)
    except KeyboardInterrupt:
        # The driver dies with its workers; history.csv and the last checkpoint stay for --resume.
        ray.kill(driver)
        has_ck = out is not None and (Path(out) / "checkpoint.pt").exists()
        state, history = load_checkpoint(out) if has_ck else (initial_state(cfg, "cpu"), [])
        result = run_result("interrupted", state, history, cfg.target)
        if out is not None:
            write_summary(out, result)
        return result
    ray.kill(driver)
    return run_result(res["status"], ServerState(res["round"], res["w"]), res["history"], cfg.target)
