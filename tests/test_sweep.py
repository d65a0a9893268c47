"""Sweep files and real Ray Tune sweeps on a tiny synthetic grid (one local Ray for the module)."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import ray
import yaml

from fedray.config import ConfigError
from fedray.sweep import plan, run_sweep
from fedray.sweep_file import expand, load_sweep, lr_grid, trial_key

TINY = {
    "name": "tiny",
    "dataset": "synthetic",
    "model": "2nn",
    "partition": ["iid", "noniid"],
    "K": 10,
    "C": 0.2,
    "E": 1,
    "B": 10,
    "lr": {"values": [0.02, 0.05]},
    "target": 0.95,
    "max_rounds": 3,
    "workers": 0,
}


def test_lr_grid_is_the_papers_multiplicative_grid():
    g = lr_grid({"center": 0.1, "resolution": 6, "count": 13})
    assert len(g) == 13 and g[0] == pytest.approx(0.01) and g[6] == 0.1 and g[-1] == pytest.approx(1.0)
    assert g[7] / g[6] == pytest.approx(10 ** (1 / 6), rel=1e-5)
    assert lr_grid({"center": 0.1, "resolution": 3, "count": 3}) == pytest.approx([0.0464159, 0.1, 0.215443])
    assert lr_grid([0.1, 0.2]) == [0.1, 0.2]


def test_expand_is_the_cartesian_product_with_seeds():
    s = expand({**TINY, "E": [1, 5], "B": [10, "inf"], "seeds": 2})
    # 2 partitions x 2 E x 2 B x 2 lr x 2 seeds
    assert len(s.trials) == 32
    assert len({trial_key(c) for c in s.trials}) == 32
    assert all(c.rounds == 3 and c.stop_at_target for c in s.trials)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"learning_rate": 0.1}, r"unknown key\(s\) \['learning_rate'\]"),
        ({"lr": []}, r"lr: the grid is empty"),
        ({"lr": {"center": 0.1, "count": 3}}, r"lr: got keys"),
        ({"lr": {"center": 0.1, "resolution": 6, "count": 0}}, r"lr.count"),
        ({"B": [10, 0]}, r"B: got 0; allowed: an integer >= 1 or 'inf'"),
        ({"E": []}, r"E: the grid axis is empty"),
        ({"C": [0.1, 2]}, r"C: got 2.0; allowed: a number in \[0, 1\]"),
        ({"seeds": []}, r"seeds"),
        ({"worker_gpus": 1.5}, r"worker_gpus"),
        ({"rounds": 5}, r"max_rounds and rounds"),
        ({"fuse_lr": True, "workers": 1}, r"fuse_lr: true .* workers: 0 only"),
    ],
)
def test_bad_sweep_files_fail_before_ray(tmp_path, change, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**TINY, **change}))
    was_up = ray.is_initialized()
    with pytest.raises(ConfigError, match=message):
        load_sweep(p)
    assert ray.is_initialized() == was_up


def test_cli_rejects_bad_file_with_field_name_and_exit_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**TINY, "model": "resnet"}))
    r = subprocess.run([sys.executable, "-m", "fedray.cli", "sweep", str(p), "--storage", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "model: got 'resnet'; allowed: 2nn | cnn" in r.stderr
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_tiny_sweep_writes_results_and_more_trials_than_cpus_complete(local_ray, tmp_path):
    sweep = expand(TINY)
    out = run_sweep(sweep, tmp_path / "tiny")
    # 4 one-CPU trials on 2 CPUs: they had to queue, and all finished.
    assert out["unfinished"] == 0 and len(out["trials"]) == 4
    for cfg in sweep.trials:
        d = tmp_path / "tiny" / "trials" / trial_key(cfg)
        h = pd.read_csv(d / "history.csv")
        saved = json.loads((d / "config.json").read_text())
        assert saved["lr"] == cfg.lr and saved["partition"] == cfg.partition and saved["B"] == 10
        assert saved["meta"]["runtime"]["threads"] == 1  # worker_cpus: 1, so one torch thread
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] in ("completed", "reached")
        assert list(h["round"]) == list(range(1, len(h) + 1)) and len(h) <= 3
        assert h["test_accuracy"].between(0, 1).all() and (h["bytes_down"] == 2 * 199_210 * 4).all()
    events = list((tmp_path / "tiny" / "tune").rglob("events.out.tfevents*"))
    assert len(events) >= 4  # TensorBoard files from Tune, one per trial
    # Running it again without --resume would overwrite: refused.
    with pytest.raises(FileExistsError, match="--resume"):
        plan(sweep, tmp_path / "tiny", resume=False)
    assert plan(sweep, tmp_path / "tiny", resume=True) == []


def _wait_until_files_settle(d, quiet_s=2.0, timeout_s=60.0):
    """Until no file below d has changed size or mtime for quiet_s seconds."""
    snap = lambda: {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}  # noqa: E731
    last, since, end = snap(), time.time(), time.time() + timeout_s
    while time.time() - since < quiet_s and time.time() < end:
        time.sleep(0.2)
        if (now := snap()) != last:
            last, since = now, time.time()


def test_interrupted_sweep_resumes_only_unfinished_trials(local_ray, tmp_path):
    spec = {**TINY, "partition": "iid", "lr": {"values": [0.2, 0.001, 0.0011, 0.0012]},
            "target": 0.9, "max_rounds": 150}  # fmt: skip
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "fedray.cli", "sweep", str(f), "--storage", str(storage)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    trials = storage / "trials"
    deadline = time.time() + 240
    try:
        # lr 0.2 reaches the target within a few rounds; the tiny ones would run all 150 rounds,
        # but each is stopped as behind once evaluated past 0.2's crossing.
        while not list(trials.glob("*/summary.json")) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _wait_until_files_settle(trials)  # a trial process may outlive its driver by a moment
    finished = {p.parent.name: p.parent for p in trials.glob("*/summary.json")}
    assert finished, "no trial finished before the deadline"
    before = {k: {f.name: f.read_bytes() for f in d.iterdir()} for k, d in finished.items()}
    sweep = load_sweep(f)
    todo = plan(sweep, storage, resume=True)
    assert 0 < len(todo) < 4 and not {d.name for _, d in todo} & set(finished)

    out = run_sweep(sweep, storage, resume=True)
    assert out["unfinished"] == 0
    for k, files in before.items():  # finished trials untouched, byte for byte
        assert {f.name: f.read_bytes() for f in (trials / k).iterdir()} == files
    for cfg in sweep.trials:
        h = pd.read_csv(trials / trial_key(cfg) / "history.csv")
        assert list(h["round"]) == list(range(1, len(h) + 1))
    # The killed sitting is dated by the line it wrote at its start; the resumed one by two.
    log = [json.loads(line) for line in (storage / "sweep_runs.jsonl").read_text().splitlines()]
    assert [sorted(e) for e in log] == [["started", "trials_to_run"]] * 2 + [["started", "trials_to_run", "unfinished", "wall_s"]]
    assert log[0]["trials_to_run"] == 4 and log[1]["started"] == log[2]["started"] > log[0]["started"]
    assert log[2]["trials_to_run"] == len(todo) and log[2]["wall_s"] > 0 and log[2]["unfinished"] == 0


def test_unfinished_trial_without_checkpoint_restarts_and_keeps_its_earlier_history(local_ray, tmp_path, capsys):
    # As on another machine from committed results: history and config, no summary, no checkpoint.
    sweep = expand({**TINY, "partition": "iid", "lr": 0.05})
    storage = tmp_path / "s"
    run_sweep(sweep, storage)
    d = storage / "trials" / trial_key(sweep.trials[0])
    (d / "summary.json").unlink()
    (d / "checkpoint.pt").unlink()
    earlier = (d / "history.csv").read_bytes()
    assert [d.name for _, d in plan(sweep, storage, resume=True)] == [d.name]

    out = run_sweep(sweep, storage, resume=True)
    assert out["unfinished"] == 0 and json.loads((d / "summary.json").read_text())["status"] in ("completed", "reached")
    kept = list(d.glob("history.before_restart_*.csv"))
    assert len(kept) == 1 and kept[0].read_bytes() == earlier
    assert list(pd.read_csv(d / "history.csv")["round"]) == list(range(1, len(pd.read_csv(kept[0])) + 1))
    assert f"{d.name}: no checkpoint.pt, restarts from round 0" in capsys.readouterr().out


def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_logs_the_sittings_end(tmp_path):
    # What `ray job stop` or a batch scheduler sends: Tune stops the trials, the sweep logs its end.
    spec = {**TINY, "partition": "iid", "lr": {"values": [0.001]}, "max_rounds": 10_000}
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "fedray.cli", "sweep", str(f), "--storage", str(storage)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    history = storage / "trials" / trial_key(expand(spec).trials[0]) / "history.csv"
    deadline = time.time() + 120
    try:
        while not (history.exists() and len(history.read_text().splitlines()) > 3) and time.time() < deadline:
            time.sleep(0.2)
        assert time.time() < deadline, "the trial evaluated no round before the deadline"
        os.kill(proc.pid, signal.SIGTERM)  # the driver alone, as a scheduler would
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1 and "1 trial did not finish; run again with --resume" in err
    last = pd.read_csv(history)["round"].iloc[-1]  # the summary names how far the stopped trial got
    assert f"{history.parent.name}: unfinished at round {last}, rounds to target —" in out
    start, end = [json.loads(line) for line in (storage / "sweep_runs.jsonl").read_text().splitlines()]
    assert end["started"] == start["started"] and end["unfinished"] == 1 and end["wall_s"] > 0
    assert len(plan(load_sweep(f), storage, resume=True)) == 1  # resumable, nothing lost


def test_trials_with_driver_and_worker_actors_queue_without_hanging(local_ray, tmp_path):
    # Each trial: a driver actor and one ClientWorker, reserving 1 CPU in all; 3 trials on 2 CPUs.
    sweep = expand({**TINY, "partition": "iid", "lr": {"values": [0.02, 0.05, 0.1]}, "workers": 1})
    out = run_sweep(sweep, tmp_path / "w")
    assert out["unfinished"] == 0
    for cfg in sweep.trials:
        meta = json.loads((tmp_path / "w" / "trials" / trial_key(cfg) / "config.json").read_text())["meta"]
        assert meta["runtime"]["engine"] == "ray" and meta["runtime"]["workers"] == 1 and meta["runtime"]["threads"] == 1


def test_fused_sweep_writes_one_trial_dir_per_lr(local_ray, tmp_path):
    sweep = expand({**TINY, "fuse_lr": True})
    out = run_sweep(sweep, tmp_path / "f")
    assert out["unfinished"] == 0 and len(out["trials"]) == 4
    tune_trials = [p for p in (tmp_path / "f" / "tune").glob("*/*") if p.is_dir()]
    assert len(tune_trials) == 2  # one Tune trial per setting, each training both lrs
    for cfg in sweep.trials:
        d = tmp_path / "f" / "trials" / trial_key(cfg)
        assert json.loads((d / "config.json").read_text())["meta"]["runtime"] == {"engine": "fused", "lrs": 2, "threads": 1}
        assert len(pd.read_csv(d / "history.csv")) >= 1


@pytest.mark.parametrize("workers", [0, 1])  # trained in the trial's process, or by a driver actor
def test_a_rate_behind_a_finished_better_rate_is_stopped_and_not_run_again(local_ray, tmp_path, capsys, workers):
    # 0.2 reaches 90% in a few rounds; 1e-5 barely moves and would use its 5000-round budget.
    spec = {**TINY, "partition": "iid", "lr": {"values": [0.2, 1e-5]}, "target": 0.9, "max_rounds": 5000,
            "workers": workers}  # fmt: skip
    sweep = expand(spec)
    storage = tmp_path / "s"
    out = run_sweep(sweep, storage)
    fast, slow = (storage / "trials" / trial_key(c) for c in sweep.trials)
    best = json.loads((fast / "summary.json").read_text())
    assert best["status"] == "reached"
    h = pd.read_csv(slow / "history.csv")
    # Stopped below the target once evaluated past the crossing of 0.2, long before its budget.
    assert json.loads((slow / "summary.json").read_text())["status"] == "behind"
    assert h["test_accuracy"].max() < 0.9 and best["rounds_to_target"] <= h["round"].iloc[-1] < 5000
    assert out["unfinished"] == 0 and [r["behind"] for r in out["trials"]] == [False, True]
    assert plan(sweep, storage, resume=True) == []
    # As committed from another machine (no summary, no checkpoint): still skipped, history kept.
    (slow / "summary.json").unlink()
    (slow / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert plan(sweep, storage, resume=True) == []
    assert f"{slow.name}: unfinished, already behind the best rate of its setting; not run again" in capsys.readouterr().out
    assert not list(slow.glob("history.before_restart_*")) and len(pd.read_csv(slow / "history.csv")) == len(h)


def test_a_seed_sweep_in_its_own_storage_stops_behind_a_sibling_storages_best(local_ray, tmp_path):
    # Two storages side by side, as seed sweeps are kept in docs/results: the sibling holds the
    # setting's best (0.2 reaches 90% in a few rounds); the slow rate, alone in its storage, is
    # behind only when the check reads both, i.e. with --compare-with their parent.
    spec = {**TINY, "partition": "iid", "target": 0.9, "max_rounds": 5000}
    fast, slow = expand({**spec, "lr": {"values": [0.2]}}), expand({**spec, "lr": {"values": [1e-5]}})
    run_sweep(fast, tmp_path / "best")
    best = json.loads((tmp_path / "best" / "trials" / trial_key(fast.trials[0]) / "summary.json").read_text())
    assert best["status"] == "reached"
    storage, other = tmp_path / "seeds", tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ConfigError, match=r"--compare-with: .* does not contain the storage"):
        run_sweep(slow, storage, compare_with=other)
    assert not storage.exists()  # refused before anything was written
    out = run_sweep(slow, storage, compare_with=tmp_path)
    d = storage / "trials" / trial_key(slow.trials[0])
    h = pd.read_csv(d / "history.csv")
    assert json.loads((d / "summary.json").read_text())["status"] == "behind"
    assert best["rounds_to_target"] <= h["round"].iloc[-1] < 5000 and out["trials"][0]["behind"]
    # As committed (no summary, no checkpoint): skipped only when judged among both storages.
    (d / "summary.json").unlink()
    (d / "checkpoint.pt").unlink()
    assert plan(slow, storage, resume=True, compare_with=tmp_path) == []
    assert [x for _, x in plan(slow, storage, resume=True)] == [d]


def test_cli_rejects_a_compare_with_outside_the_storage_before_ray(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text(yaml.safe_dump(TINY))
    r = subprocess.run([sys.executable, "-m", "fedray.cli", "sweep", str(p), "--storage", str(tmp_path / "s"),
                        "--compare-with", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--compare-with:" in r.stderr and "allowed: a directory that contains --storage" in r.stderr
    assert not (tmp_path / "s").exists()
