"""Finalists re-scored over seeds (recvae.tuning.reselect_over_seeds) and ``[evaluation] finalists`` in experiments.

A search scores each trial with one seed; these tests check that the re-scoring picks the
finalist with the best validation mean over seeds (recomputed here fit by fit), that it
reuses the fits it made, and that the experiment runner tests exactly those fits.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recvae.data.splits import strong_generalization
from recvae.data.synthetic import SyntheticConfig, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import EASE, MultVAE, Popularity
from recvae.tuning import grid_search, reselect_over_seeds, reseeded

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")

METRIC = "ndcg@20"


class NoisyPopularity(Popularity):
    """Popularity plus seeded Gaussian noise of ``noise`` item-count standard deviations: a seeded model whose
    validation score moves with its seed, the more the noisier it is. ``diverge_seeds`` make ``fit`` raise as a
    diverging torch model does (FloatingPointError)."""

    seeded = True

    def __init__(self, noise: float = 1.0, seed: int = 0, diverge_seeds: tuple[int, ...] = (), copies: int = 1) -> None:
        super().__init__()
        if isinstance(copies, bool) or not isinstance(copies, int):  # as ALS checks its factors
            raise TypeError(f"copies must be an integer; got {copies!r}")
        self.noise, self.seed, self.diverge_seeds, self.copies = noise, seed, tuple(diverge_seeds), copies

    def get_params(self) -> dict:
        return {"noise": self.noise, "seed": self.seed, "diverge_seeds": self.diverge_seeds, "copies": self.copies}

    def fit(self, train, validation=None) -> NoisyPopularity:
        if self.seed in self.diverge_seeds:
            raise FloatingPointError(f"training diverged (seed {self.seed})")
        super().fit(train, validation)
        noise = np.random.default_rng(self.seed).standard_normal(self.item_counts_.shape).astype(np.float32)
        self.item_counts_ = self.item_counts_ + self.noise * self.item_counts_.std() * noise
        return self


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=300, n_items=120, seed=1)), 40)


def validation_score(model, split) -> float:
    return float(evaluate(model, split, "validation", ks=(20,), metrics=("ndcg",)).summary.loc[METRIC, "mean"])


def noisy(diverge_seeds=()):
    """The factory the searches use: seed 1, so the further seeds are 2 and 3."""
    return lambda **params: NoisyPopularity(seed=1, diverge_seeds=diverge_seeds, **params)


NOISE_GRID = {"noise": [0.25, 0.5, 1.0, 2.0], "copies": [1]}  # an int beside a float: each keeps its type


def test_the_finalist_with_the_best_mean_over_seeds_wins(split):
    """Recompute every finalist's score seed by seed: the chosen one has the best mean, the search's lucky pick
    loses, and the trial outside the finalists is never refit."""
    search = grid_search(noisy(), NOISE_GRID, split, metric=METRIC, ks=(20,), progress=False)
    result = reselect_over_seeds(search, noisy(), split, finalists=3, seeds=3, progress=False)

    order = search.trials.sort_values(METRIC, ascending=False, kind="stable")["noise"].tolist()
    by_hand = {noise: [validation_score(NoisyPopularity(noise, seed=1 + s).fit(split), split) for s in range(3)]
               for noise in order[:3]}
    means = {noise: float(np.mean(scores)) for noise, scores in by_hand.items()}
    expected = max(order[:3], key=lambda noise: means[noise])
    assert search.best_params["noise"] != expected, "the data must make the search's pick a lucky one"
    assert result.best_params == {"noise": expected, "copies": 1} and type(result.best_params["copies"]) is int
    assert result.best_score == pytest.approx(means[expected])

    table = result.finalists
    assert table["noise"].tolist() == order[:3] and table["finalist"].tolist() == [1, 2, 3]
    assert table["chosen"].tolist() == [noise == expected for noise in order[:3]]
    for _, row in table.iterrows():
        scores = [row[f"{METRIC} seed {s}"] for s in range(3)]
        np.testing.assert_allclose(scores, by_hand[row["noise"]], rtol=1e-6)
        assert row[f"{METRIC} mean"] == pytest.approx(means[row["noise"]])
    # the seed-0 score of a finalist is its search trial's: the trial itself is not refit
    trial_scores = search.trials.set_index("noise")[METRIC]
    assert table[f"{METRIC} seed 0"].tolist() == pytest.approx(trial_scores.loc[order[:3]].tolist())

    assert [f.offset for f in result.seed_fits] == [0, 1, 2]
    assert result.best_model is result.seed_fits[0].model
    for fit in result.seed_fits:
        assert fit.model.get_params() == {"noise": expected, "seed": 1 + fit.offset, "diverge_seeds": (), "copies": 1}
        assert validation_score(fit.model, split) == pytest.approx(by_hand[expected][fit.offset])
    # the search's own result is left as it was
    assert search.finalists is None and search.seed_fits == [] and search.best_params != result.best_params


def test_the_searchs_pick_keeps_its_fitted_model_when_it_wins(split):
    search = grid_search(noisy(), {"noise": [0.25, 4.0]}, split, metric=METRIC, ks=(20,), progress=False)
    assert search.best_params == {"noise": 0.25}
    result = reselect_over_seeds(search, noisy(), split, finalists=2, seeds=2, progress=False)
    assert result.best_params == {"noise": 0.25}
    assert result.best_model is search.best_model and result.seed_fits[0].model is search.best_model
    assert result.seed_fits[1].model.seed == 2


def test_one_finalist_refits_the_pick_with_the_further_seeds(split):
    search = grid_search(noisy(), NOISE_GRID, split, metric=METRIC, ks=(20,), progress=False)
    result = reselect_over_seeds(search, noisy(), split, finalists=1, seeds=3, progress=False)
    assert result.best_params == search.best_params and result.best_model is search.best_model
    assert len(result.finalists) == 1 and [f.model.seed for f in result.seed_fits] == [1, 2, 3]


def test_a_finalist_that_diverges_on_another_seed_is_ruled_out(split, caplog):
    search = grid_search(noisy(), NOISE_GRID, split, metric=METRIC, ks=(20,), progress=False)
    plain = reselect_over_seeds(search, noisy(), split, finalists=3, seeds=3, progress=False)
    winner = plain.best_params["noise"]
    factory = lambda **params: NoisyPopularity(seed=1, diverge_seeds=(3,) if params["noise"] == winner else (),
                                               **params)
    result = reselect_over_seeds(search, factory, split, finalists=3, seeds=3, progress=False)
    assert result.best_params["noise"] != winner
    row = result.finalists.set_index("noise").loc[winner]
    assert math.isnan(row[f"{METRIC} mean"]) and math.isnan(row[f"{METRIC} seed 2"]) and not row["chosen"]
    assert "diverged" in caplog.text

    every = lambda **params: NoisyPopularity(seed=1, diverge_seeds=(2,), **params)
    fallback = reselect_over_seeds(search, every, split, finalists=3, seeds=3, progress=False)
    assert fallback.best_model is search.best_model and fallback.best_params == search.best_params
    assert not fallback.finalists["chosen"].any() and fallback.seed_fits == []


def test_pruned_and_failed_trials_are_not_finalists(split):
    search = grid_search(noisy(), NOISE_GRID, split, metric=METRIC, ks=(20,), progress=False)
    trials = search.trials.assign(state="complete", trial=range(len(search.trials)))
    best = trials[METRIC].idxmax()
    trials.loc[trials.index != best, "state"] = "pruned"
    result = reselect_over_seeds(search.__class__(**{**search.__dict__, "trials": trials}), noisy(), split,
                                 finalists=3, seeds=2, progress=False)
    assert len(result.finalists) == 1 and result.best_params == search.best_params


def test_arguments_are_checked(split):
    search = grid_search(noisy(), {"noise": [0.5]}, split, metric=METRIC, ks=(20,), progress=False)
    for bad in ({"finalists": 0}, {"seeds": 0}, {"finalists": 2.5}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            reselect_over_seeds(search, noisy(), split, progress=False, **bad)
    ease = grid_search(EASE, {"l2": [10.0, 100.0]}, split, metric=METRIC, ks=(20,), progress=False)
    with pytest.raises(ValueError, match="deterministic"):
        reselect_over_seeds(ease, EASE, split, progress=False)
    with pytest.raises(TypeError, match="no 'seed'"):
        reseeded(Popularity(), 1)


# ------------------------------------------------------------------ in an experiment
CONFIG = """
name = "finalists"
[dataset]
synthetic = { n_users = 300, n_items = 100, seed = 0 }
rating_threshold = 3.5
min_user_interactions = 5
[split]
kind = "strong"
heldout_users = 30
[evaluation]
metrics = ["ndcg@100"]
select_by = "ndcg@100"
seeds = 2
finalists = 2
[[models]]
name = "ease"
label = "EASE"
grid = { l2 = [10.0, 100.0] }
[[models]]
name = "mult-vae"
label = "Mult-VAE"
params = { epochs = 3, hidden_dims = [], latent_dim = 16, batch_size = 100 }
grid = { lr = [3e-4, 1e-3, 3e-3] }
"""


def test_an_experiment_tests_the_fits_its_finalists_made(tmp_path):
    """Mult-VAE: 3 grid trials, then the best 2 each fit with seed + 1, plus a seed-0 refit when the runner-up
    wins; the seed-1 fit tested is the one the finalists made (no further fit). EASE is deterministic: untouched."""
    import recvae.experiment.runner as runner
    from recvae.experiment import run_experiment

    config = tmp_path / "finalists.toml"
    config.write_text(textwrap.dedent(CONFIG))
    fits: Counter = Counter()
    outcomes: dict = {}
    original_fit = MultVAE.fit

    def counting_fit(self, *args, **kwargs):
        fits[(self.get_params()["lr"], self.get_params()["seed"])] += 1
        return original_fit(self, *args, **kwargs)

    real_refit_seeds = runner.refit_seeds

    def capturing_refit_seeds(outcome, *args, **kwargs):
        outcomes[outcome.spec.label] = real_refit_seeds(outcome, *args, **kwargs)
        return outcomes[outcome.spec.label]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MultVAE, "fit", counting_fit)
        mp.setattr(runner, "refit_seeds", capturing_refit_seeds)
        report = run_experiment(config, output_dir=tmp_path / "out", progress=False)

    vae = outcomes["Mult-VAE"]
    finalists = vae.search.finalists
    assert len(finalists) == 2 and finalists["chosen"].sum() == 1
    chosen = finalists[finalists["chosen"]].iloc[0]
    lr, seed = chosen["lr"], vae.search.best_model.get_params()["seed"]
    runner_up_won = bool(chosen["finalist"] == 2)
    expected = Counter({(v, seed): 1 for v in (3e-4, 1e-3, 3e-3)})
    expected.update({(v, seed + 1): 1 for v in finalists["lr"]})
    if runner_up_won:
        expected[(lr, seed)] += 1
    assert fits == expected
    assert vae.search.best_params == {"lr": lr}
    assert vae.search.best_score == pytest.approx(chosen["ndcg@100 mean"])
    assert vae.search.best_score == pytest.approx(np.mean([chosen["ndcg@100 seed 0"], chosen["ndcg@100 seed 1"]]))

    # the seed-1 fit tested is the finalists' (fit once, above), and it is the chosen lr at seed + 1
    split = by_hand_split(config)
    by_hand = MultVAE(**{**vae.search.best_model.get_params(), "seed": seed + 1}).fit(split)
    test = evaluate(by_hand, split, "test", ks=(100,), metrics=("ndcg",))
    np.testing.assert_allclose(vae.seed_runs[1].test.per_user["ndcg@100"], test.per_user["ndcg@100"], rtol=1e-6)
    assert vae.search.seed_fits[1].model is None  # not kept: nothing reuses Mult-VAE

    table = pd.read_csv(report.with_suffix(".csv")).set_index("model")
    assert table.loc["Mult-VAE", "validation ndcg@100"] == pytest.approx(chosen["ndcg@100 mean"])
    assert json.loads(table.loc["Mult-VAE", "best_params"]) == {"lr": lr}
    written = pd.read_csv(report.parent / "finalists_finalists.csv")
    assert written["model"].tolist() == ["Mult-VAE", "Mult-VAE"]
    md = report.read_text()
    assert "## Finalists over seeds" in md and "`finalists = 2`" in md
    assert f"**{chosen['ndcg@100 mean']:.4f}**" in md
    assert outcomes["EASE"].search.finalists is None


def by_hand_split(config: Path):
    from recvae.experiment.runner import load_config, load_dataset, make_split

    loaded = load_config(config)
    return make_split(load_dataset(loaded), loaded.split)


def test_finalists_must_be_a_positive_integer(tmp_path):
    from recvae.experiment import load_config

    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(CONFIG).replace("finalists = 2", "finalists = 0"))
    with pytest.raises(ValueError, match="finalists") as info:
        load_config(path)
    assert "\n" not in str(info.value)
    path.write_text(textwrap.dedent(CONFIG).replace("finalists = 2\n", ""))
    assert load_config(path).finalists == 1
