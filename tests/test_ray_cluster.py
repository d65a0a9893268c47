"""A real two-node Ray cluster on loopback (two `ray start --block` nodes of one CPU each): a run
with one worker per node gives the same history as the in-process engine."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from fedray.config import ExperimentConfig
from fedray.local import run_local, synthetic_data

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def two_nodes():
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false",
                             "--temp-dir", str(tmp / "h"), *common], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_nodes(address, 1, env)
        nodes.append(subprocess.Popen([RAY, "start", "--address", address, *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))  # fmt: skip
        _wait_for_nodes(address, 2, env)
        yield address, env
    finally:
        for p in reversed(nodes):  # --block nodes shut their Ray processes down on SIGTERM
            os.killpg(p.pid, 15)
        for p in reversed(nodes):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_for_nodes(address: str, n: int, env: dict, timeout: float = 90) -> None:
    code = f"import ray; ray.init(address='{address}', log_to_driver=False); print(sum(x['Alive'] for x in ray.nodes()))"
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        if r.returncode == 0 and r.stdout.strip().splitlines()[-1] == str(n):
            return
        time.sleep(1)
    raise TimeoutError(f"{n} Ray nodes did not come up at {address}")


def test_two_node_cluster_same_history(two_nodes, tmp_path):
    address, env = two_nodes
    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "fedray.cli", "run", "--dataset", "synthetic", "--K", "10", "--C", "0.3",
                        "--lr", "0.05", "--rounds", "5", "--workers", "2", "--address", address, "--out", str(out),
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    nodes = json.loads((out / "config.json").read_text())["meta"]["runtime"]["nodes"]
    assert len(nodes) == 2  # one worker on each node
    ref = run_local(ExperimentConfig(dataset="synthetic", K=10, C=0.3, lr=0.05, rounds=5), data=synthetic_data())
    assert pd.read_csv(out / "history.csv")["test_accuracy"].tolist() == [h["test_accuracy"] for h in ref.history]
