"""A fused learning-rate grid equals the separate runs it replaces."""

import dataclasses

import pandas as pd
import pytest
import torch

from fedray.config import ExperimentConfig
from fedray.fused import run_fused
from fedray.local import run_local, synthetic_data


@pytest.mark.parametrize("B", [10, float("inf")])
def test_fused_grid_equals_separate_runs(tmp_path, B):
    data = synthetic_data()
    base = ExperimentConfig(dataset="synthetic", K=10, C=0.3, E=2, B=B, rounds=6, target=0.8,
                            stop_at_target=True, extra_rounds=1)  # fmt: skip
    cfgs = [dataclasses.replace(base, lr=lr) for lr in (0.01, 0.05, 0.2)]
    fused = run_fused(cfgs, [tmp_path / f"f{i}" for i in range(3)], data=data)
    for i, c in enumerate(cfgs):
        sep = run_local(c, tmp_path / f"s{i}", data=data)
        assert fused[i].status == sep.status and fused[i].state.round == sep.state.round
        assert [h["test_accuracy"] for h in fused[i].history] == [h["test_accuracy"] for h in sep.history]
        for k, v in sep.state.w.items():
            assert torch.allclose(fused[i].state.w[k], v, atol=1e-6, rtol=0)
        a, b = pd.read_csv(tmp_path / f"f{i}" / "history.csv"), pd.read_csv(tmp_path / f"s{i}" / "history.csv")
        assert a["test_accuracy"].tolist() == b["test_accuracy"].tolist()
    if B == 10:  # the fast learning rate reached the target and left the stack early
        assert fused[2].status == "reached" and fused[2].state.round < fused[0].state.round


def test_fused_rejects_settings_that_differ_beyond_lr():
    with pytest.raises(ValueError, match="lr only"):
        run_fused([ExperimentConfig(dataset="synthetic"), ExperimentConfig(dataset="synthetic", E=2)])
