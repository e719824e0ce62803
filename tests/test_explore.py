"""Posterior-aware recommendations (issue 32 part 4): ``explore`` samples each user's posterior, the
uncertainty columns measure it; checked against computations made here from the networks' own encoders
and decoders (``net.encode`` / ``net.decode``), never from the code under test.

Covered: explore=0 gives today's lists exactly (models, Run, every VAE); explore > 0 ranks the decoder at
``mu + t * sigma * eps`` for the documented eps, is seeded and independent of batching; a larger t moves
the lists further; models without a posterior refuse with one line; the mean-sigma column equals
``exp(0.5 * log_var)``'s mean and the rank spread a brute-force pairwise overlap; the CLI end to end
(recommend, embed) and the HTTP server through its ASGI app.
"""

import contextlib
import io
import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recvae.cli import main
from recvae.data import SyntheticConfig, synthetic_log
from recvae.models import EASE, JointVAE, MultDAE, MultVAE, Popularity, RecVAE
from recvae.models.posterior import list_spread, posterior_noise
from recvae.runs import Run, SplitSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"latent_dim": 8, "epochs": 3, "seed": 0}


def matrix(seed: int = 0, users: int = 160, items: int = 50) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.15).astype(np.float32)
    dense[np.arange(users), rng.integers(0, items, users)] = 1.0  # no empty row
    return sp.csr_matrix(dense)


@pytest.fixture(scope="module")
def train() -> sp.csr_matrix:
    return matrix()


@pytest.fixture(scope="module")
def vaes(train) -> dict:
    return {"mult-vae": MultVAE(hidden_dims=[16], **TINY).fit(train),
            "recvae": RecVAE(hidden_dim=16, **TINY).fit(train),
            "joint-vae": JointVAE(hidden_dim=16, min_epochs=0, **TINY).fit(train)}


@pytest.fixture(scope="module")
def log():
    return synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))


@pytest.fixture(scope="module")
def runs(log, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("explore_runs")
    quiet = lambda _: None  # noqa: E731
    Run.fit(log, "mult-vae", params={"latent_dim": 8, "hidden_dims": [16], "epochs": 3, "seed": 0},
            split=SplitSpec(seed=0), output=tmp / "vae", report=quiet)
    Run.fit(log, "ease", params={"l2": 10.0}, output=tmp / "ease", report=quiet)
    return {name: tmp / name for name in ("vae", "ease")}


@pytest.fixture(scope="module")
def vae_run(runs) -> Run:
    return Run.load(runs["vae"], device="cpu")


# ============================================================================ oracles
def posterior_of(model, rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(mu, log_var) of the rows from the network's own encoder, in eval mode."""
    from recvae.training import sparse_rows

    net = model.net_.eval()
    x = sparse_rows(rows, torch.device("cpu"))
    with torch.no_grad():
        mu, log_var = net.encode(x) if isinstance(model, MultVAE) else net.encode(x, dropout=False)
    return mu.numpy(), log_var.numpy()


def decoded(model, rows: sp.csr_matrix, z: np.ndarray) -> np.ndarray:
    """The scores of codes z: the decoder (and, for the joint model, the item-item path of the rows)."""
    from recvae.training import sparse_rows

    net = model.net_.eval()
    with torch.no_grad():
        z = torch.from_numpy(z)
        if isinstance(model, JointVAE):
            return net.output(z, sparse_rows(rows, torch.device("cpu"))).numpy()
        return net.likelihood.scores(net.decode(z)).numpy()


def oracle_top(scores: np.ndarray, rows: sp.csr_matrix, k: int) -> np.ndarray:
    """Each row's top k with its own items masked, ties to the lower column."""
    scores = scores.astype(np.float64).copy()
    scores[rows.toarray() > 0] = -np.inf
    return np.array([sorted(range(scores.shape[1]), key=lambda j: (-scores[u, j], j))[:k]
                     for u in range(scores.shape[0])])


def change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over users of 1 - |A ∩ B| / k."""
    return float(np.mean([1 - len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


# ============================================================================ the model API
@pytest.mark.parametrize("name", ["mult-vae", "recvae", "joint-vae"])
def test_explore_zero_gives_todays_lists_exactly(vaes, train, name):
    model = vaes[name]
    usual = model.recommend(train[:40], k=10)
    again = model.recommend(train[:40], k=10, explore=0.0, seed=5)
    assert np.array_equal(usual.items, again.items) and np.array_equal(usual.scores, again.scores)
    assert again.uncertainty is None and again.rank_spread is None


@pytest.mark.parametrize("name", ["mult-vae", "recvae", "joint-vae"])
@pytest.mark.parametrize("t", [0.5, 2.0])
def test_explore_ranks_the_decoder_at_a_posterior_sample(vaes, train, name, t):
    """The lists are the top-k of decode(mu + t * sigma * eps), eps = posterior_noise(rows, d, seed)."""
    model, rows = vaes[name], train[:30]
    mu, log_var = posterior_of(model, rows)
    eps = posterior_noise(rows, mu.shape[1], seed=7)
    z = (mu + t * np.exp(0.5 * log_var) * eps).astype(np.float32)
    got = model.recommend(rows, k=8, explore=t, seed=7)
    agree = np.mean(got.items == oracle_top(decoded(model, rows, z), rows, 8))
    assert agree >= 0.97, agree  # float rounding of the blocked product may swap near-ties
    assert not np.array_equal(got.items, model.recommend(rows, k=8).items)


def test_explore_is_seeded_and_does_not_depend_on_the_batch(vaes, train):
    model = vaes["mult-vae"]
    first = model.recommend(train, k=10, explore=1.0, seed=3)
    assert np.array_equal(first.items, model.recommend(train, k=10, explore=1.0, seed=3).items)
    assert not np.array_equal(first.items, model.recommend(train, k=10, explore=1.0, seed=4).items)
    part = model.recommend(train[50:60], k=10, explore=1.0, seed=3)  # other neighbours in the batch
    assert np.array_equal(part.items, first.items[50:60])
    small = model.recommend(train, k=10, explore=1.0, seed=3, max_memory=4096)  # user batches and item blocks
    assert np.mean(small.items == first.items) > 0.99


def test_the_noise_is_standard_normal_and_a_function_of_seed_and_row():
    rows = matrix(1, users=3000, items=80)
    eps = posterior_noise(rows, 64, seed=0)
    assert eps.shape == (3000, 64) and eps.dtype == np.float32
    assert abs(eps.mean()) < 0.01 and abs(eps.std() - 1) < 0.01
    assert abs(np.corrcoef(eps[:, 0], eps[:, 1])[0, 1]) < 0.05
    assert np.array_equal(posterior_noise(rows[7:9], 64, seed=0), eps[7:9])
    assert abs(np.corrcoef(eps.ravel(), posterior_noise(rows, 64, seed=1).ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(eps.ravel(), posterior_noise(rows, 64, seed=0, sample=1).ravel())[0, 1]) < 0.01
    same = sp.csr_matrix(np.vstack([rows[0].toarray()] * 2))
    one, two = posterior_noise(same, 4, seed=0)
    assert np.array_equal(one, two)  # the same history, the same draw


@pytest.mark.parametrize("name", ["mult-vae", "recvae", "joint-vae"])
def test_a_larger_t_moves_the_lists_further(vaes, train, name):
    model = vaes[name]
    usual = model.recommend(train, k=10).items
    moved = [np.mean([change(usual, model.recommend(train, k=10, explore=t, seed=s).items) for s in range(3)])
             for t in (0.1, 0.5, 2.0, 8.0)]
    assert moved[0] > 0 and all(a < b for a, b in zip(moved, moved[1:])), moved


@pytest.mark.parametrize("make", [lambda x: EASE(l2=10.0).fit(x), lambda x: Popularity().fit(x),
                                  lambda x: MultDAE(latent_dim=8, epochs=1).fit(x)])
def test_models_without_a_posterior_refuse_with_one_line(train, make):
    model = make(train)
    usual = model.recommend(train[:5], k=5)
    assert np.array_equal(usual.items, model.recommend(train[:5], k=5, explore=0).items)
    for options in ({"explore": 0.5}, {"uncertainty": True}, {"uncertainty_samples": 3}):
        with pytest.raises(ValueError) as info:
            model.recommend(train[:5], k=5, **options)
        message = str(info.value)
        assert "\n" not in message and "VAE family" in message and type(model).__name__ in message


@pytest.mark.parametrize("options", [{"explore": -0.1}, {"explore": float("nan")}, {"explore": True},
                                     {"explore": "1"}, {"seed": -1}, {"seed": 1.5}, {"seed": 2**64}, {"uncertainty_samples": 1},
                                     {"uncertainty_samples": -2}])
def test_bad_posterior_options_are_refused_with_one_line(vaes, train, options):
    with pytest.raises(ValueError) as info:
        vaes["mult-vae"].recommend(train[:3], k=3, **options)
    assert "\n" not in str(info.value) and next(iter(options)) in str(info.value)


# ============================================================================ uncertainty
@pytest.mark.parametrize("name", ["mult-vae", "recvae", "joint-vae"])
def test_uncertainty_is_the_mean_posterior_sigma(vaes, train, name):
    model, rows = vaes[name], train[:25]
    _, log_var = posterior_of(model, rows)
    expected = np.exp(0.5 * log_var.astype(np.float64)).mean(axis=1)
    recs = model.recommend(rows, k=5, uncertainty=True)
    assert recs.uncertainty.shape == (25,) and recs.rank_spread is None
    np.testing.assert_allclose(recs.uncertainty, expected, rtol=1e-5)
    frame = recs.to_frame()
    np.testing.assert_allclose(frame["uncertainty"], expected[frame["user_row"]], rtol=1e-5)


def brute_spread(lists: list[np.ndarray]) -> np.ndarray:
    out = []
    for u in range(lists[0].shape[0]):
        sets = [set(x[u][x[u] >= 0].tolist()) for x in lists]
        k = len(sets[0])
        out.append(1 - np.mean([len(a & b) / k for a, b in itertools.combinations(sets, 2)]) if k else 0.0)
    return np.array(out)


def test_list_spread_is_one_minus_the_mean_pairwise_overlap():
    rng = np.random.default_rng(0)
    lists = [np.stack([rng.choice(30, 6, replace=False) for _ in range(20)]) for _ in range(5)]
    lists[0][3], lists[1][3], lists[2][3], lists[3][3], lists[4][3] = (np.arange(6),) * 5  # identical: 0
    for x in lists:
        x[4, 4:] = -1  # padding is not counted
    np.testing.assert_allclose(list_spread(lists), brute_spread(lists), atol=1e-6)
    assert list_spread(lists)[3] == 0


def test_rank_spread_ranks_posterior_samples_with_the_same_exclusions(vaes, train):
    model, rows = vaes["mult-vae"], train[:20]
    recs = model.recommend(rows, k=6, uncertainty_samples=4, seed=2)
    samples = [oracle_top(decoded(model, rows, (mu + np.exp(0.5 * lv) * posterior_noise(rows, mu.shape[1], 2, s))
                                  .astype(np.float32)), rows, 6)
               for s in range(4) for mu, lv in [posterior_of(model, rows)]]
    np.testing.assert_allclose(recs.rank_spread, brute_spread(samples), atol=0.05)
    assert recs.uncertainty is not None and ((recs.rank_spread >= 0) & (recs.rank_spread <= 1)).all()
    whole = model.recommend(rows, k=model.n_items_, uncertainty_samples=3)  # every eligible item: no spread
    assert np.allclose(whole.rank_spread, 0)


# ============================================================================ the run, the CLI, the server
def test_run_recommend_explore_and_uncertainty(vae_run):
    users = list(vae_run.user_ids[:12])
    usual = vae_run.recommend(users, k=5)
    pd.testing.assert_frame_equal(usual, vae_run.recommend(users, k=5, explore=0.0))
    explored = vae_run.recommend(users, k=5, explore=1.0, seed=1, uncertainty=True, uncertainty_samples=3)
    assert list(explored.columns) == ["user_id", "rank", "item_id", "score", "uncertainty", "rank_spread"]
    assert not explored["item_id"].equals(usual["item_id"])
    batched = vae_run.recommend(users, k=5, explore=1.0, seed=1, uncertainty=True, uncertainty_samples=3,
                                batch_size=5)
    pd.testing.assert_frame_equal(explored, batched)
    every = vae_run.recommend_all(k=5, explore=1.0, seed=1, batch_size=7)
    pd.testing.assert_frame_equal(every[every["user_id"].isin(users)].reset_index(drop=True),
                                  explored[["user_id", "rank", "item_id", "score"]])
    _, log_var = posterior_of(vae_run.model, vae_run.history[:12])
    per_user = explored.groupby("user_id", sort=False)["uncertainty"].agg(["min", "max"])
    assert (per_user["min"] == per_user["max"]).all()
    np.testing.assert_allclose(per_user["min"], np.exp(0.5 * log_var.astype(np.float64)).mean(axis=1), rtol=1e-5)
    embedded = vae_run.embed_users(users, uncertainty=True)
    np.testing.assert_allclose(embedded["uncertainty"], per_user["min"], rtol=1e-6)
    new = vae_run.recommend_for_items(list(vae_run.item_ids[:3]), k=5, explore=1.0, uncertainty=True)
    assert list(new.columns) == ["rank", "item_id", "score", "uncertainty"]


def test_a_run_without_a_posterior_refuses_before_any_work(runs):
    ease = Run.load(runs["ease"], device="cpu")
    for call in (lambda: ease.recommend(list(ease.user_ids[:3]), explore=1.0),
                 lambda: ease.recommend_all(explore=0.3), lambda: ease.embed_users(uncertainty=True),
                 lambda: ease.recommend_for_items(list(ease.item_ids[:2]), uncertainty=True)):
        with pytest.raises(ValueError, match="VAE family"):
            call()


def run_cli(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def test_cli_recommend_and_embed_end_to_end(runs, vae_run, tmp_path):
    users = [str(u) for u in vae_run.user_ids[:4]]
    base = ["recommend", runs["vae"], "--user", *users, "-k", "5", "--explore", "1.5", "--seed", "9",
            "--uncertainty", "--uncertainty-samples", "3"]
    printed = run_cli([*base, "-o", tmp_path / "a.csv"])
    assert "uncertainty" in printed and "rank spread" in printed
    run_cli([*base, "-o", tmp_path / "b.csv"])
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    pd.testing.assert_frame_equal(a, b)  # the same seed, the same lists
    expected = vae_run.recommend(vae_run.user_ids[:4], k=5, explore=1.5, seed=9, uncertainty=True,
                                 uncertainty_samples=3)
    assert a["item_id"].tolist() == expected["item_id"].tolist()
    np.testing.assert_allclose(a["rank_spread"], expected["rank_spread"], rtol=1e-5)
    run_cli(["recommend", runs["vae"], "--all-users", "-k", "3", "--explore", "1", "-o", tmp_path / "all.csv"])
    every = pd.read_csv(tmp_path / "all.csv")
    assert not every["item_id"].equals(vae_run.recommend_all(k=3)["item_id"])
    run_cli(["embed", runs["vae"], "--uncertainty", "-o", tmp_path / "emb.npy"])
    np.testing.assert_allclose(np.load(tmp_path / "emb_uncertainty.npy"),
                               vae_run.embed_users(uncertainty=True)["uncertainty"], rtol=1e-6)
    run_cli(["embed", runs["vae"], "--uncertainty", "--layout", "list", "-o", tmp_path / "emb.parquet"])
    assert "uncertainty" in pd.read_parquet(tmp_path / "emb.parquet").columns
    with pytest.raises(SystemExit) as info:
        main(["recommend", str(runs["ease"]), "--user", str(users[0]), "--explore", "1"])
    assert "VAE family" in str(info.value.code) and "\n" not in str(info.value.code)


def test_the_server_takes_explore_seed_and_uncertainty(runs, vae_run):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from recvae.serving.server import create_app

    user = vae_run.user_ids[3].item()
    expected = vae_run.recommend([user], k=5, explore=1.0, seed=4, uncertainty=True, id_columns="fixed")
    with TestClient(create_app(runs["vae"], device="cpu")) as client:
        got = client.post("/recommend", json={"user_id": user, "k": 5, "explore": 1.0, "seed": 4,
                                              "uncertainty": True}).json()
        assert [i["item_id"] for i in got["items"]] == expected["item_id"].tolist()
        assert got["uncertainty"] == pytest.approx(float(expected["uncertainty"].iloc[0]), rel=1e-5)
        plain = client.post("/recommend", json={"user_id": user, "k": 5}).json()
        assert plain["uncertainty"] is None
        assert [i["item_id"] for i in plain["items"]] == vae_run.recommend([user], k=5)["item_id"].tolist()
        batch = client.post("/recommend/batch", json={"user_ids": [user], "k": 5, "explore": 1.0, "seed": 4,
                                                      "uncertainty": True}).json()
        assert batch["results"][0]["items"] == got["items"] and batch["results"][0]["uncertainty"] is not None
        items = vae_run.item_ids[:3].tolist()
        new = client.post("/recommend/new-user", json={"item_ids": items, "k": 5, "explore": 2.0,
                                                       "uncertainty": True}).json()
        local = vae_run.recommend_for_items(items, k=5, explore=2.0, uncertainty=True, id_columns="fixed")
        assert [i["item_id"] for i in new["items"]] == local["item_id"].tolist()
        assert new["uncertainty"] == pytest.approx(float(local["uncertainty"].iloc[0]), rel=1e-5)
        bad = client.post("/recommend", json={"user_id": user, "explore": -1})
        assert bad.status_code == 422
    ease = Run.load(runs["ease"], device="cpu")
    with TestClient(create_app(ease)) as client:
        refused = client.post("/recommend", json={"user_id": ease.user_ids[0].item(), "explore": 0.5})
        assert refused.status_code == 422 and "VAE family" in refused.json()["detail"]
        refused = client.post("/recommend/batch", json={"user_ids": [ease.user_ids[0].item()], "uncertainty": True})
        assert refused.status_code == 422 and "\n" not in refused.json()["detail"]
