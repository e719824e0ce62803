import dataclasses

import numpy as np

from recvae.data import SyntheticConfig, synthetic_interactions, synthetic_log


def test_same_seed_same_log_other_seed_other_log():
    a, b = synthetic_log(SyntheticConfig(seed=3)), synthetic_log(SyntheticConfig(seed=3))
    c = synthetic_log(SyntheticConfig(seed=4))
    assert a.equals(b) and not a.equals(c)


def test_movielens_like_shape():
    log = synthetic_log()
    assert set(log.columns) == {"user", "item", "rating", "timestamp"}
    assert not log.duplicated(["user", "item"]).any()
    assert log.rating.between(1, 5).all()
    # sorted by user then time, like the MovieLens files
    assert (np.diff(log.user.to_numpy()) >= 0).all()
    data = synthetic_interactions()
    kept = data.nnz / len(log)
    assert 0.3 < kept < 0.7  # about half the ratings are > 3.5, as in MovieLens
    pop = np.sort(np.asarray(data.matrix.sum(axis=0)).ravel())[::-1]
    assert pop[: len(pop) // 10].sum() > 0.3 * pop.sum()  # a heavy head of popular items
    assert 0.002 < data.density < 0.05


def test_users_cluster_by_taste():
    # Users' items should overlap far more than popularity alone would give: a user's
    # two halves of events share tastes. Compare co-occurrence of a user's events with
    # a shuffled pairing of users.
    data = synthetic_interactions(SyntheticConfig(n_users=400, n_items=300, seed=1), rating_col=None)
    x = data.matrix.toarray()
    rng = np.random.default_rng(0)
    half = rng.random(x.shape) < 0.5
    a, b = x * half, x * ~half
    same = (a * b.sum(0) / b.sum()).sum(1)
    item_sim = (a.T @ b) / (1e-9 + a.sum(0)[:, None] * b.sum(0)[None, :])
    own = np.einsum("ui,ij,uj->u", a, item_sim, b)
    other = np.einsum("ui,ij,uj->u", a, item_sim, b[rng.permutation(len(b))])
    assert own.mean() > 1.5 * other.mean()
    assert same.mean() > 0


# ------------------------------------------------------------------ large catalogues
def test_catalogue_of_100k_items_has_realistic_shape_and_a_power_law():
    from recvae.data import CATALOGUE_100K, catalogue_interactions

    data = catalogue_interactions(CATALOGUE_100K)
    m = data.matrix
    assert m.shape == (20_000, 100_000) and m.dtype == np.float32 and m.has_canonical_format
    assert (m.data == 1.0).all()
    per_user = np.diff(m.indptr)
    assert per_user.min() >= 5 and 40 <= per_user.mean() <= 60  # about 50 events per user, heavy tailed
    assert np.median(per_user) < per_user.mean() and per_user.max() > 10 * per_user.mean()
    assert 3e-4 < data.density < 7e-4
    counts = np.sort(np.bincount(m.indices, minlength=m.shape[1]))[::-1]
    assert counts[:1000].sum() > 0.3 * counts.sum()  # the top 1% of the items hold a large share
    assert counts[0] > 100 * max(1, np.median(counts))
    np.testing.assert_array_equal(data.user_ids, np.arange(1, 20_001))
    np.testing.assert_array_equal(data.item_ids, np.arange(1, 100_001))


def test_catalogue_of_a_million_items_is_sparse_and_mostly_cold():
    from recvae.data import CATALOGUE_1M, catalogue_interactions

    data = catalogue_interactions(dataclasses.replace(CATALOGUE_1M, n_users=4000))
    m = data.matrix
    assert m.shape == (4000, 1_000_000)
    assert 40 <= m.nnz / 4000 <= 60
    counts = np.bincount(m.indices, minlength=m.shape[1])
    assert (counts > 0).mean() < 0.2  # a long cold tail: most items were never drawn
    assert np.sort(counts)[::-1][:10_000].sum() > 0.4 * counts.sum()


def test_catalogue_is_a_function_of_its_seed():
    from recvae.data import CatalogueConfig, catalogue_interactions

    config = CatalogueConfig(n_users=2000, n_items=5000, n_tastes=20, seed=4)
    a, b = catalogue_interactions(config), catalogue_interactions(config)
    c = catalogue_interactions(dataclasses.replace(config, seed=5))
    assert (a.matrix != b.matrix).nnz == 0 and (a.matrix != c.matrix).nnz > 0


def test_catalogue_tastes_give_item_models_something_to_learn():
    """With tastes, EASE beats popularity clearly; without (on_taste_share = 0), it does not."""
    from threadpoolctl import threadpool_limits

    from recvae.data import CatalogueConfig, catalogue_interactions, strong_generalization
    from recvae.evaluation import evaluate
    from recvae.models import EASE, Popularity

    gains = {}
    with threadpool_limits(1, "blas"):
        for share in (0.8, 0.0):
            data = catalogue_interactions(CatalogueConfig(n_users=3000, n_items=2000, n_tastes=20, seed=4,
                                                          on_taste_share=share))
            split = strong_generalization(data, 300)
            ease, pop = (evaluate(m.fit(split), split, "test", ks=(100,))["ndcg@100"]
                         for m in (EASE(l2=100.0), Popularity()))
            gains[share] = ease / pop
    assert gains[0.8] > 1.2 and gains[0.0] < 1.0


def test_catalogue_config_is_checked():
    import pytest

    from recvae.data import CatalogueConfig

    with pytest.raises(ValueError, match="n_tastes"):
        CatalogueConfig(n_items=10, n_tastes=20, max_events=5, events_per_user=5)
    with pytest.raises(ValueError, match="events"):
        CatalogueConfig(events_per_user=3, min_events=5)
    with pytest.raises(ValueError, match="max_events"):
        CatalogueConfig(n_items=100, n_tastes=10)
