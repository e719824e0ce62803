"""Blends of models: score normalisation, weight tuning on validation, persistence."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import EASE, Blend, MultVAE, NotFittedError, Popularity, load_model, make_model
from recvae.models.hybrid import normalise_scores
from recvae.training import TrainingConfig


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=500, n_items=120, seed=3))
    return strong_generalization(data, 60)


@pytest.fixture(scope="module")
def fitted(split):
    ease = EASE(l2=50.0).fit(split)
    vae = MultVAE(training=TrainingConfig(epochs=8, progress=False, seed=1)).fit(split)
    return ease, vae


def _random_rows(rng, n_users, n_items, density=0.2):
    rows = sp.random(n_users, n_items, density=density, random_state=rng, format="csr")
    rows.data[:] = 1
    return rows


def test_zscore_uses_only_unseen_items():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 30)) * 3 + 5
    rows = _random_rows(rng, 7, 30)
    out = normalise_scores(scores, rows, "zscore")
    for u in range(7):
        unseen = np.setdiff1d(np.arange(30), rows[u].indices)
        expected = (scores[u, unseen] - scores[u, unseen].mean()) / scores[u, unseen].std()
        np.testing.assert_allclose(out[u, unseen], expected, rtol=1e-10, atol=1e-10)


def test_rank_orders_unseen_items_like_scipy():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(5, 40))
    rows = _random_rows(rng, 5, 40)
    out = normalise_scores(scores, rows, "rank")
    for u in range(5):
        unseen = np.setdiff1d(np.arange(40), rows[u].indices)
        expected = scipy.stats.rankdata(scores[u, unseen], method="ordinal")
        got = scipy.stats.rankdata(out[u, unseen], method="ordinal")
        np.testing.assert_array_equal(got, expected)
        assert out[u, unseen].min() > out[u, rows[u].indices].max(initial=-1)


def test_fixed_weight_on_one_component_ranks_like_it(split, fitted):
    ease, vae = fitted
    blend = Blend([ease, vae], weights=[1.0, 0.0]).fit(split)
    np.testing.assert_array_equal(blend.recommend(split.test.fold_in, k=10).items,
                                  ease.recommend(split.test.fold_in, k=10).items)


def test_blend_scores_are_the_weighted_sum_of_per_user_zscores(split, fitted):
    ease, vae = fitted
    blend = Blend([ease, vae], weights=[1.0, 3.0]).fit(split)
    np.testing.assert_allclose(blend.weights_, [0.25, 0.75])
    rows = split.test.fold_in[:10]
    expected = np.zeros(rows.shape)
    for weight, model in ((0.25, ease), (0.75, vae)):
        scores = model.score(rows).astype(np.float64)
        for u in range(rows.shape[0]):  # z-scores over the user's unseen items, written out
            unseen = np.setdiff1d(np.arange(rows.shape[1]), rows[u].indices)
            expected[u] += weight * (scores[u] - scores[u, unseen].mean()) / scores[u, unseen].std()
    np.testing.assert_allclose(blend.score(rows), expected, rtol=1e-4, atol=1e-4)


def test_tuned_blend_is_at_least_as_good_as_each_part_on_validation(split, fitted):
    ease, vae = fitted
    blend = Blend([ease, vae]).fit(split)
    assert blend.components_[0] is ease and blend.components_[1] is vae  # fitted parts are kept, not refit
    assert np.isclose(blend.weights_.sum(), 1.0) and len(blend.validation_trials_) == 21
    best = blend.validation_trials_["ndcg@100"].max()
    assert best == pytest.approx(evaluate(blend, split, "validation")["ndcg@100"], abs=1e-6)
    for part in (ease, vae):
        assert best >= evaluate(part, split, "validation")["ndcg@100"] - 1e-6


def test_blend_from_names_fits_its_parts_and_beats_popularity(split):
    blend = make_model("blend", {"components": [{"name": "ease", "params": {"l2": 50.0}},
                                                {"name": "mult-vae", "params": {"epochs": 5, "progress": False}}],
                                 "weight_step": 0.25})
    blend.fit(split)
    assert evaluate(blend, split, "test")["ndcg@100"] > evaluate(Popularity().fit(split), split, "test")["ndcg@100"] + 0.05
    recs = blend.recommend_for_items(split.item_ids[:3], k=5)
    assert not set(recs.items[0]) & {0, 1, 2}
    mu, sigma = blend.embed_users(split.test.fold_in[:4])
    assert mu.shape == sigma.shape == (4, blend.components_[1].config.latent_dim)


def test_save_and_load_give_identical_scores(tmp_path, split, fitted):
    blend = Blend(list(fitted), normalization="rank").fit(split)
    path = blend.save(tmp_path / "hybrid")
    for loaded in (Blend.load(path, device="cpu"), load_model(path, device="cpu")):
        assert isinstance(loaded, Blend)
        np.testing.assert_array_equal(loaded.score(split.test.fold_in), blend.score(split.test.fold_in))
        np.testing.assert_array_equal(loaded.weights_, blend.weights_)


def test_bad_inputs_are_refused(split, fitted):
    ease, vae = fitted
    with pytest.raises(ValueError, match="one per component"):
        Blend([ease, vae], weights=[1.0])
    with pytest.raises(ValueError, match="normalization"):
        Blend([ease], normalization="softmax")
    with pytest.raises(ValueError, match="weight_step"):
        Blend([ease], weight_step=0.3)
    with pytest.raises(TypeError):
        Blend([])
    with pytest.raises(ValueError, match="validation"):
        Blend([ease, vae]).fit(split.train)
    with pytest.raises(NotFittedError):
        Blend([ease, vae]).score(split.test.fold_in)
    with pytest.raises(NotImplementedError, match="no VAE"):
        Blend([ease], weights=[1.0]).fit(split).embed_users(split.test.fold_in)
    with pytest.raises(ValueError, match="unknown key"):
        Blend([{"name": "ease", "parms": {}}], weights=[1.0]).fit(split)
