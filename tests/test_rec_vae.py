import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributions as D
import torch.nn.functional as F
from conftest import random_rows

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models.base import NotFittedError
from recvae.models.baselines import Popularity
from recvae.models.rec_vae import RecVAE, RecVAEConfig, RecVAENet, composite_prior_log_prob
from recvae.training.rec_vae import _train_phase
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.training import TrainingConfig

FAST = TrainingConfig(epochs=8, batch_size=100, lr=5e-4, progress=False, seed=0)
SMALL = RecVAEConfig(hidden_dim=64, latent_dim=16)  # for the tests that fit several times


# The machine is shared; on 2 busy cores one thread is many times faster than two.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=800, n_items=400, seed=0))
    return strong_generalization(data, 80)


@pytest.fixture(scope="module")
def fitted(split):
    return RecVAE(training=FAST).fit(split)


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def fitted_in_each_precision(request, split):
    """The ``fitted`` model trained in fp32 and in bf16 (emulated, slowly, on CPUs without native bf16)."""
    return RecVAE(training=dataclasses.replace(FAST, precision=request.param)).fit(split)


@pytest.fixture(scope="module")
def small(split):
    return RecVAE(SMALL, dataclasses.replace(FAST, epochs=3)).fit(split)


def _popularity(split):
    """The popularity baseline every VAE must beat."""
    return Popularity().fit(split)


def _tiny_net(items=50, **kw):
    torch.manual_seed(0)
    return RecVAENet(items, RecVAEConfig(hidden_dim=16, latent_dim=4, **kw))


@pytest.mark.parametrize("mixture", ["per_dim", "joint"])
def test_composite_prior_matches_torch_distributions(mixture):
    g = torch.Generator().manual_seed(0)
    z, mu = torch.randn(7, 5, generator=g) * 3, torch.randn(7, 5, generator=g)
    log_var = torch.randn(7, 5, generator=g)
    weights = (3 / 20, 3 / 4, 1 / 10)
    zeros = torch.zeros_like(z)
    locs = torch.stack([zeros, mu, zeros], dim=-1)  # (..., 3 components)
    scales = torch.stack([torch.ones_like(z), torch.exp(0.5 * log_var), torch.full_like(z, math.exp(5.0))], dim=-1)
    mix = D.Categorical(probs=torch.tensor(weights))
    if mixture == "per_dim":  # a mixture in every dimension, log-densities summed over dimensions
        expected = D.MixtureSameFamily(mix, D.Normal(locs, scales)).log_prob(z).sum(-1)
    else:  # a mixture of three diagonal Gaussians over whole vectors
        comps = D.Independent(D.Normal(locs.transpose(-1, -2), scales.transpose(-1, -2)), 1)
        expected = D.MixtureSameFamily(mix, comps).log_prob(z)
    got = composite_prior_log_prob(z, mu, log_var, weights, 10.0, mixture)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.shape == (7,)


def test_phases_update_only_their_part():
    net = _tiny_net()
    data, users = DeviceCSR(random_rows(n=30), "cpu"), torch.arange(30)
    g = torch.Generator().manual_seed(0)

    def snapshot():
        return {k: v.clone() for k, v in net.state_dict().items()}

    for phase, changes in (("encoder", "encoder."), ("decoder", "decoder.")):
        optimizer = torch.optim.Adam(getattr(net, phase).parameters(), lr=1e-2, fused=True)
        before = snapshot()
        out = _train_phase(net, phase, optimizer, data, users, g, passes=1, batch_size=10)
        assert torch.isfinite(out).all()
        after = snapshot()
        for name in before:
            same = torch.equal(before[name], after[name])
            assert same != name.startswith(changes), (phase, name)  # the prior's encoder never moves
    assert all(p.requires_grad for p in [*net.encoder.parameters(), *net.decoder.parameters()])
    assert not any(p.requires_grad for p in net.prior_encoder.parameters())


def test_update_prior_copies_the_encoder_and_its_posterior_is_dropout_free():
    net = _tiny_net().train()
    with torch.no_grad():
        for p in net.encoder.parameters():
            p.add_(0.1)
    x = SparseRows.from_scipy(random_rows())
    net.update_prior()
    expected = net.encode(x, dropout=False)
    got = net.prior_encoder(x.to_sparse_csr(x.values / x.row_sums().sqrt()[x.row_of_entry]))
    torch.testing.assert_close(got, expected)


def test_beta_is_gamma_times_row_size():
    dense = np.zeros((2, 50), np.float32)
    dense[0, :3] = 1.0
    dense[1, 10:17] = 1.0
    x = SparseRows.from_scipy(sp.csr_matrix(dense))
    net = _tiny_net(gamma=0.005).eval()
    torch.testing.assert_close(net.kl_weight(x), torch.tensor([0.015, 0.035]))
    nll, kl = net.terms(x)  # eval: z = mu, deterministic
    parts = net.loss(x)
    torch.testing.assert_close(parts["loss"], (nll + torch.tensor([0.015, 0.035]) * kl).mean())
    constant = _tiny_net(gamma=None, beta=0.2).eval()
    torch.testing.assert_close(constant.kl_weight(x), torch.tensor([0.2, 0.2]))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_sparse_encoder_equals_dense_reference(dropout):
    m = random_rows()
    net = _tiny_net(input_dropout=dropout).train()
    mu, log_var = net.encode(SparseRows.from_scipy(m), torch.Generator().manual_seed(7))
    # Dense reference: the same mask, drawn over the nonzeros in CSR order from the same seed.
    dense = torch.from_numpy(m.toarray())
    normalised = dense / dense.norm(dim=1, keepdim=True)
    if dropout:
        keep = torch.rand(m.nnz, generator=torch.Generator().manual_seed(7)) >= dropout
        mask = torch.zeros_like(dense)
        coo = m.tocoo()
        mask[coo.row, coo.col] = keep.float() / (1 - dropout)
        normalised = normalised * mask
    enc = net.encoder

    def ln(h, k):
        return F.layer_norm(h, (16,), enc.norms[k].weight, enc.norms[k].bias, eps=0.1)

    hs = [ln(F.silu(normalised @ enc.input_layer.weight + enc.input_layer.bias), 0)]
    for k, fc in enumerate(enc.layers, start=1):  # h_k = LN(swish(fc_k(h_{k-1}) + h_1 + ... + h_{k-1}))
        hs.append(ln(F.silu(fc(hs[-1]) + sum(hs)), k))
    assert len(hs) == 5
    torch.testing.assert_close(mu, enc.mu(hs[-1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_var, enc.log_var(hs[-1]), rtol=1e-5, atol=1e-5)


@pytest.mark.precision
def test_beats_popularity_by_a_wide_margin(fitted_in_each_precision, split):
    # In both training precisions: the margin, and the selected epoch's score is evaluate's to the last bit.
    fitted = fitted_in_each_precision
    history = fitted.history_
    assert {"epoch", "loss", "nll", "kl", "train_seconds", "val_ndcg@100", "eval_seconds"} <= set(history.columns)
    assert set(history["precision"]) == {fitted.training.precision}
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    ours = evaluate(fitted, split, "validation")["ndcg@100"]
    popularity = evaluate(_popularity(split), split, "validation")["ndcg@100"]
    assert ours > popularity + 0.1, (ours, popularity)
    assert ours == history["val_ndcg@100"].max() == fitted.training_.best_score
    assert fitted.training_.best_epoch == int(history["val_ndcg@100"].idxmax()) + 1
    assert fitted.training_.steps == 8 * 4 * 7  # (3 encoder + 1 decoder passes) x 7 batches per epoch


def test_same_seed_same_model_other_seed_differs(split, small):
    cfg = dataclasses.replace(FAST, epochs=3)
    rows = split.test.fold_in[:20]
    np.testing.assert_array_equal(RecVAE(SMALL, cfg).fit(split).score(rows), small.score(rows))
    other = RecVAE(SMALL, dataclasses.replace(cfg, seed=1, epochs=1)).fit(split)
    assert not np.array_equal(other.score(rows), small.score(rows))


def test_fit_leaves_global_rng_alone(split):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    RecVAE(SMALL, dataclasses.replace(FAST, epochs=1)).fit(split)
    torch.testing.assert_close(torch.rand(3), expected)


def test_save_load_identical_scores(tmp_path, fitted, split):
    path = fitted.save(tmp_path / "model.pt")
    loaded = RecVAE.load(path, device="cpu")
    rows = split.test.fold_in
    np.testing.assert_array_equal(loaded.score(rows), fitted.score(rows))
    np.testing.assert_array_equal(loaded.item_ids_, fitted.item_ids_)
    assert loaded.config == fitted.config
    assert len(loaded.history_) == 8
    torch.load(path, weights_only=True)  # no arbitrary pickles inside


def test_recommend_filters_seen_items(small, split):
    rows = split.test.fold_in
    recs = small.recommend(rows, k=10)
    assert recs.items.shape == (rows.shape[0], 10)
    seen = rows[np.repeat(np.arange(rows.shape[0]), 10), recs.items.ravel()]
    assert seen.sum() == 0
    np.testing.assert_array_equal(recs.item_ids, split.item_ids[recs.items])
    history = split.item_ids[[3, 10, 42]]
    assert not set(small.recommend_for_items(history, k=20).item_ids.ravel()) & set(history.tolist())


def test_embeddings(small, split):
    mu, sigma = small.embed_users(split.test.fold_in)
    assert mu.shape == sigma.shape == (split.test.n_users, 16)
    assert (sigma > 0).all()
    np.testing.assert_array_equal(mu, small.embed_users(split.test.fold_in)[0])  # no dropout
    assert small.item_embeddings().shape == (split.n_items, 16)


def test_checkpoint_resume_continues_identically(tmp_path, split):
    base = dataclasses.replace(FAST, epochs=4)
    straight = RecVAE(SMALL, base).fit(split)
    ckpt = str(tmp_path / "ckpt.pt")
    RecVAE(SMALL, dataclasses.replace(base, epochs=2, checkpoint=ckpt)).fit(split)
    csv = tmp_path / "history.csv"
    resumed = RecVAE(SMALL, dataclasses.replace(base, checkpoint=ckpt, resume=True, history_csv=str(csv))).fit(split)
    assert list(resumed.history_["epoch"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history_["loss"], straight.history_["loss"], rtol=1e-5)
    rows = split.test.fold_in
    np.testing.assert_allclose(resumed.score(rows), straight.score(rows), rtol=1e-4, atol=1e-5)
    assert csv.read_text().startswith("epoch,")
    torch.load(ckpt, weights_only=True)


def test_bad_inputs_raise_clear_errors(tmp_path, small, split):
    with pytest.raises(NotFittedError, match="fit"):
        RecVAE().recommend(split.test.fold_in)
    with pytest.raises(ValueError, match="item columns"):
        small.score(sp.csr_matrix((2, split.n_items + 1), dtype=np.float32))
    with pytest.raises(TypeError, match="Split, an Interactions"):
        RecVAE().fit("ratings.csv")
    with pytest.raises(ValueError, match="exactly one of gamma"):
        RecVAEConfig(gamma=None)
    with pytest.raises(ValueError, match="exactly one of gamma"):
        RecVAEConfig(beta=0.2)
    with pytest.raises(ValueError, match="prior_weights"):
        RecVAEConfig(prior_weights=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="likelihood='poisson': expected one of"):
        RecVAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="encoder_epochs"):
        RecVAEConfig(encoder_epochs=0)
    torch.save({"format": "recvae.vae/1"}, tmp_path / "mult_vae.pt")
    with pytest.raises(ValueError, match="not a RecVAE"):
        RecVAE.load(tmp_path / "mult_vae.pt")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned"])
def test_other_likelihoods_train(split, likelihood):
    model = RecVAE(dataclasses.replace(SMALL, likelihood=likelihood), dataclasses.replace(FAST, epochs=1)).fit(split)
    assert np.isfinite(model.history_["loss"]).all()
    assert model.score(split.test.fold_in[:3]).shape == (3, split.n_items)
