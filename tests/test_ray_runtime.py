"""The Ray runtime on a real local Ray (started once for the module): same history as the
in-process engine whatever the number of workers, and faults that do not change the result."""

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import ray
import torch

from fedray.config import ExperimentConfig
from fedray.local import run_local, synthetic_data
from fedray.ray_runtime import balance, placement_bundles, run_ray

CFG = ExperimentConfig(dataset="synthetic", K=10, C=0.3, E=1, B=10, lr=0.05, rounds=6)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


@pytest.fixture(scope="module")
def reference(data):
    return run_local(CFG, data=data)


def test_balance_longest_first():
    # Steps 6, 5, 4, 3 on two workers: 6 -> w0, 5 -> w1, 4 -> w1 (9), 3 -> w0 (9).
    assert balance([6, 5, 4, 3], 2) == [[0, 3], [1, 2]]


def test_bundles_reserve_exactly_W_times_c_cpus():
    b = placement_bundles(2, 1, 0.25)
    assert sum(x["CPU"] for x in b) == pytest.approx(2) and len(b) == 3
    assert [x.get("GPU", 0) for x in b] == [0, 0.25, 0.25]


@pytest.mark.parametrize("workers", [1, 2])
def test_same_history_as_in_process(local_ray, data, reference, workers, tmp_path):
    res = run_ray(CFG, tmp_path / "r", workers=workers, data=data)
    assert [h["test_accuracy"] for h in res.history] == [h["test_accuracy"] for h in reference.history]
    for k, v in reference.state.w.items():
        assert torch.allclose(res.state.w[k], v, atol=1e-6, rtol=0)
    h = pd.read_csv(tmp_path / "r" / "history.csv")
    assert len(h) == CFG.rounds and (tmp_path / "r" / "checkpoint.pt").exists()


def test_worker_killed_mid_round_is_restarted_and_history_unchanged(local_ray, data, reference):
    cfg = ExperimentConfig(**{**CFG.to_dict(), "C": 1.0})  # 10 clients a round: rounds take a while
    ref = run_local(cfg, data=data)
    drivers, pids = [], []

    def kill_once(row):
        # The driver is already in the next round when this row arrives: the kill lands mid-round.
        workers = ray.get(drivers[0].worker_handles.remote())
        if row["round"] == 2:
            pids.append(ray.get(workers[0].info.remote())["pid"])
            threading.Timer(0.02, lambda: ray.kill(workers[0], no_restart=False)).start()
        if row["round"] == 5:
            pids.append(ray.get(workers[0].info.remote())["pid"])

    res = run_ray(cfg, workers=2, data=data, on_row=kill_once, on_driver=drivers.append)
    assert res.status == "completed" and len(pids) == 2 and pids[0] != pids[1]  # restarted
    assert [h["test_accuracy"] for h in res.history] == [h["test_accuracy"] for h in ref.history]


def test_driver_killed_then_resume_ends_with_the_same_history(tmp_path, reference):
    """A whole `fedray run --workers 2` process tree is killed after a checkpoint; `--resume`
    on a fresh Ray finishes the run with the history of an undisturbed run."""
    out = tmp_path / "k"
    cmd = [sys.executable, "-m", "fedray.cli", "run", "--dataset", "synthetic", "--K", "10", "--C", "0.3",
           "--lr", "0.05", "--rounds", "60", "--workers", "2", "--out", str(out), "--no-progress",
           "--address", "local"]  # a Ray of its own, not the module's  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and not (out / "checkpoint.pt").exists():
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert (out / "checkpoint.pt").exists()
    done_before = len(pd.read_csv(out / "history.csv"))
    assert done_before < 60
    r = subprocess.run([sys.executable, "-m", "fedray.cli", "run", "--resume", str(out), "--workers", "2", "--no-progress", "--address", "local"],
                       env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    full = run_local(ExperimentConfig(dataset="synthetic", K=10, C=0.3, lr=0.05, rounds=60), data=synthetic_data())
    h = pd.read_csv(out / "history.csv")
    assert list(h["round"]) == list(range(1, 61))
    assert h["test_accuracy"].tolist() == [x["test_accuracy"] for x in full.history]
