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
