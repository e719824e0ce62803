"""grid_search: every trial recorded, best chosen on validation, test users never read."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

import recvae.tuning.scoring as tuning_scoring
from recvae.data.splits import HeldOut, strong_generalization
from recvae.data.synthetic import SyntheticConfig, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models.baselines import EASE, Popularity
from recvae.tuning import GridSearchResult, grid_search, parameter_grid


pytestmark = pytest.mark.usefixtures("one_blas_thread")


class _Untouchable:
    """Stands in for split.test: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"grid_search read split.test.{name}")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=600, n_items=300, seed=1))
    return strong_generalization(data, 60)


def test_records_every_trial_and_picks_the_best_on_validation(split, monkeypatch):
    calls = []

    def spy(model, split_, which="test", **kwargs):
        calls.append(which)
        return evaluate(model, split_, which, **kwargs)

    monkeypatch.setattr(tuning_scoring, "evaluate", spy)
    guarded = replace(split, test=_Untouchable())
    grid = {"l2": [1.0, 300.0, 1e6]}
    result = grid_search(EASE, grid, guarded, progress=False)

    assert isinstance(result, GridSearchResult)
    assert calls == ["validation"] * 3
    trials = result.trials
    assert list(trials["l2"]) == grid["l2"]
    assert {"ndcg@100", "std_err", "n_users", "fit_seconds", "eval_seconds"} <= set(trials.columns)
    assert (trials[["fit_seconds", "eval_seconds"]] >= 0).all().all()
    best = int(trials["ndcg@100"].idxmax())
    assert result.best_params == {"l2": grid["l2"][best]}
    assert result.best_score == trials["ndcg@100"].max()
    assert result.best_model.l2 == grid["l2"][best]
    again = evaluate(result.best_model, split, "validation", ks=(100,), metrics=("ndcg",))["ndcg@100"]
    assert again == pytest.approx(result.best_score)


def test_product_order_and_first_of_ties(split):
    result = grid_search(lambda a, b: Popularity(), {"a": [1, 2], "b": ["x", "y"]}, split, progress=False)
    assert list(zip(result.trials["a"], result.trials["b"])) == [(1, "x"), (1, "y"), (2, "x"), (2, "y")]
    assert result.best_params == {"a": 1, "b": "x"}  # all tie: the first wins


def test_other_metric_and_numpy_grid(split):
    result = grid_search(EASE, {"l2": np.array([50.0, 500.0])}, split, metric="recall@20", progress=False)
    assert "recall@20" in result.trials.columns and result.metric == "recall@20"
    assert result.best_params["l2"] in (50.0, 500.0)


def test_no_finite_validation_score_is_an_error(split):
    v = split.validation
    empty = HeldOut(v.fold_in, sp.csr_matrix(v.target.shape, dtype=np.float32), v.user_ids)
    with pytest.raises(ValueError, match="no targets"):
        grid_search(lambda dummy: Popularity(), {"dummy": [0]}, replace(split, validation=empty), progress=False)


@pytest.mark.parametrize(
    "grid, metric, error",
    [
        ([("l2", [1.0])], "ndcg@100", TypeError),
        ({"l2": 5.0}, "ndcg@100", TypeError),
        ({"l2": "abc"}, "ndcg@100", TypeError),
        ({"l2": []}, "ndcg@100", ValueError),
        ({"l2": [1.0]}, "ndcg", ValueError),
        ({"l2": [1.0]}, "auc@10", ValueError),
        ({"std_err": [1.0]}, "ndcg@100", ValueError),
    ],
)
def test_bad_arguments(split, grid, metric, error):
    with pytest.raises(error):
        grid_search(EASE, grid, split, metric=metric, progress=False)


def test_parameter_grid_is_the_product():
    assert parameter_grid({"x": [1, 2], "y": [3]}) == [{"x": 1, "y": 3}, {"x": 2, "y": 3}]


def test_empty_grid_is_one_trial_with_the_defaults():
    assert parameter_grid({}) == [{}]
    with pytest.raises(TypeError, match="dict"):
        parameter_grid([("k", [1])])
