"""`fedray run` end to end: real MNIST, the run directory, refusals, divergence, Ctrl-C, resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fedray.config import ExperimentConfig
from fedray.curves import rounds_to_target
from fedray.fedavg import ServerState
from fedray.local import run_local, synthetic_data
from fedray.runner import load_checkpoint, run_rounds

FEDRAY = [sys.executable, "-m", "fedray.cli"]


def fedray(*args, **kw):
    return subprocess.run([*FEDRAY, *args], capture_output=True, text=True, timeout=600, **kw)


def test_2nn_on_real_mnist_learns_and_writes_the_run_dir(tmp_path):
    out = tmp_path / "run"
    r = fedray("run", "--model", "2nn", "--partition", "iid", "--C", "0.1", "--E", "1", "--B", "10",
               "--lr", "0.1", "--rounds", "8", "--target", "0.9", "--out", str(out), "--no-progress")  # fmt: skip
    # The default engine is Ray, one worker per CPU.
    assert r.returncode == 0, r.stderr
    h = pd.read_csv(out / "history.csv")
    assert list(h["round"]) == list(range(1, 9))
    # Measured: 0.846 after one round, 0.937 after eight (lr 0.1, seed 0).
    assert h["test_accuracy"].iloc[0] > 0.7 and h["test_accuracy"].iloc[-1] > 0.92
    assert "rounds to 0.9: " in r.stdout and "not reached" not in r.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["B"] == 10 and cfg["meta"]["device"] == "cpu" and cfg["meta"]["versions"]["torch"]
    assert cfg["meta"]["runtime"]["engine"] == "ray" and cfg["meta"]["runtime"]["workers"] >= 1
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    # The same directory again: refused, and nothing in it changed.
    before = (out / "history.csv").read_bytes()
    r2 = fedray("run", "--rounds", "2", "--out", str(out), "--no-progress", "--workers", "0")
    assert r2.returncode == 2 and "--force" in r2.stderr
    assert (out / "history.csv").read_bytes() == before


def test_noniid_cnn_runs_on_cpu(tmp_path):
    r = fedray("run", "--model", "cnn", "--partition", "noniid", "--C", "0", "--E", "1", "--B", "10",
               "--lr", "0.05", "--rounds", "2", "--out", str(tmp_path / "cnn"), "--no-progress", "--workers", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    h = pd.read_csv(tmp_path / "cnn" / "history.csv")
    assert len(h) == 2 and h["test_loss"].map(math.isfinite).all()


def test_bad_flag_names_the_field(tmp_path):
    r = fedray("run", "--B", "0", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "B: got" in r.stderr and "allowed: an integer >= 1 or 'inf'" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "gpu0"])
def test_a_device_this_machine_lacks_is_refused_before_the_run_directory_exists(tmp_path, device):
    r = fedray("run", "--workers", "0", "--device", device, "--dataset", "synthetic", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and f"--device: got '{device}'" in r.stderr and "auto, cpu" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_divergence_is_recorded_not_a_crash(tmp_path):
    cfg = ExperimentConfig(dataset="synthetic", K=10, C=0.2, lr=1e6, rounds=20)
    res = run_local(cfg, tmp_path / "d", data=synthetic_data())
    assert res.status == "diverged" and res.state.round < 20
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"


def sigint_as_in_a_terminal():
    # A shell starts background jobs with SIGINT ignored and exec keeps that, so a suite run by
    # nohup or a CI runner would hand the run an ignored SIGINT: the run then finished its rounds
    # (rc 0) or outlived the 60 s wait. Ctrl-C in a terminal reaches a run whose SIGINT is default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after_first_checkpoint(out, sig, rounds, workers=0, preexec_fn=sigint_as_in_a_terminal):
    args = ["run", "--dataset", "synthetic", "--K", "10", "--C", "0.5", "--lr", "0.05", "--rounds", str(rounds),
            "--out", str(out), "--no-progress", "--workers", str(workers)]  # fmt: skip
    p = subprocess.Popen([*FEDRAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=preexec_fn, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "checkpoint.pt").exists():
            time.sleep(0.1)
        p.send_signal(sig)  # to the run alone, not its Ray processes, as `kill PID` would
        stdout, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:  # it ignored the signal: take it and the Ray it started down
            os.killpg(p.pid, signal.SIGKILL)
    return p, stdout


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_stops_a_run_as_ctrl_c_does(tmp_path, workers):
    # `ray job stop` and batch schedulers send SIGTERM: the run keeps its rounds and says so, also
    # when started in the background with SIGINT ignored, and on Ray, which sets its own handler.
    out = tmp_path / "t"
    p, stdout = interrupt_after_first_checkpoint(out, signal.SIGTERM, rounds=100_000, workers=workers,
                                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    assert p.returncode == 130 and "status: interrupted" in stdout, p.stderr
    state, history = load_checkpoint(out)
    assert state.round == len(history) >= 10 and [r["round"] for r in history] == list(range(1, len(history) + 1))
    if workers == 0:  # in-process, the round being trained is dropped and history.csv ends at the checkpoint
        assert pd.read_csv(out / "history.csv")["round"].iloc[-1] == state.round
    # Synthetic data crosses 0.97 within a few rounds; the summary interpolates it as a finished run does.
    summary = json.loads((out / "summary.json").read_text())
    rounds, acc = [r["round"] for r in history], [r["test_accuracy"] for r in history]
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == state.round
    assert summary["rounds_to_target"] == pytest.approx(rounds_to_target(rounds, acc, 0.97))
    assert summary["rounds_to_target"] < 10
    assert f"rounds to 0.97: {summary['rounds_to_target']:.1f}" in stdout


def test_ctrl_c_keeps_the_history_and_resume_finishes_the_same(tmp_path):
    out = tmp_path / "i"
    p, stdout = interrupt_after_first_checkpoint(out, signal.SIGINT, rounds=400)
    assert p.returncode == 130 and "status: interrupted" in stdout
    h = pd.read_csv(out / "history.csv")
    assert 10 <= len(h) < 400
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    r = fedray("run", "--resume", str(out), "--no-progress", "--workers", "0")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "config.json").read_text())["meta"]  # the second sitting is on record
    assert [(e["round"], e["cpu"], e["device"], e["threads"]) for e in meta["resumed"]] == [
        (len(h), meta["cpu"], "cpu", meta["runtime"]["threads"])]  # fmt: skip
    resumed = pd.read_csv(out / "history.csv")
    full = run_local(ExperimentConfig(dataset="synthetic", K=10, C=0.5, lr=0.05, rounds=400), data=synthetic_data())
    assert list(resumed["round"]) == list(range(1, 401))
    assert resumed["test_accuracy"].tolist() == pytest.approx([r["test_accuracy"] for r in full.history], abs=0)


@pytest.mark.parametrize("at", ["evaluate", "on_row"])
def test_ctrl_c_during_round_14_saves_round_13_or_14_whole_and_resume_fills_the_gap(tmp_path, at):
    # Every client returns w + 1, so w_t = t: a saved state and its history can be checked by eye.
    cfg = ExperimentConfig(K=4, C=0.5, rounds=20, target=1.0)
    parts = [np.arange(k * 5, k * 5 + 5) for k in range(4)]

    def train(w, schedules, lrs):
        return {"w": torch.stack([w["w"] + 1] * len(schedules))}

    def evaluate(w, with_train_loss, stop_at=None):
        if at == "evaluate" and w["w"].item() == stop_at:
            raise KeyboardInterrupt
        return {"test_accuracy": w["w"].item() / 100, "test_loss": 1.0}

    def on_row(row):
        if at == "on_row" and row["round"] == 14:
            raise KeyboardInterrupt

    r = run_rounds(cfg, parts, train, lambda w, tl: evaluate(w, tl, 14), ServerState(0, {"w": torch.tensor(0.0)}),
                   out=tmp_path, on_row=on_row)  # fmt: skip
    saved = 13 if at == "evaluate" else 14
    assert r.status == "interrupted"
    state, history = load_checkpoint(tmp_path)
    assert state.round == saved and state.w["w"].item() == saved
    assert [h["round"] for h in history] == list(range(1, saved + 1))
    assert pd.read_csv(tmp_path / "history.csv")["round"].tolist() == list(range(1, saved + 1))
    r = run_rounds(cfg, parts, train, evaluate, state, history=history, out=tmp_path)
    assert r.status == "completed" and r.state.w["w"].item() == 20
    resumed = pd.read_csv(tmp_path / "history.csv")
    assert resumed["test_accuracy"].tolist() == pytest.approx([t / 100 for t in range(1, 21)])


@pytest.mark.parametrize("checkpoint_s, saved", [(float("inf"), 10), (0.0, 13)])
def test_a_run_killed_without_warning_resumes_from_its_last_timed_checkpoint(tmp_path, checkpoint_s, saved):
    # Tune stopping a trial, or a preempted node, kills the process mid-run: no except clause runs
    # and only checkpoints already written survive. They come every checkpoint_every (10) rounds,
    # and also once checkpoint_s seconds have passed (0 here: every evaluated round). w_t = t.
    cfg = ExperimentConfig(K=4, C=0.5, rounds=20, target=1.0)
    parts = [np.arange(k * 5, k * 5 + 5) for k in range(4)]

    def train(w, schedules, lrs):
        return {"w": torch.stack([w["w"] + 1] * len(schedules))}

    def evaluate(w, with_train_loss):
        return {"test_accuracy": w["w"].item() / 100, "test_loss": 1.0}

    def killed_at_13(row):
        if row["round"] == 13:
            raise SystemExit  # what a kill looks like to run_rounds: nothing it handles

    with pytest.raises(SystemExit):
        run_rounds(cfg, parts, train, evaluate, ServerState(0, {"w": torch.tensor(0.0)}), out=tmp_path,
                   checkpoint_s=checkpoint_s, on_row=killed_at_13)  # fmt: skip
    assert not (tmp_path / "summary.json").exists()
    state, history = load_checkpoint(tmp_path)
    assert state.round == saved and state.w["w"].item() == saved
    assert [h["round"] for h in history] == list(range(1, saved + 1))
    r = run_rounds(cfg, parts, train, evaluate, state, history=history, out=tmp_path)
    assert r.status == "completed" and r.state.w["w"].item() == 20
    assert pd.read_csv(tmp_path / "history.csv")["round"].tolist() == list(range(1, 21))


@pytest.mark.parametrize(
    "accuracy, collapse_rounds, status, last_round",
    [
        # Learns (50%), collapses to chance at round 2: rounds 2-6 are five at chance.
        ({1: 0.5}, 5, "diverged", 6),
        # Never above chance (a rate too small to have moved yet): slow, not diverged.
        ({}, 5, "completed", 30),
        # Dips to chance shorter than collapse_rounds (four rounds), then learning again.
        ({t: 0.1 if t in (5, 6, 7, 8) else 0.5 for t in range(1, 31)}, 5, "completed", 30),
        # collapse_rounds=0 (the default): only a non-finite loss stops a run.
        ({1: 0.5}, 0, "completed", 30),
    ],
)
def test_a_run_stuck_at_chance_after_learning_stops_as_diverged(tmp_path, accuracy, collapse_rounds, status, last_round):
    # w_t = t, and round t's accuracy is scripted (chance, 0.10, where the script is silent).
    cfg = ExperimentConfig(K=4, C=0.5, rounds=30, collapse_rounds=collapse_rounds)
    parts = [np.arange(k * 5, k * 5 + 5) for k in range(4)]

    def train(w, schedules, lrs):
        return {"w": torch.stack([w["w"] + 1] * len(schedules))}

    def evaluate(w, with_train_loss):
        return {"test_accuracy": accuracy.get(int(w["w"].item()), 0.10), "test_loss": 2.3}

    flags = []  # what a listener (Tune's on_row) is told: the stop comes on the last row, not after
    before = time.time()
    r = run_rounds(cfg, parts, train, evaluate, ServerState(0, {"w": torch.tensor(0.0)}), out=tmp_path,
                   on_row=lambda row: flags.append(row["diverged"]))  # fmt: skip
    assert r.status == status and r.state.round == last_round
    assert flags == [False] * (last_round - 1) + [status == "diverged"] and "diverged" not in r.history[-1]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == status and before <= summary["finished"] <= time.time()  # the report's spans
    assert pd.read_csv(tmp_path / "history.csv")["round"].tolist() == list(range(1, last_round + 1))


def test_collapse_rounds_must_be_a_count():
    with pytest.raises(ValueError, match=r"collapse_rounds: got -1; allowed: an integer >= 0"):
        ExperimentConfig(collapse_rounds=-1)


def test_behind_stops_a_run_below_the_target_and_is_not_asked_once_it_reached(tmp_path):
    # w_t = t and accuracy t/10: the target 0.5 is reached at round 5, then 2 extra rounds.
    cfg = ExperimentConfig(K=4, C=0.5, rounds=30, target=0.5, stop_at_target=True, extra_rounds=2)
    parts = [np.arange(k * 5, k * 5 + 5) for k in range(4)]

    def train(w, schedules, lrs):
        return {"w": torch.stack([w["w"] + 1] * len(schedules))}

    def evaluate(w, with_train_loss):
        return {"test_accuracy": w["w"].item() / 10, "test_loss": 1.0}

    asked = []

    def behind_from_round_3():
        asked.append(len(asked) + 1)
        return len(asked) >= 3

    r = run_rounds(cfg, parts, train, evaluate, ServerState(0, {"w": torch.tensor(0.0)}), out=tmp_path,
                   behind=behind_from_round_3)  # fmt: skip
    assert r.status == "behind" and r.state.round == 3 and math.isnan(r.rounds_to_target)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "behind"
    assert pd.read_csv(tmp_path / "history.csv")["round"].tolist() == [1, 2, 3]
    asked.clear()
    r = run_rounds(cfg, parts, train, evaluate, ServerState(0, {"w": torch.tensor(0.0)}), behind=lambda: asked.append(1))
    # Asked after rounds 1-4 only: a run that reached the target ends as reached, whatever others did.
    assert r.status == "reached" and r.state.round == 7 and r.rounds_to_target == 5.0 and len(asked) == 4
    # A run for its whole curve (stop_at_target off, e.g. the Figure 2 sweeps) is never stopped as behind.
    cfg = ExperimentConfig(K=4, C=0.5, rounds=6, target=0.9, stop_at_target=False)
    r = run_rounds(cfg, parts, train, evaluate, ServerState(0, {"w": torch.tensor(0.0)}), behind=lambda: True)
    assert r.status == "completed" and r.state.round == 6
