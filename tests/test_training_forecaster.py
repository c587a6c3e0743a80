"""kpflow.training.forecaster: the balanced score and the checkpoint it selects.

The validation scores are scripted (``evaluate`` replaced), so which epoch is best is known
exactly; the model is the tiny stand-in of test_train_cli.py.
"""

import json
import os

import pytest
from test_train_cli import TINY, TINY_ENTRY, tiny_config

from kpflow import checkpoint, forecast
from kpflow.training import forecaster as train_lib

# Validation scores of three epochs (baselines 1.0 and 2.0). In each, another ratio is the worst:
# epoch 1 point accuracy (mae_mean / hold-last), epoch 2 sharpness (mae_best / hold-last),
# epoch 3 calibration (energy / random walk). Epoch 1 has the lowest energy score and epoch 3
# the lowest MAEs, but epoch 2 the lowest balanced score.
SCRIPTED = [
    {"energy_score": 1.0, "mae_mean": 1.3, "mae_best": 0.8, "mae_hold_last": 1.0, "energy_random_walk": 2.0},
    {"energy_score": 1.6, "mae_mean": 0.8, "mae_best": 0.9, "mae_hold_last": 1.0, "energy_random_walk": 2.0},
    {"energy_score": 2.4, "mae_mean": 0.7, "mae_best": 0.6, "mae_hold_last": 1.0, "energy_random_walk": 2.0},
]
BALANCED = [1.3, 0.9, 1.2]


@pytest.mark.parametrize("epoch", range(3))
def test_balanced_score_is_the_worst_of_three_ratios(epoch):
    assert train_lib.balanced_score(SCRIPTED[epoch]) == pytest.approx(BALANCED[epoch])


def test_best_checkpoint_is_the_epoch_with_the_lowest_balanced_score(tmp_path, monkeypatch):
    monkeypatch.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)
    epochs = iter(SCRIPTED)

    def scripted_evaluate(*args):
        scores = dict(next(epochs))
        return {**scores, "balanced": train_lib.balanced_score(scores)}

    monkeypatch.setattr(train_lib, "evaluate", scripted_evaluate)
    config = tiny_config(epochs=3, steps=1)
    assert config.train.select_metric == "balanced"
    workdir = str(tmp_path / "run")
    best = train_lib.train_and_evaluate(config, workdir)

    assert (best["epoch"], best["score"]) == (2, pytest.approx(0.9))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["val/balanced"] for line in f] == pytest.approx(BALANCED)
    trained = checkpoint.load_trained(workdir, which="best")
    assert trained.step == best["step"] == 2 and trained.meta["epoch"] == 2
    assert trained.meta["best"]["epoch"] == 2

    # Another metric picks another epoch.
    epochs = iter(SCRIPTED)
    config.train.select_metric = "energy_score"
    assert train_lib.train_and_evaluate(config, str(tmp_path / "by_energy"))["epoch"] == 1
