"""The report's method on hand-worked curves, and end-to-end reports of a tiny synthetic results dir.
Every expected number is worked out in the comment beside it."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedray import paper as P
from fedray.figures import grid_figures
from fedray.report import (best_lr, run_summary, edge_flag, load_results, main_report, monotone, paper_cells, rounds_to_target,
                           runs_behind, settings_table, summarize, u_of)  # fmt: skip

NaN = math.nan


# --- crossing and interpolation -------------------------------------------------------------


def test_monotone_is_the_running_max():
    assert list(monotone([0.5, 0.3, 0.7, 0.6])) == [0.5, 0.5, 0.7, 0.7]


@pytest.mark.parametrize(
    "rounds, acc, target, expected",
    [
        ([1, 2, 3], [0.5, 0.8, 0.9], 0.85, 2.5),  # 2 + (0.85-0.8)/(0.9-0.8) * 1
        ([1, 2, 3], [0.5, 0.85, 0.9], 0.85, 2.0),  # met exactly at an evaluated round
        ([5, 10], [0.97, 0.98], 0.97, 5.0),  # the first evaluated point already meets it: that round
        ([5, 10, 15], [0.8, 0.9, 1.0], 0.95, 12.5),  # eval every 5 rounds: 10 + 0.05/0.1 * 5
        # Non-monotone: the dip at round 3 is lifted to 0.9 (best so far), so the crossing of 0.92
        # lies between (3, 0.9) and (4, 0.95): 3 + 0.02/0.05 = 3.4; not between rounds 2 and 4.
        ([1, 2, 3, 4], [0.6, 0.9, 0.7, 0.95], 0.92, 3.4),
        ([1, 2, 3], [0.5, 0.96, 0.2], 0.97, NaN),  # never reached
    ],
)
def test_rounds_to_target(rounds, acc, target, expected):
    got = rounds_to_target(rounds, acc, target)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_u_is_E_n_over_KB():
    # 60000 examples over K=100 clients: 600 each; u = E * 600 / B, and E for B = inf.
    assert u_of(1, 10) == 60 and u_of(1, 50) == 12 and u_of(20, 50) == 240 and u_of(5, math.inf) == 5
    assert list(P.paper_table().query("table == 'table4' and partition == 'iid'")["u"]) == [1, 10, 12, 20, 60, 120, 240, 600, 1200]


# --- best learning rate and its grid --------------------------------------------------------


def _per_lr(lrs, reached, rounds, acc):
    return pd.DataFrame({"lr": lrs, "reached": reached, "rounds_mean": rounds, "acc_mean": acc})


def test_best_lr_fewest_rounds_ties_to_the_smaller_lr():
    t = _per_lr([0.01, 0.1, 1.0], [True, True, False], [30.0, 12.0, NaN], [0.97, 0.98, 0.99])
    assert best_lr(t)["lr"] == 0.1  # 12 < 30; lr 1.0 did not reach, whatever its accuracy
    assert best_lr(t.assign(rounds_mean=[12.0, 12.0, NaN]))["lr"] == 0.01  # tie: the smaller


def test_best_lr_when_none_reaches_is_the_highest_accuracy_never_a_diverged_one():
    t = _per_lr([0.01, 0.1, 1.0], [False] * 3, [NaN] * 3, [0.95, 0.96, NaN])  # 1.0 diverged: NaN
    assert best_lr(t)["lr"] == 0.1
    assert best_lr(t.assign(acc_mean=[0.96, 0.96, NaN]))["lr"] == 0.01  # tie: the smaller


def test_edge_flags():
    grid = [0.01, 0.1, 1.0]
    assert [edge_flag(grid, lr) for lr in grid] == ["lowest lr of grid", "", "highest lr of grid"]
    assert edge_flag([0.1, 1.0], 0.1) == "grid too small" and edge_flag([0.1], 0.1) == "grid too small"
    # Mid-grid, but every rate on one side still open: not yet known to be inside the grid.
    grid = [0.01, 0.03, 0.1, 0.3, 1.0]
    assert edge_flag(grid, 0.1, {0.3, 1.0}) == "no finished lr above it"
    assert edge_flag(grid, 0.1, {0.01, 0.03, 1.0}) == "no finished lr below it"
    assert edge_flag(grid, 0.1, {0.01, 0.03, 0.3, 1.0}) == "no finished lr below or above it"
    assert edge_flag(grid, 0.1, {0.03, 1.0}) == "" and edge_flag(grid, 1.0, {0.1}) == "highest lr of grid"


# --- synthetic run directories --------------------------------------------------------------


def _run(root: Path, name: str, lr: float, acc, seed=0, status="completed", test_loss=None, train_loss=None, **cfg):
    d = root / name
    d.mkdir(parents=True)
    conf = {"model": "2nn", "partition": "iid", "alpha": 0.5, "K": 100, "C": 0.1, "E": 1, "B": 10, "lr": lr,
            "lr_decay": 1.0, "rounds": 10, "target": 0.97, "eval_every": 1, "seed": seed, "train_loss": False,
            "meta": {"hostname": "testhost", "device": "cpu"}, **cfg}  # fmt: skip
    (d / "config.json").write_text(json.dumps(conf))
    n = len(acc)
    pd.DataFrame({"round": range(1, n + 1), "test_accuracy": acc, "test_loss": test_loss or [0.1] * n,
                  "train_loss": train_loss or [""] * n, "elapsed_s": np.arange(1, n + 1) * 0.5,
                  "bytes_up": 1}).to_csv(d / "history.csv", index=False)  # fmt: skip
    if status:
        (d / "summary.json").write_text(json.dumps({"status": status, "rounds_completed": n, "wall_s": n * 0.5}))


def test_seeds_mean_std_and_every_seed_must_reach(tmp_path):
    _run(tmp_path, "a_s0", 0.1, [0.96, 0.98])  # 1 + 0.01/0.02 = 1.5
    _run(tmp_path, "a_s1", 0.1, [0.95, 0.96, 0.98], seed=1)  # 2.5
    _run(tmp_path, "b_s0", 0.3, [0.98])  # 1.0, fewer rounds, but its second seed never reaches:
    _run(tmp_path, "b_s1", 0.3, [0.9, 0.9], seed=1)  # so lr 0.3 is out
    s = summarize(load_results(tmp_path)).iloc[0]
    assert s["best_lr"] == 0.1 and s["seeds"] == 2 and s["reached_seeds"] == 2
    assert s["rounds"] == pytest.approx(2.0)  # (1.5 + 2.5) / 2
    assert s["rounds_std"] == pytest.approx(math.sqrt(0.5))  # sample std: sqrt((0.25 + 0.25) / 1)
    assert s["edge"] == "grid too small"


def test_rates_are_compared_on_the_seeds_they_share(tmp_path):
    for seed, acc in enumerate([[0.96, 0.98], [0.95, 0.96, 0.98], [0.9, 0.9, 0.96, 0.98]]):
        _run(tmp_path, f"a_s{seed}", 0.1, acc, seed=seed)  # 1.5, 2.5, 3.5 rounds: mean 2.5
    _run(tmp_path, "b_s0", 0.3, [0.96, 0.975])  # seed 0 only: 1 + 0.01/0.015 = 1.67 < 2.5
    s = summarize(load_results(tmp_path)).iloc[0]
    # On seed 0, the one both rates ran, 0.1 (1.5) beats 0.3 (1.67); its number is over its 3 seeds.
    assert s["best_lr"] == 0.1 and s["seeds"] == 3 and s["rounds"] == pytest.approx(2.5)


def test_diverged_trials_are_listed_and_never_reach(tmp_path):
    _run(tmp_path, "ok", 0.1, [0.9, 0.95])
    _run(tmp_path, "div", 0.3, [0.98, 0.1], status="diverged")  # reached, then blew up: not reaching
    _run(tmp_path, "inf", 1.0, [0.97, 0.5], status=None, test_loss=[0.1, math.inf])  # no summary, loss inf
    runs = load_results(tmp_path)
    assert sorted(runs.loc[runs["diverged"], "run"]) == ["div", "inf"]
    s = summarize(runs).iloc[0]
    assert s["diverged"] == ["div", "inf"]
    assert np.isnan(s["rounds"]) and s["best_lr"] == 0.1 and s["edge"] == "lowest lr of grid"


def test_a_trial_still_running_is_reported_as_unfinished(tmp_path):
    _run(tmp_path, "done", 0.1, [0.9, 0.96, 0.98])  # reached at 2.5
    _run(tmp_path, "running", 0.3, [0.95], status=None)  # no summary.json yet
    runs = load_results(tmp_path)
    s = summarize(runs).iloc[0]
    assert s["unfinished"] == 1 and s["best_lr"] == 0.1 and s["rounds"] == pytest.approx(2.5)
    t1 = paper_cells(runs)["table1"]
    assert t1.loc[t1["ran"], "cell"].tolist() == ["2.5 (87) ×0.03 (1 trial unfinished) ⚑"]
    st = settings_table(summarize(runs), paper_cells(runs)).iloc[0]
    assert st["rounds to target"] == "2.5 (1/1 seeds); 1 trial unfinished"
    assert run_summary(runs, tmp_path)[1] == "2 runs (completed 1, unfinished 1)"  # no summary.json yet
    _run(tmp_path / "later", "running", 0.3, [0.95, 0.99], status="reached")  # it finished: a copy ran longer
    assert summarize(load_results(tmp_path)).iloc[0]["unfinished"] == 0


def test_an_unfinished_trial_already_behind_the_best_leaves_the_cell_final(tmp_path):
    _run(tmp_path, "low", 0.03, [0.9, 0.9, 0.9, 0.9])  # finished, never reached
    _run(tmp_path, "best", 0.1, [0.9, 0.96, 0.98])  # reached at 2 + 0.01/0.02 = 2.5
    _run(tmp_path, "high", 0.3, [0.5, 0.6], status=None)  # may still cross in (2, 3]: before 2.5?
    runs = load_results(tmp_path)
    s = summarize(runs).iloc[0]
    assert s["unfinished"] == 1 and s["behind"] == 0 and s["edge"] == "no finished lr above it"
    assert paper_cells(runs)["table1"].query("ran")["cell"].tolist() == ["2.5 (87) ×0.03 (1 trial unfinished) ⚑"]
    # One more round below the target: its crossing now comes after round 3 > 2.5, so it is out.
    pd.DataFrame({"round": [1, 2, 3], "test_accuracy": [0.5, 0.6, 0.7], "test_loss": 0.1}).to_csv(tmp_path / "high" / "history.csv")
    runs = load_results(tmp_path)
    s = summarize(runs).iloc[0]
    assert s["unfinished"] == 1 and s["behind"] == 1 and s["rounds"] == pytest.approx(2.5) and s["edge"] == ""
    assert paper_cells(runs)["table1"].query("ran")["cell"].tolist() == ["2.5 (87) ×0.03"]
    st = settings_table(summarize(runs), paper_cells(runs)).iloc[0]
    assert st["rounds to target"] == "2.5 (1/1 seeds); 1 trial unfinished, already behind the best"
    assert runs_behind(tmp_path) == {(tmp_path / "high").resolve()}  # what a sweep stops, or skips
    # A best rate with a second seed that 0.3 has not run: had 0.3 reached, best_lr would compare on
    # seed 0 alone, where 0.1 crossed at 2.5 and 0.3 after round 3, so 0.3 is still out.
    _run(tmp_path, "best_s1", 0.1, [0.96, 0.98], seed=1)  # 1.5: 0.1's mean is 2.0
    s = summarize(load_results(tmp_path)).iloc[0]
    assert s["behind"] == 1 and s["rounds"] == pytest.approx(2.0)
    assert runs_behind(tmp_path) == {(tmp_path / "high").resolve()}
    # A third rate, 0.2, that beats 0.1 on seed 0 alone (2.2 < 2.5) but not over seeds 0-1 (2.7 > 2.0):
    # 0.3 reaching, however late, would narrow the comparison to seed 0, make 0.2 the best and the
    # cell 2.7, so 0.3 stays open.
    _run(tmp_path, "mid", 0.2, [0.9, 0.965, 0.99])  # 2 + 0.005/0.025 = 2.2
    _run(tmp_path, "mid_s1", 0.2, [0.9, 0.9, 0.965, 0.99], seed=1)  # 3.2
    s = summarize(load_results(tmp_path)).iloc[0]
    assert s["best_lr"] == 0.1 and s["rounds"] == pytest.approx(2.0) and s["behind"] == 0
    assert runs_behind(tmp_path) == set()
    # Unless one of its finished seeds already missed: then 0.3 can never count as reached.
    _run(tmp_path, "high_s1", 0.3, [0.9, 0.9, 0.9], seed=1)
    s = summarize(load_results(tmp_path)).iloc[0]
    assert s["unfinished"] == 1 and s["behind"] == 1 and s["rounds"] == pytest.approx(2.0)  # (2.5 + 1.5) / 2


def test_a_rate_is_behind_once_its_bound_on_the_shared_seeds_exceeds_the_best(tmp_path):
    # Best 0.1: seed 0 at 2.5, seed 1 at 1.5, mean 2.0 on the seeds {0, 1} the reached rates share.
    _run(tmp_path, "best", 0.1, [0.9, 0.96, 0.98])
    _run(tmp_path, "best_s1", 0.1, [0.96, 0.98], seed=1)
    _run(tmp_path, "high", 0.3, [0.5, 0.6, 0.96, 0.98])  # reached at 3.5
    _run(tmp_path, "high_s1", 0.3, [0.5], seed=1, status=None)  # crosses after round 1, if ever
    # 0.3 at best (3.5 + 1) / 2 = 2.25 > 2.0, though seed 1 is not yet past the best's slowest seed (2.5).
    s = summarize(load_results(tmp_path)).iloc[0]
    assert s["unfinished"] == 1 and s["behind"] == 1 and s["rounds"] == pytest.approx(2.0)
    assert runs_behind(tmp_path) == {(tmp_path / "high_s1").resolve()}
    # Had seed 0 crossed at 2.5, seed 1 crossing at 1.2 would give 1.85 < 2.0: 0.3 can still win.
    pd.DataFrame({"round": [1, 2, 3], "test_accuracy": [0.5, 0.96, 0.98], "test_loss": 0.1}).to_csv(tmp_path / "high" / "history.csv")
    assert summarize(load_results(tmp_path)).iloc[0]["behind"] == 0 and runs_behind(tmp_path) == set()
    # Two evaluated rounds more, still below the target: (2.5 + 3) / 2 = 2.75 > 2.0, out again.
    pd.DataFrame({"round": [1, 2, 3], "test_accuracy": [0.5, 0.6, 0.7], "test_loss": 0.1}).to_csv(tmp_path / "high_s1" / "history.csv")
    assert runs_behind(tmp_path) == {(tmp_path / "high_s1").resolve()}


def test_a_sweep_committed_half_done_counts_its_missing_trials_as_unfinished(tmp_path):
    from fedray.sweep import _write_sweep_json
    from fedray.sweep_file import expand, trial_key

    spec = {"name": "half", "model": "2nn", "partition": "iid", "C": 0.1, "E": 1, "B": 10,
            "lr": {"values": [0.05, 0.1, 0.2]}, "target": 0.97, "max_rounds": 10, "workers": 0}  # fmt: skip
    sweep, storage = expand(spec), tmp_path / "half"
    done = next(c for c in sweep.trials if c.lr == 0.1)  # the one trial that finished and was committed
    d = storage / "trials" / trial_key(done)
    storage.mkdir()
    _write_sweep_json(storage, sweep, spec)
    runs = load_results(tmp_path)
    summary = summarize(runs)
    half = summary.iloc[0]  # nothing run yet: no best rate to flag at an edge
    assert half["unfinished"] == 3 and np.isnan(half["rounds"]) and half["edge"] == ""
    ax = grid_figures(runs, summary)["grid_2nn_iid_C0.1_E1_B10_t0.97.png"].axes[0]
    assert ax.get_xlim() == (0, 1) and [t.get_text() for t in ax.texts] == ["no rounds recorded yet"]
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(done.to_dict()))
    pd.DataFrame({"round": [1, 2, 3], "test_accuracy": [0.9, 0.96, 0.98], "test_loss": 0.1}).to_csv(d / "history.csv")
    (d / "summary.json").write_text(json.dumps({"status": "reached", "rounds_completed": 3, "wall_s": 1.5}))
    runs = load_results(tmp_path)
    assert sorted(runs["status"]) == ["not started", "not started", "reached"]
    summary = summarize(runs)
    s = summary.iloc[0]
    # Reached at 2 + 0.01/0.02 = 2.5 rounds, mid-grid; the two rates not run yet may still beat it,
    # so it is not yet known to be inside the grid.
    assert s["best_lr"] == 0.1 and s["rounds"] == pytest.approx(2.5) and s["grid"] == [0.05, 0.1, 0.2]
    assert s["unfinished"] == 2 and s["edge"] == "no finished lr below or above it" and s["n_trials"] == 3
    t1 = paper_cells(runs)["table1"]
    assert t1.loc[t1["ran"], "cell"].tolist() == ["2.5 (87) ×0.03 (2 trials unfinished) ⚑"]
    ax = grid_figures(runs, summary)["grid_2nn_iid_C0.1_E1_B10_t0.97.png"].axes[0]
    assert len(ax.texts) == 0 and ax.get_xlim()[1] >= 3  # the one history drawn, rounds 1 to 3
    lines = run_summary(runs, tmp_path)
    assert lines[1] == "1 run (reached 1)" and lines[-2].startswith("2 trials of sweep files not started")
    assert lines[-1] == f"{tmp_path}: 1 run, wall-clock sum 1.5 s, 3 rounds"  # the not-started add nothing
    info = main_report(tmp_path, tmp_path / "out")  # figures draw the empty curves without failing
    assert "grid_2nn_iid_C0.1_E1_B10_t0.97.png" in info["figures"] and "(2 trials unfinished)" in info["markdown"]
    _run(tmp_path, "elsewhere", 0.2, [0.9, 0.95])  # 0.2 ran outside the sweep's folder: not missing
    runs = load_results(tmp_path)
    assert summarize(runs).iloc[0][["unfinished", "edge"]].tolist() == [1, "no finished lr below it"]
    assert run_summary(runs, tmp_path)[4] == f"1 trial of sweep files not started (or not committed): half/trials/{trial_key(sweep.trials[0])}"


def test_a_trial_found_twice_counts_once(tmp_path):
    _run(tmp_path, "copy", 0.1, [0.96])  # the same (setting, lr, seed), stopped after 1 round
    _run(tmp_path, "long", 0.1, [0.96, 0.98])  # ... and run to 2 rounds: this one is kept (1.5)
    runs = load_results(tmp_path)
    assert runs.set_index("run")["duplicate"].to_dict() == {"copy": True, "long": False}
    s = summarize(runs).iloc[0]
    assert s["seeds"] == 1 and s["rounds"] == pytest.approx(1.5)


def test_speedups_against_each_tables_baseline():
    paper = P.paper_table()
    t4 = paper[(paper["table"] == "table4") & (paper["partition"] == "iid")]
    sgd = t4.index[(t4["E"] == 1) & np.isinf(t4["B"])][0]
    e1b10 = t4.index[(t4["E"] == 1) & (t4["B"] == 10)][0]
    c = P.cells(t4, {sgd: {"rounds": 300.0}, e1b10: {"rounds": 20.0}}).set_index(t4.index)
    # FedSGD 300 / 20 = 15.0x ours; the paper's 1468 / 92 = 15.96x; ratio 20 / 92 = 0.217.
    assert c.loc[e1b10, "cell"] == "20.0 (92) ×0.22; 15.0× (16.0×)"
    assert c.loc[sgd, "cell"] == "300.0 (1468) ×0.20"  # the baseline row has no speedup
    # Table 1 compares with C=0.0 in the same B column: 2NN IID B=10 is 316 / 87 = 3.6x, not 1455 / 87.
    t1 = paper[paper["table"] == "table1"]
    i = t1.index[(t1["model"] == "2nn") & (t1["partition"] == "iid") & (t1["C"] == 0.1) & (t1["B"] == 10)][0]
    assert P.cells(t1, {}).set_index(t1.index).loc[i, "paper_speedup"] == pytest.approx(316 / 87)


@pytest.fixture()
def results(tmp_path):
    r = tmp_path / "res"
    # 2NN IID C=0.1 E=1 B=10 (Table 1: 87, Table 4: 92), three learning rates:
    _run(r, "sweep/a1", 0.05, [0.90, 0.95, 0.96, 0.965, 0.968])  # never reaches 0.97
    _run(r, "sweep/a2", 0.1, [0.90, 0.96, 0.98, 0.97])  # 2 + (0.97-0.96)/(0.98-0.96) = 2.5
    _run(r, "sweep/a3", 0.2, [0.5, 0.2, 0.1], status="diverged")
    # Table 1's baseline C=0.0, B=10 (paper 316): 1 + 0.01/0.02 = 1.5 -> our speedup 1.5 / 2.5 = 0.6x.
    _run(r, "sweep/b1", 0.1, [0.96, 0.98], C=0.0)
    # FedSGD (Table 4 baseline, 1468; also Table 1 C=0.1 B=inf, 1474): 3 + 0.01/0.015 = 3.667
    # -> Table 4 speedup of E=1 B=10: 3.667 / 2.5 = 1.47x (paper 1468 / 92 = 16.0x).
    _run(r, "other/c1", 0.1, [0.9, 0.95, 0.96, 0.975], B="inf", train_loss=[0.5, 0.3, 0.2, 0.15])
    (r / "sweep" / "sweep_runs.jsonl").write_text(json.dumps({"started": 1.7e9, "wall_s": 90.0}) + "\n")
    return r


def test_write_report_end_to_end(results, capsys):
    snap = lambda: {p: p.is_file() and (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*")}  # noqa: E731
    before = snap()
    info = main_report(results)  # default out: results/report
    out = results / "report"
    assert info["out_dir"] == str(out)
    names = {"report.md", "report.html", "settings.csv", "table1.csv", "table2.csv", "table4.csv",
             "figure2_2nn_0.97.png", "figure6_2nn_0.97.png", "grid_2nn_iid_C0.1_E1_B10_t0.97.png",
             "grid_2nn_iid_C0_E1_B10_t0.97.png", "grid_2nn_iid_C0.1_E1_Binf_t0.97.png"}  # fmt: skip
    assert set(info["files"]) == names and {p.name for p in out.iterdir()} == names  # no tmp files left
    md = (out / "report.md").read_text()
    assert "| 0.1 | 3.7 (1474) ×0.00 ⚑ | 2.5 (87) ×0.03; 0.6× (3.6×) | not run (1796) | not run (664) |" in md
    assert "| FedAvg | 1 | 10 | 60 | 2.5 (92) ×0.03; 1.5× (16.0×) | not run (831) |" in md
    assert "## Table 2" not in md and "### CNN" not in md  # tables and blocks with no cell run are left out
    assert "- sweep/a3 (η=0.2)" in md  # the diverged trial
    assert "| 2nn iid C=0.1 E=1 B=10 | 0.97 | 60 | 0.1 | 0.05 0.1 0.2 |  | 2.5 (1/1 seeds) |" in md
    assert "87 (T1), 92 (T4)" in md and "×0.03 (T1), ×0.03 (T4)" in md
    assert "span 2023-11-14 22:13 UTC to 2023-11-14 22:14 UTC (90.0 s)" in md
    assert "5 runs (completed 4, diverged 1)" in md and "rounds computed: 18" in md  # 5+4+3+2+4 rounds
    assert "hardware: testhost (cpu): 5 runs" in md
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(info["figures"]) == 5 and "src=\"http" not in html
    t4 = pd.read_csv(out / "table4.csv")
    assert t4["ran"].sum() == 2 and t4.loc[t4["ran"], "ours_rounds"].round(4).tolist() == [3.6667, 2.5]
    assert "2.5 (87) ×0.03; 0.6× (3.6×)" in capsys.readouterr().out  # the tables went to stdout
    assert {p: v for p, v in snap().items() if p != out and out not in p.parents} == before  # only report/ written
    assert len(load_results(results)) == 5  # a report dir inside the results is not a run


def test_paper_tables_use_the_papers_target(tmp_path):
    # Stopped at 0.95 (quick sweeps do): Table 1 still asks for 97%, which it never reached.
    _run(tmp_path, "q", 0.1, [0.90, 0.96], target=0.95, stop_at_target=True)
    t1 = paper_cells(load_results(tmp_path))["table1"]
    assert t1.loc[t1["ran"], "cell"].tolist() == ["— (87) stopped at 95% ⚑"]
    assert summarize(load_results(tmp_path)).iloc[0]["rounds"] == pytest.approx(1 + 0.05 / 0.06)  # its own 95%


def test_cli_report(results, tmp_path, capsys):
    from fedray.cli import main

    assert main(["report", str(results), "--out", str(tmp_path / "o")]) == 0
    assert "### 2NN, E=1, target 97%" in capsys.readouterr().out and (tmp_path / "o" / "report.html").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2  # not a directory
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1  # a report saying so, and a failing exit


def test_notebook_runs_on_a_results_dir(results, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    # A kernel spec for this very interpreter, first on JUPYTER_PATH: a user-wide "python3" spec
    # pointing at another Python (without fedray) cannot shadow it.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                  "display_name": "fedray test", "language": "python"}))  # fmt: skip
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("FEDRAY_RESULTS", str(results))
    here = Path(__file__).parents[1] / "notebooks"
    nb = nbformat.read(here / "rounds_to_target.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(here)}}).execute()
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + "".join(map(str, o.get("data", {}).values())) for o in outs)
    assert "5 runs in" in text and "2.5 (87) ×0.03; 0.6× (3.6×)" in text
    assert sum("image/png" in o.get("data", {}) for o in outs) >= 3
    assert not (results / "report").exists()  # the notebook only reads


def test_run_summary_names_the_cpu_the_runs_were_timed_on(tmp_path):
    _run(tmp_path, "x", 0.1, [0.98], meta={"hostname": "h", "device": "cpu", "cpu": "AMD EPYC, 2 CPUs"})
    assert "hardware: h (cpu; AMD EPYC, 2 CPUs): 1 run" in run_summary(load_results(tmp_path), tmp_path)[0]


def test_cpu_name_is_model_count_and_the_isa_torch_runs_on():
    import os

    import torch

    from fedray.runner import cpu_name

    name, count, isa = cpu_name().rsplit(", ", 2)  # e.g. "AMD EPYC", "2 CPUs", "AVX512"
    assert name and count == f"{os.cpu_count()} CPUs" and isa == torch.backends.cpu.get_cpu_capability() != ""


def test_a_run_resumed_on_another_cpu_names_both(tmp_path):
    resumed = [{"round": 10, "cpu": "Intel Xeon, 2 CPUs"}, {"round": 20, "cpu": "AMD EPYC, 2 CPUs"},
               {"round": 30, "cpu": "Intel Xeon, 2 CPUs"}]  # fmt: skip
    _run(tmp_path, "x", 0.1, [0.98], meta={"hostname": "h", "device": "cpu", "cpu": "AMD EPYC, 2 CPUs", "resumed": resumed})
    _run(tmp_path, "y", 0.2, [0.98], meta={"hostname": "h", "device": "cpu", "cpu": "AMD EPYC, 2 CPUs",
                                           "resumed": [{"round": 5, "cpu": "AMD EPYC, 2 CPUs"}]})  # fmt: skip
    line = run_summary(load_results(tmp_path), tmp_path)[0]
    assert "h (cpu; AMD EPYC, 2 CPUs): 1 run" in line  # resumed on the same CPU: nothing to add
    assert "h (cpu; AMD EPYC, 2 CPUs, resumed on Intel Xeon, 2 CPUs): 1 run" in line


def test_a_sitting_still_running_spans_to_its_last_finished_trial(tmp_path):
    # Its sweep log has only a start line; the trials it finished say when (summary.json).
    t = 1.7e9  # 2023-11-14 22:13:20 UTC
    _run(tmp_path, "sw/x", 0.1, [0.98])
    s = json.loads((tmp_path / "sw" / "x" / "summary.json").read_text())
    (tmp_path / "sw" / "x" / "summary.json").write_text(json.dumps({**s, "finished": t + 3600}))
    _run(tmp_path, "sw/y", 0.2, [0.9], status=None)  # still running: no summary.json
    (tmp_path / "sw" / "sweep_runs.jsonl").write_text(json.dumps({"started": t, "trials_to_run": 2}) + "\n")
    line = run_summary(load_results(tmp_path), tmp_path)[-1]
    assert line.endswith("span 2023-11-14 22:13 UTC to 2023-11-14 23:13 UTC (60.0 min)")


def test_a_sweep_over_several_sittings_says_so(tmp_path):
    _run(tmp_path, "sw/x", 0.1, [0.98])
    t = 1.7e9  # 2023-11-14 22:13:20 UTC
    log = [{"started": t, "trials_to_run": 1},  # killed: no end line
           {"started": t + 86400, "trials_to_run": 1}, {"started": t + 86400, "wall_s": 600.0},
           {"started": t + 2 * 86400, "wall_s": 300.0}]  # an older log with only the end line  # fmt: skip
    (tmp_path / "sw" / "sweep_runs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    line = run_summary(load_results(tmp_path), tmp_path)[-1]
    assert line.endswith("span 2023-11-14 22:13 UTC to 2023-11-16 22:18 UTC (48.1 h) over 3 sittings, "
                         "2 of which logged an end (15.0 min in all)")  # 2 days + 300 s; 600 + 300 s
    (tmp_path / "sw" / "sweep_runs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log[:2]))
    assert run_summary(load_results(tmp_path), tmp_path)[-1].endswith("over 2 sittings, none of which logged an end")
