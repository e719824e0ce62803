import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import random_rows

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import VAE, AnnealConfig, MultDAE, MultVAE, NotFittedError, Popularity, VAEConfig
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.training import TrainingConfig

# The machine is shared; on 2 busy cores two torch threads spin against each other (a 1 s fit took
# 40 s on a loaded machine), while one thread keeps its pace.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = TrainingConfig(epochs=12, batch_size=100, progress=False, seed=0)


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=800, n_items=400, seed=0))
    return strong_generalization(data, 80)


@pytest.fixture(scope="module")
def fitted(split):
    return MultVAE(training=FAST).fit(split)


def _popularity(split):
    """The popularity baseline every VAE must beat."""
    return Popularity().fit(split)


def test_device_csr_gathers_rows_like_scipy():
    m = random_rows(items=40, n=20)
    index = torch.tensor([5, 0, 19, 5, 7])
    batch = DeviceCSR(m, "cpu").rows(index)
    np.testing.assert_array_equal(batch.to_dense().numpy(), m[index.numpy()].toarray())


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_sparse_encoder_equals_dense_reference(dropout):
    m = random_rows()
    torch.manual_seed(0)
    net = VAE(m.shape[1], VAEConfig(hidden_dims=(16,), latent_dim=4, input_dropout=dropout)).train()
    x = SparseRows.from_scipy(m)
    mu, log_var = net.encode(x, torch.Generator().manual_seed(7))
    # Dense reference: the same mask, drawn over the nonzeros in CSR order from the same seed.
    dense = torch.from_numpy(m.toarray())
    normalised = dense / dense.norm(dim=1, keepdim=True)
    if dropout:
        keep = torch.rand(m.nnz, generator=torch.Generator().manual_seed(7)) >= dropout
        mask = torch.zeros_like(dense)
        coo = m.tocoo()
        mask[coo.row, coo.col] = keep.float() / (1 - dropout)
        normalised = normalised * mask
    h = normalised @ net.input_layer.weight + net.input_layer.bias
    out = net.encoder[0](torch.tanh(h))
    torch.testing.assert_close(mu, out[:, :4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_var, out[:, 4:], rtol=1e-5, atol=1e-5)


def test_encoder_never_densifies_the_batch(monkeypatch):
    calls = []
    monkeypatch.setattr(SparseRows, "to_dense", lambda self: calls.append(1))
    real_to_dense = torch.Tensor.to_dense
    monkeypatch.setattr(torch.Tensor, "to_dense", lambda self, *a, **k: calls.append(2) or real_to_dense(self, *a, **k))
    net = VAE(50, VAEConfig(hidden_dims=(8,), latent_dim=4))
    net.loss(SparseRows.from_scipy(random_rows()), beta=0.2)["loss"].backward()
    assert calls == []


def test_gradients_flow_through_the_reparameterisation():
    torch.manual_seed(0)
    net = VAE(50, VAEConfig(hidden_dims=(8,), latent_dim=4, input_dropout=0.0)).train()
    # z = mu + sigma * eps with sigma = exp(log_var / 2): dz/dmu = 1, dz/dlog_var = eps * sigma / 2.
    mu = torch.randn(6, 4, requires_grad=True)
    log_var = torch.randn(6, 4, requires_grad=True)
    z = net.reparameterize(mu, log_var, torch.Generator().manual_seed(5))
    eps = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    sigma = torch.exp(0.5 * log_var.detach())
    torch.testing.assert_close(z, mu.detach() + eps * sigma)
    upstream = torch.randn(6, 4)
    (z * upstream).sum().backward()
    torch.testing.assert_close(mu.grad, upstream)
    torch.testing.assert_close(log_var.grad, upstream * eps * sigma / 2)
    # In the loss, NLL only (beta = 0): the log-variance head gets gradient only through z.
    net.loss(SparseRows.from_scipy(random_rows()), beta=0.0, generator=torch.Generator().manual_seed(0))["loss"].backward()
    head = net.encoder[-1].weight.grad
    assert head[:4].abs().sum() > 0 and head[4:].abs().sum() > 0
    assert net.input_layer.weight.grad.abs().sum() > 0
    net.zero_grad()
    net.eval()  # no noise at inference: the log-variance head gets no NLL gradient
    net.loss(SparseRows.from_scipy(random_rows()), beta=0.0)["loss"].backward()
    assert net.encoder[-1].weight.grad[4:].abs().sum() == 0


def test_training_lowers_loss_and_beats_popularity(fitted, split):
    history = fitted.history_
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert history["val_ndcg@100"].max() > history["val_ndcg@100"].iloc[0]
    ours = evaluate(fitted, split, "test")["ndcg@100"]
    popularity = evaluate(_popularity(split), split, "test")["ndcg@100"]
    assert ours > popularity + 0.1, (ours, popularity)
    assert fitted.training_.best_epoch == int(history["val_ndcg@100"].idxmax()) + 1
    # The history's beta is computed apart from the loss; test_training.py checks the beta the loss used.
    assert 0 < history["beta"].iloc[-1] <= 0.2


def test_same_seed_same_model_other_seed_differs(split, fitted):
    again = MultVAE(training=FAST).fit(split)
    rows = split.test.fold_in[:20]
    np.testing.assert_array_equal(again.score(rows), fitted.score(rows))
    other = MultVAE(training=dataclasses.replace(FAST, seed=1, epochs=2)).fit(split)
    assert not np.array_equal(other.score(rows), fitted.score(rows))


def test_fit_leaves_global_rng_alone(split):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    MultVAE(training=dataclasses.replace(FAST, epochs=1)).fit(split)
    torch.testing.assert_close(torch.rand(3), expected)


def test_save_load_identical_scores(tmp_path, fitted, split):
    path = fitted.save(tmp_path / "model.pt")
    loaded = MultVAE.load(path, device="cpu")
    rows = split.test.fold_in
    np.testing.assert_array_equal(loaded.score(rows), fitted.score(rows))
    np.testing.assert_array_equal(loaded.item_ids_, fitted.item_ids_)
    assert loaded.config == fitted.config
    torch.load(path, weights_only=True)  # no arbitrary pickles inside


def test_recommend_filters_seen_items_and_maps_ids(fitted, split):
    rows = split.test.fold_in
    recs = fitted.recommend(rows, k=10)
    assert recs.items.shape == (rows.shape[0], 10)
    seen = rows[np.repeat(np.arange(rows.shape[0]), 10), recs.items.ravel()]
    assert seen.sum() == 0
    np.testing.assert_array_equal(recs.item_ids, split.item_ids[recs.items])
    assert (np.diff(recs.scores, axis=1) <= 0).all()
    history = split.item_ids[[3, 10, 42]]
    new = fitted.recommend_for_items(history, k=20)
    assert not set(new.item_ids.ravel()) & set(history.tolist())
    assert len(new.to_frame()) == 20


def test_embeddings(fitted, split):
    mu, sigma = fitted.embed_users(split.test.fold_in)
    assert mu.shape == sigma.shape == (split.test.n_users, 200)
    assert (sigma > 0).all()
    np.testing.assert_allclose(mu, fitted.embed_users(split.test.fold_in)[0])  # deterministic
    assert fitted.item_embeddings().shape == (split.n_items, 600)


def test_bad_inputs_raise_clear_errors(fitted, split):
    with pytest.raises(NotFittedError, match="fit"):
        MultVAE().recommend(split.test.fold_in)
    with pytest.raises(ValueError, match="item columns"):
        fitted.score(sp.csr_matrix((2, split.n_items + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        fitted.recommend(sp.csr_matrix((2, split.n_items), dtype=np.float32))
    with pytest.raises(KeyError, match="unknown item id"):
        fitted.recommend_for_items(["no-such-item"])
    with pytest.raises(ValueError, match="exceeds"):
        fitted.recommend(split.test.fold_in, k=split.n_items + 1)
    with pytest.raises(TypeError, match="scipy.sparse"):
        fitted.score([[1, 0]])
    with pytest.raises(TypeError, match="Split, an Interactions"):
        MultVAE().fit("ratings.csv")
    with pytest.raises(ValueError, match="likelihood='poisson': expected one of"):
        VAEConfig(likelihood="poisson")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian_learned"])
def test_other_likelihoods_train_and_beat_popularity(split, likelihood):
    # Bernoulli and learned-variance likelihoods learn more slowly than the multinomial one.
    model = MultVAE(VAEConfig(likelihood=likelihood), dataclasses.replace(FAST, epochs=20, lr=3e-3)).fit(split)
    assert np.isfinite(model.history_["loss"]).all()
    ours = evaluate(model, split, "validation")["ndcg@100"]
    popularity = evaluate(_popularity(split), split, "validation")["ndcg@100"]
    assert ours > popularity + 0.05, (likelihood, ours, popularity)


def test_mult_dae(split):
    model = MultDAE(training=dataclasses.replace(MultDAE.default_training(), epochs=8, batch_size=100, progress=False)).fit(split)
    assert (model.history_["kl"] == 0).all()
    mu, sigma = model.embed_users(split.test.fold_in[:5])
    assert mu.shape == (5, 200) and (sigma == 0).all()
    assert evaluate(model, split, "validation")["ndcg@100"] > evaluate(_popularity(split), split, "validation")["ndcg@100"]
    with pytest.raises(ValueError, match="deterministic"):
        MultDAE(VAEConfig())


def test_checkpoint_resume_continues_identically(tmp_path, split):
    base = dataclasses.replace(FAST, epochs=4, anneal=AnnealConfig(kind="constant", cap=0.1))
    straight = MultVAE(training=base).fit(split)
    ckpt = str(tmp_path / "ckpt.pt")
    MultVAE(training=dataclasses.replace(base, epochs=2, checkpoint=ckpt)).fit(split)
    resumed = MultVAE(training=dataclasses.replace(base, checkpoint=ckpt, resume=True)).fit(split)
    assert list(resumed.history_["epoch"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed.history_["loss"], straight.history_["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.score(split.test.fold_in), straight.score(split.test.fold_in), rtol=1e-4, atol=1e-5)


def test_early_stopping_and_history_csv(tmp_path, split):
    csv = tmp_path / "history.csv"
    cfg = dataclasses.replace(FAST, epochs=200, patience=2, lr=3e-2, history_csv=str(csv))
    model = MultVAE(training=cfg).fit(split)
    assert model.training_.stopped_early and len(model.history_) < 200
    assert len(model.history_) == model.training_.best_epoch + 2
    assert csv.read_text().startswith("epoch,")


def test_validation_without_targets_is_refused(split):
    empty = dataclasses.replace(split.validation, target=sp.csr_matrix(split.validation.target.shape, dtype=np.float32))
    with pytest.raises(ValueError, match="no validation user has a target"):
        MultVAE(training=FAST).fit(split.train, empty)


def test_bf16_autocast_trains_close_to_fp32(split):
    # bf16 matmuls are slow on CPUs without AVX-512 BF16, so this stays tiny.
    cfg = dataclasses.replace(FAST, epochs=6)
    fp32 = MultVAE(training=cfg).fit(split)
    bf16 = MultVAE(training=dataclasses.replace(cfg, precision="bf16")).fit(split)
    assert np.isfinite(bf16.history_["loss"]).all()
    a = evaluate(fp32, split, "validation")["ndcg@100"]
    b = evaluate(bf16, split, "validation")["ndcg@100"]
    assert abs(a - b) < 0.05, (a, b)
    with pytest.raises(ValueError, match="precision"):
        TrainingConfig(precision="fp16")
