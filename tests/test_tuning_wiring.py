"""The searches' wiring (``recvae.tuning``): which trial a search chooses, in which direction it optimises,
how it samples a log range or a stepped range, when it prunes, and which edges it reports.

Oracles of their own: the models here fit nothing, and a validation score is a known function of their
parameters (``recvae.tuning.scoring.evaluate`` is replaced by that function), so the best trial, the
sampled values and every pruning decision are computed by hand from the trials table. The enqueued default
trial is never the best one, so a search that optimises the wrong way, or samples the wrong values, chooses
another.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna  # in the dev extra
import pandas as pd
import pytest

import recvae.tuning.scoring as tuning_scoring
from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models.base import Recommender
from recvae.models.mult_vae import TorchVAERecommender
from recvae.tuning import grid_edges, grid_search, optuna_search, reselect_over_seeds

METRIC = "ndcg@100"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=120, n_items=30, seed=2)), 10)


class Scored(Recommender):
    """A model whose validation score is ``objective(**params)``; ``fit`` learns nothing."""

    objective = staticmethod(lambda **params: 0.0)
    defaults: dict = {}

    def __init__(self, **params) -> None:
        self.params = {**self.defaults, **params}
        self.fits = 0

    def get_params(self) -> dict:
        return dict(self.params)

    def value(self) -> float:
        return float(self.objective(**self.params))

    def fit(self, train, validation=None):
        self.fits += 1
        return self

    def score(self, user_rows):
        raise AssertionError("the searches here score through the replaced evaluate")

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        raise NotImplementedError


def scored(objective, **defaults) -> type[Scored]:
    return type("Model", (Scored,), {"objective": staticmethod(objective), "defaults": defaults})


@pytest.fixture(autouse=True)
def scores_by_objective(monkeypatch):
    """``recvae.tuning.scoring.evaluate`` answers each model's ``value()`` as every metric asked, on the validation
    users only."""

    def evaluate(model, split, which="test", *, ks=(100,), metrics=("ndcg",), **kwargs):
        assert which == "validation"
        names = [f"{m}@{k}" for m in metrics for k in ks]
        value = model.value()
        summary = pd.DataFrame({"mean": value, "std_err": 0.0, "n_users": 10}, index=names)
        return SimpleNamespace(summary=summary)

    monkeypatch.setattr(tuning_scoring, "evaluate", evaluate)


# ---------------------------------------------------------------------- grid search: the argmax of a known function
def test_grid_search_picks_the_argmax_of_a_known_function_with_keys_out_of_alphabetical_order(split):
    # width varies slowest (first key), alpha fastest; the best (2, 0.5) is neither the first nor the last trial.
    def objective(width, alpha):
        return -((width - 2) ** 2) + alpha

    grid = {"width": [1, 2, 4], "alpha": [0.0, 0.5]}
    result = grid_search(scored(objective), grid, split, progress=False)
    trials = result.trials
    assert list(zip(trials["width"], trials["alpha"])) == [(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5), (4, 0.0), (4, 0.5)]
    for _, row in trials.iterrows():  # every row's score is its own parameters' value
        assert row[METRIC] == objective(row["width"], row["alpha"])
    assert result.best_params == {"width": 2, "alpha": 0.5} and result.best_score == 0.5
    assert result.best_model.params == {"width": 2, "alpha": 0.5}
    # the edges are the chosen combination's (width in the middle, alpha at its top), not the last one's
    assert result.edges == {"width": None, "alpha": "high"} == grid_edges(grid, {"width": 2, "alpha": 0.5})


def test_grid_search_keeps_the_first_of_equal_scores_and_the_best_not_the_last(split):
    result = grid_search(scored(lambda c: {1: 0.2, 2: 0.7, 3: 0.7, 4: 0.1}[c]), {"c": [1, 2, 3, 4]}, split,
                         progress=False)
    assert result.best_params == {"c": 2} and result.best_model.params == {"c": 2} and result.best_score == 0.7
    assert result.edges == {"c": None}


# ---------------------------------------------------------------------- optuna: direction, sampling
def test_tpe_moves_towards_higher_scores_from_a_default_that_is_not_the_best(split):
    """Score = x on [0, 1], default x = 0.5 (the enqueued first trial). After its random start-up trials, TPE
    maximising samples high x; a study minimising would sample low x and end far from 1."""
    n_trials = 15
    result = optuna_search(scored(lambda x: x, x=0.5), {"x": {"low": 0.0, "high": 1.0}}, split, n_trials=n_trials,
                           sampler="tpe", seed=0, progress=False)
    x = result.trials["x"].to_numpy()
    assert x[0] == 0.5 and list(result.trials["state"]) == ["complete"] * n_trials
    startup = max(2, min(10, n_trials // 3))  # optuna_search's documented random start
    assert np.median(x[startup + 1:]) > 0.75, x
    assert result.best_params == {"x": x.max()} and result.best_score == x.max() > 0.9
    assert result.best_model.params == {"x": x.max()}
    np.testing.assert_array_equal(result.trials[METRIC], x)


def test_a_log_range_is_sampled_on_the_log_scale(split):
    """Score peaks at lr = 1e-3 in a log range [1e-4, 1]; the default 0.1 is two decades off. Sampled on the log
    scale, half the trials fall below 1e-2 and one comes near the peak; uniformly, almost none would."""
    def objective(lr):
        return -abs(math.log10(lr) + 3.0)

    result = optuna_search(scored(objective, lr=0.1), {"lr": {"low": 1e-4, "high": 1.0, "log": True}}, split,
                           n_trials=12, sampler="random", seed=2, progress=False)
    lr = result.trials["lr"].to_numpy()
    assert lr[0] == 0.1 and ((1e-4 <= lr) & (lr <= 1.0)).all()
    assert (lr[1:] < 1e-2).sum() >= 4, lr
    assert 10 ** -3.5 <= result.best_params["lr"] <= 10 ** -2.5
    assert result.best_score == pytest.approx(max(objective(v) for v in lr))


@pytest.mark.parametrize("default, enqueued", [(9, True), (10, False)], ids=["on-the-grid", "off-the-grid"])
def test_a_default_off_the_step_grid_is_not_the_first_trial(split, default, enqueued):
    space = {"k": {"low": 1, "high": 13, "step": 4}}  # 1, 5, 9, 13
    result = optuna_search(scored(lambda k: -abs(k - 5), k=default), space, split, n_trials=4, sampler="random",
                           seed=1, progress=False)
    k = list(result.trials["k"])
    assert set(k) <= {1, 5, 9, 13}, k
    assert (k[0] == default) is enqueued


def test_search_edges_are_the_chosen_trials_not_the_last_ones(split):
    result = optuna_search(scored(lambda x: -x, x=0.5), {"x": [0.0, 0.5, 1.0]}, split, n_trials=6, sampler="random",
                           seed=1, progress=False)
    x = list(result.trials["x"])
    assert 0.0 in x and x[-1] != 0.0, x  # the fixture: the best is not the last trial
    assert result.best_params == {"x": 0.0} and result.best_score == 0.0
    assert result.edges == {"x": "low"} and result.edge_note() == "edge: x=low"


# ---------------------------------------------------------------------- pruning, decided by hand
class Curve(TorchVAERecommender):
    """A torch-like model without a net: ``fit`` reports a validation score of ``q`` at each of its ``epochs``
    through ``on_epoch`` (as the VAEs' training loops do) and the final validation score is ``q`` too."""

    def __init__(self, q: float = 0.5, epochs: int = 4) -> None:
        self.q, self.epochs = q, epochs
        self.training_ = None
        self.reported: list[int] = []

    def get_params(self) -> dict:
        return {"q": self.q, "epochs": self.epochs}

    def value(self) -> float:
        return self.q

    def fit(self, train, validation=None, *, on_epoch=None):
        for epoch in range(1, self.epochs + 1):
            self.reported.append(epoch)
            if on_epoch is not None:
                on_epoch(epoch, self.q)
        self.training_ = SimpleNamespace(history=pd.DataFrame({"epoch": range(1, self.epochs + 1)}),
                                         best_epoch=self.epochs)
        return self


def expected_pruning(qs, warmup: int, startup: int, epochs: int) -> list[tuple[str, int]]:
    """(state, epochs trained) of each trial by the median rule: once ``startup`` trials are complete, a trial whose
    best score so far lies below the median of the complete trials' scores at the same epoch is pruned at the first
    epoch >= ``warmup`` where that holds. Curves are flat here, so that is epoch max(warmup, 1) or never."""
    complete: list[float] = []
    out = []
    for q in qs:
        if len(complete) >= startup and q < float(np.median(complete)):
            out.append(("pruned", max(warmup, 1)))
        else:
            complete.append(q)
            out.append(("complete", epochs))
    return out


@pytest.mark.parametrize("warmup, startup", [(2, 2), (1, 3)])
def test_pruning_follows_the_median_rule_with_its_warmup_and_startup(split, warmup, startup):
    space = {"q": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}
    result = optuna_search(Curve, space, split, n_trials=12, sampler="random", seed=3, fixed={"epochs": 4},
                           prune_warmup_epochs=warmup, prune_startup_trials=startup, progress=False)
    trials = result.trials
    expected = expected_pruning(list(trials["q"]), warmup, startup, epochs=4)
    assert list(zip(trials["state"], trials["epochs"])) == expected
    pruned = [i for i, (state, _) in enumerate(expected) if state == "pruned"]
    # The fixture prunes, the first time before optuna's default of 5 complete start-up trials.
    assert len(pruned) >= 3 and pruned[0] < 5, expected
    complete = trials[trials["state"] == "complete"]
    assert trials.loc[pruned, METRIC].isna().all()
    np.testing.assert_array_equal(complete[METRIC], complete["q"])
    assert result.best_params == {"q": complete["q"].max()} and result.best_model.q == complete["q"].max()


def test_without_pruning_every_trial_runs_all_its_epochs(split):
    result = optuna_search(Curve, {"q": [0.1, 0.5, 0.9]}, split, n_trials=8, sampler="random", seed=3,
                           fixed={"epochs": 3}, prune=False, prune_warmup_epochs=0, prune_startup_trials=0,
                           progress=False)
    assert set(result.trials["state"]) == {"complete"} and set(result.trials["epochs"]) == {3}


# ---------------------------------------------------------------------- finalists: the chosen one's own fits
class Seeded(Scored):
    """A seeded model whose validation score is ``base[c]``, plus ``luck[seed]`` for c = 1."""

    seeded = True
    base = {1: 0.50, 2: 0.45, 3: 0.10}
    luck = {0: 0.0, 1: -0.20, 2: -0.10}

    def __init__(self, c: int = 3, seed: int = 0) -> None:
        super().__init__(c=c, seed=seed)

    def value(self) -> float:
        c, seed = self.params["c"], self.params["seed"]
        return self.base[c] + (self.luck[seed] if c == 1 else 0.0)


def test_the_chosen_finalist_is_a_fit_of_its_own_parameters(split):
    """c=1 wins the search (0.50 > 0.45) but its seeds 1 and 2 score 0.30 and 0.40 (mean 0.40): c=2 (mean 0.45) is
    chosen, and its model and seed fits are fits of c=2, not the search's model of c=1."""
    search = grid_search(Seeded, {"c": [1, 2, 3]}, split, progress=False)
    assert search.best_params == {"c": 1} and search.best_model.params == {"c": 1, "seed": 0}
    result = reselect_over_seeds(search, Seeded, split, finalists=2, seeds=3, progress=False)
    assert list(result.finalists["c"]) == [1, 2] and list(result.finalists["chosen"]) == [False, True]
    np.testing.assert_allclose(result.finalists[f"{METRIC} mean"], [0.40, 0.45])
    assert result.best_params == {"c": 2} and result.best_score == pytest.approx(0.45)
    assert [f.model.params for f in result.seed_fits] == [{"c": 2, "seed": s} for s in range(3)]
    assert result.best_model is result.seed_fits[0].model and result.best_model.fits == 1
    assert result.edges == {"c": None}


# ---------------------------------------------------------------------- errors: only a divergence is a failed trial
def test_an_error_other_than_a_divergence_stops_the_search(split):
    """A fit raising anything but FloatingPointError (TrainingDivergedError) is a bug or bad data, not a bad corner
    of the space: it propagates from its trial (documented), here the enqueued first one, and no later trial runs."""
    fits = []

    class Broken(scored(lambda x: x, x=0.9)):
        def fit(self, train, validation=None):
            fits.append(self.params["x"])
            if self.params["x"] > 0.5:
                raise ValueError("the training matrix has no column 'weight'")
            return super().fit(train, validation)

    with pytest.raises(ValueError, match="no column 'weight'"):
        optuna_search(Broken, {"x": [0.1, 0.9]}, split, n_trials=6, sampler="random", seed=0, progress=False)
    assert fits == [0.9]
