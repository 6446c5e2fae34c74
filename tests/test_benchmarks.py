"""Helpers of the benchmark scripts whose mistakes would silently change a reported figure."""

import sys
from pathlib import Path

import numpy as np
import pytest

from nas.config import compose, to_yaml
from nas.train import TrainModelConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import search_quality  # noqa: E402


def test_kendall_tau_matches_scipys_tau_b_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, 15).astype(float)  # few distinct values: many ties in both
        y = x + rng.integers(-2, 3, 15)
        assert search_quality.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_a_kept_run_is_reused_only_with_the_same_recipe(tmp_path):
    over = ["arch=l1", "data=digits", *search_quality.BUDGET]
    cfg = compose("train", over, TrainModelConfig)
    stored = tmp_path / "config.yaml"
    assert not search_quality.same_recipe(stored, cfg)  # no run there
    stored.write_text(to_yaml(cfg))
    assert search_quality.same_recipe(stored, cfg)
    longer = compose("train", [*over, "train.epochs=3"], TrainModelConfig)
    other_data = compose("train", [*over, "data.train_limit=20000"], TrainModelConfig)
    assert not search_quality.same_recipe(stored, longer)
    assert not search_quality.same_recipe(stored, other_data)
