"""The joint model's sparse item-item path (issue 30, part 1): the same model as the dense one where both
fit, chosen by memory, saved and loaded, scored in blocks, and trained with chunked or sampled softmax.

Oracles: the dense form (EDLAE's closed form, already pinned by tests/test_joint_wiring.py), dense
products ``x W`` in float64, the likelihoods' own ``nll`` of full logits, and sampled softmax with the
linear path folded into its output layer by hand.
"""

import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recvae.data import SyntheticConfig, synthetic_log
from recvae.models import load_model
from recvae.models.ease import ease_memory_bytes, edlae_weights
from recvae.models.files import ModelFileError
from recvae.models.joint import (REFERENCE_SPREAD, JointVAE, choose_linear_form, dense_linear_parts,
                                 linear_path_spread)
from recvae.models.sparse_ease import sparse_ease_weights
from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.sampled import sampled_softmax_nll
from recvae.nn.sparse import DeviceCSR
from recvae.runs import Run, SplitSpec
from recvae.runtime.memory import InsufficientMemoryError, describe_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS = 60
TINY = dict(hidden_dim=16, latent_dim=4)
FIT = dict(**TINY, epochs=2, batch_size=50, progress=False, seed=0, device="cpu")


def _matrix(n_users=120, n_items=N_ITEMS, seed=0, density=0.12):
    matrix = sp.random(n_users, n_items, density=density, format="csr", random_state=seed, dtype=np.float32)
    matrix.data[:] = 1.0
    return matrix


def _rows(matrix):
    return DeviceCSR(matrix, "cpu").rows(torch.arange(matrix.shape[0]))


@pytest.fixture(scope="module")
def matrix():
    return _matrix()


# ----------------------------------------------------------------------------- the same model in both forms


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_sparse_ease_with_edlae_dropout_and_every_neighbour_is_edlae(matrix, dropout):
    sparse = sparse_ease_weights(matrix, 15.0, N_ITEMS - 1, dropout=dropout).toarray()
    np.testing.assert_allclose(sparse, edlae_weights(matrix, 15.0, dropout), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("train_linear", [False, True])
def test_sparse_and_dense_forms_train_to_the_same_scores(matrix, train_linear):
    params = dict(linear_l2=15.0, linear_dropout=0.0, linear_neighbours=N_ITEMS - 1, train_linear=train_linear,
                  **FIT)
    dense = JointVAE(linear_form="dense", **params).fit(matrix)
    sparse = JointVAE(linear_form="sparse", **params).fit(matrix)
    assert dense.net_.decoder.form == "dense" and sparse.net_.decoder.form == "sparse"
    rows = _matrix(n_users=15, seed=3)
    np.testing.assert_allclose(sparse.score(rows), dense.score(rows), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sparse.net_.decoder.item_item.to_scipy().toarray(),
                               dense.net_.decoder.item_item.weight.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_a_trained_sparse_w_learns_its_stored_values_only(matrix):
    model = JointVAE(linear_form="sparse", linear_neighbours=5, linear_l2=15.0, train_linear=True,
                     linear_weight_decay=0.25, **{**FIT, "lr": 1e-2}).fit(matrix)
    item_item = model.net_.decoder.item_item
    start = sparse_ease_weights(matrix, 15.0, 5, dropout=model.config.linear_dropout)
    learned = item_item.to_scipy()
    assert isinstance(item_item.values, torch.nn.Parameter) and item_item.values.ndim == 1
    assert item_item.values.weight_decay == 0.25
    assert np.diff(start.indptr).max() > 5  # a popular item is a neighbour of more than k items...
    assert (start.getnnz(axis=0) <= 5).all()  # ...while each item keeps at most k inputs
    np.testing.assert_array_equal(learned.indptr, start.indptr)
    np.testing.assert_array_equal(learned.indices, start.indices)
    assert np.abs(learned.data - start.data).max() > 1e-3 and learned.diagonal().max() == 0


def test_frozen_sparse_w_is_sparse_ease_and_stays_a_buffer(matrix):
    model = JointVAE(linear_form="sparse", linear_neighbours=7, linear_l2=15.0, linear_dropout=0.2, **FIT).fit(matrix)
    item_item = model.net_.decoder.item_item
    assert "values" in dict(item_item.named_buffers())
    expected = sparse_ease_weights(matrix, 15.0, 7, dropout=0.2)
    assert (item_item.to_scipy() != expected).nnz == 0


# ----------------------------------------------------------------------------- the choice


def test_auto_takes_dense_up_to_half_the_memory_then_sparse_and_logs_why(caplog):
    config = JointVAEConfig(**TINY)
    need = sum(dense_linear_parts(N_ITEMS, config).values())
    assert need == 4 * N_ITEMS**2 + ease_memory_bytes(N_ITEMS)  # W and EDLAE's closed-form start
    with caplog.at_level(logging.INFO, logger="recvae.models.joint"):
        assert choose_linear_form(N_ITEMS, config, available=2 * need) == "dense"
        assert choose_linear_form(N_ITEMS, config, available=2 * need - 1) == "sparse"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "dense item-item path for 60 items" in lines[0] and "sparse item-item path for 60 items" in lines[1]
    assert f"the dense form needs {describe_bytes(need)}" in lines[1] and "64 neighbours per item" in lines[1]
    trained = JointVAEConfig(**TINY, train_linear=True)
    assert sum(dense_linear_parts(N_ITEMS, trained).values()) == 16 * N_ITEMS**2 + ease_memory_bytes(N_ITEMS)


def _dense_needs(monkeypatch, bytes_: int) -> None:
    """The dense path's need, faked (at 60 items it is smaller than the VAE's own fixed allowances, so
    faking the available memory instead would refuse the whole fit)."""
    monkeypatch.setattr("recvae.models.joint.dense_linear_parts", lambda n_items, config: {"W": bytes_})


def test_auto_fit_goes_sparse_when_dense_does_not_fit(monkeypatch, matrix):
    _dense_needs(monkeypatch, 2**50)
    model = JointVAE(linear_neighbours=5, **FIT).fit(matrix)
    assert model.net_.decoder.form == "sparse" and model.net_.decoder.item_item.nnz <= 5 * N_ITEMS


def test_forced_dense_that_does_not_fit_is_refused_before_anything_is_built(monkeypatch, matrix):
    _dense_needs(monkeypatch, 2**50)
    monkeypatch.setattr("recvae.models.joint.edlae_weights", lambda *a: pytest.fail("the start was computed"))
    model = JointVAE(linear_form="dense", **FIT)
    with pytest.raises(InsufficientMemoryError) as err:
        model.fit(matrix)
    message = str(err.value)
    assert "\n" not in message and model.net_ is None
    assert "dense item-item path on 60 items" in message and "W: " in message
    assert "linear_form='sparse' (--param linear_form=sparse)" in message


@pytest.mark.parametrize("bad, needle", [
    ({"linear_form": "csr"}, "linear_form='csr': expected one of"),
    ({"linear_neighbours": 0}, "linear_neighbours=0: expected an integer >= 1"),
    ({"linear_neighbours": 2.5}, "linear_neighbours=2.5: expected an integer"),
    ({"paths": "linear", "item_chunk": 10}, "paths='linear' scores the item-item path alone"),
])
def test_bad_sparse_settings_are_refused_in_one_line(bad, needle):
    with pytest.raises(ValueError, match=needle) as err:
        JointVAE(**bad)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- save, load, blocks, runs


@pytest.fixture(scope="module")
def sparse_model(matrix):
    return JointVAE(linear_form="sparse", linear_neighbours=6, train_linear=True, linear_l2=15.0, **FIT).fit(matrix)


def test_sparse_model_saves_and_loads_with_identical_scores(tmp_path, sparse_model):
    loaded = load_model(sparse_model.save(tmp_path / "joint.pt"), device="cpu")
    assert loaded.net_.decoder.form == "sparse"
    assert loaded.get_params() == {**sparse_model.get_params(), "device": "cpu"}
    rows = _matrix(n_users=10, seed=4)
    np.testing.assert_array_equal(loaded.score(rows), sparse_model.score(rows))


@pytest.mark.parametrize("damage, needle", [
    (lambda s: s["decoder.item_item.indices"].__setitem__(0, 10**6), "column indices leave"),
    (lambda s: s["decoder.item_item.indptr"].__setitem__(-1, 3), "row pointers are not a CSR index"),
    (lambda s: s.__setitem__("decoder.item_item.values", s["decoder.item_item.values"][:-1]), "weights for"),
    (lambda s: s["decoder.item_item.indices"].__setitem__(0, 0), "diagonal|not sorted"),
])
def test_a_damaged_sparse_w_is_refused_on_load_in_one_line(tmp_path, sparse_model, damage, needle):
    path = sparse_model.save(tmp_path / "joint.pt")
    payload = torch.load(path, weights_only=True)
    damage(payload["state_dict"])
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=needle) as err:
        load_model(path, device="cpu")
    assert "\n" not in str(err.value) and "re-train" in str(err.value)


def test_sparse_blocks_are_the_scores_columns_and_count_their_terms(sparse_model):
    rows = _matrix(n_users=9, seed=5)
    full = sparse_model.score(rows)
    assert sparse_model.block_scoring
    for start, stop in ((0, 7), (7, 23), (23, N_ITEMS)):
        np.testing.assert_allclose(sparse_model.score_items(rows, start, stop), full[:, start:stop],
                                   rtol=1e-5, atol=1e-5)
    w = sparse_model.net_.decoder.item_item.to_scipy()
    terms = int(np.diff(w.indptr)[rows.indices].sum())
    assert sparse_model.block_score_bytes(rows) == pytest.approx(40.0 * terms / (9 * N_ITEMS))


def test_a_run_of_the_sparse_joint_model_recommends_evaluates_and_embeds(tmp_path):
    log = synthetic_log(SyntheticConfig(n_users=160, n_items=40, seed=7, mean_events_per_user=12))
    params = {**TINY, "epochs": 1, "batch_size": 64, "progress": False, "linear_form": "sparse",
              "linear_neighbours": 8}
    Run.fit(log, "joint-vae", params=params, split=SplitSpec(heldout_users=8), output=tmp_path / "run",
            report=lambda _: None)
    run = Run.load(tmp_path / "run")
    assert run.model.net_.decoder.form == "sparse"
    user = run.user_ids[0]
    recs = run.recommend([user], k=5)
    assert len(recs) == 5 and np.isfinite(recs["score"]).all()
    assert 0.0 <= run.evaluate("test", ks=[10])["ndcg@10"] <= 1.0
    mu, sigma = run.model.embed_users(_matrix(n_users=3, n_items=run.n_items))
    assert mu.shape == (3, TINY["latent_dim"])
    assert len(run.similar_items([run.item_ids[0]], k=3)) == 3


# ----------------------------------------------------------------------------- large catalogues


def _twin_nets(form, likelihood="multinomial", fusion=True, **large):
    """Two nets, one with full logits and one with ``large`` (item_chunk / sampled_softmax), same weights."""
    config = dict(**TINY, likelihood=likelihood, fusion_gradient=fusion, train_linear=True, vae_loss_weight=0.5)
    full = JointVAENet(N_ITEMS, JointVAEConfig(**config), form)
    other = JointVAENet(N_ITEMS, JointVAEConfig(**config, **large), form)
    weight = sparse_ease_weights(_matrix(seed=8), 5.0, 9)
    for net in (full, other):
        net.decoder.item_item.set_weight(weight if form == "sparse" else torch.from_numpy(weight.toarray()))
    other.load_state_dict(full.state_dict())
    return full.train(), other.train()


@pytest.mark.parametrize("form", ["dense", "sparse"])
@pytest.mark.parametrize("likelihood", ["multinomial", "bernoulli", "gaussian"])
def test_chunked_joint_nll_and_gradients_equal_the_full_logits(form, likelihood):
    full, chunked = _twin_nets(form, likelihood, item_chunk=7)
    x = _rows(_matrix(n_users=12, seed=2))
    z = torch.randn(12, TINY["latent_dim"], generator=torch.Generator().manual_seed(1))
    grads = []
    for net in (full, chunked):
        nll = net.reconstruction_nll(z, x)
        nll.sum().backward()
        item_item = net.decoder.item_item
        w = item_item.values if form == "sparse" else item_item.weight
        grads.append((nll.detach(), net.decoder.latent.weight.grad, net.decoder.log_scale.grad, w.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_item_item_at_candidates_and_blocks_are_the_dense_product(form):
    full, _ = _twin_nets(form)
    matrix = _matrix(n_users=12, seed=2)
    x, item_item = _rows(matrix), full.decoder.item_item
    w = sparse_ease_weights(_matrix(seed=8), 5.0, 9).toarray().astype(np.float64)
    product = matrix.toarray() @ w
    items = torch.tensor([41, 3, 17, 59, 0])
    torch.testing.assert_close(item_item.at(x, None, items).double(), torch.from_numpy(product[:, items.numpy()]))
    torch.testing.assert_close(item_item.block(x, None, 13, 29).double(), torch.from_numpy(product[:, 13:29]))
    torch.testing.assert_close(item_item(x).double(), torch.from_numpy(product))


@pytest.mark.parametrize("form", ["dense", "sparse"])
def test_sampled_joint_nll_adds_the_linear_logits_at_the_candidates(form):
    full, sampled = _twin_nets(form, sampled_softmax=15, fusion=True)
    matrix = _matrix(n_users=12, seed=2)
    x = _rows(matrix)
    z = torch.randn(12, TINY["latent_dim"], generator=torch.Generator().manual_seed(1))
    got = sampled.reconstruction_nll(z, x, torch.Generator().manual_seed(5))
    # The oracle: the same draws, the linear path folded into the output layer (h' = [z, s x W], W' = [D, I]).
    generator = torch.Generator().manual_seed(5)
    sampler, latent = sampled.item_output.sampler, sampled.decoder.latent
    first = sampler.sample(15, generator)
    second = sampler.sample(15, generator)
    with torch.no_grad():
        linear = sampled.decoder.scale * full.decoder.item_item(x)
        h = torch.cat([z, linear], dim=1)
        weight = torch.cat([latent.weight, torch.eye(N_ITEMS)], dim=1)
        expected = sampled_softmax_nll(h, weight, latent.bias, x, *first) + \
            0.5 * sampled_softmax_nll(z, latent.weight, latent.bias, x, *second)
    torch.testing.assert_close(got.detach(), expected, rtol=1e-4, atol=1e-4)
    got.sum().backward()
    w = sampled.decoder.item_item.values if form == "sparse" else sampled.decoder.item_item.weight
    assert w.grad.abs().sum() > 0 and sampled.decoder.log_scale.grad.abs() > 0


@pytest.mark.parametrize("large", [{"item_chunk": 16}, {"sampled_softmax": 20},
                                   {"sampled_softmax": 20, "sparse_item_updates": True}])
def test_a_sparse_joint_fit_with_chunked_or_sampled_softmax_learns(matrix, large):
    model = JointVAE(linear_form="sparse", linear_neighbours=6, train_linear=True, linear_l2=15.0,
                     **{**FIT, **large}).fit(matrix)
    assert np.isfinite(model.history_["loss"]).all()
    start = sparse_ease_weights(matrix, 15.0, 6, dropout=model.config.linear_dropout)
    assert np.abs(model.net_.decoder.item_item.to_scipy().data - start.data).max() > 0
    assert np.isfinite(model.score(_matrix(n_users=4, seed=6))).all()


def test_the_fit_plan_counts_the_item_item_path_in_the_form_it_will_take(monkeypatch):
    """A joint fit's memory plan holds its W (dense or sparse, as auto would pick), so at a catalogue where
    neither the VAE nor W fits the fit refuses in one line before the net is built."""
    from recvae.models.joint import JointVAE, dense_linear_parts, linear_path_parts
    from recvae.nn.joint import JointVAEConfig

    n = 80_000
    dense = dense_linear_parts(n, JointVAEConfig())
    assert linear_path_parts(n, JointVAEConfig(), available=4 * sum(dense.values())) == dense
    sparse = linear_path_parts(n, JointVAEConfig(), available=2**34)
    assert sparse == {"sparse item-item W": 20 * n * 64}
    assert linear_path_parts(n, JointVAEConfig(paths="vae"), available=0) == {}
    model = JointVAE(epochs=1, progress=False)
    plan = model.memory_parts(1000, n, 10_000)
    assert plan["sparse item-item W"] == 20 * n * 64 and len(plan) > 1  # beside the VAE's own parts
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: 2**20)
    built = []
    monkeypatch.setattr(JointVAE, "_build_net", lambda self, n_items: built.append(n_items))
    import scipy.sparse as sp
    from recvae.runtime.memory import InsufficientMemoryError, describe_bytes

    with pytest.raises(InsufficientMemoryError) as caught:
        model.fit(sp.random(50, n, density=1e-4, format="csr", dtype="float32", random_state=0))
    assert "\n" not in str(caught.value) and "sparse item-item W" in str(caught.value) and built == []


def test_the_linear_path_spread_is_each_users_top1_minus_top100_median():
    m = _matrix(n_users=300, seed=4)
    weights = sparse_ease_weights(m, 20.0, 10)
    scores = (m @ weights).toarray()
    top = np.sort(scores, axis=1)[:, -50:]
    spread = top[:, -1] - top[:, 0]
    expected = float(np.median(spread[spread > 0]))
    assert linear_path_spread(m, weights, n_rows=300, top=50) == pytest.approx(expected, rel=1e-6)
    assert linear_path_spread(m, weights.toarray(), n_rows=300, top=50) == pytest.approx(expected, rel=1e-5)
    assert linear_path_spread(m, sp.csr_matrix(weights.shape, dtype=np.float32)) == 0.0


@pytest.mark.parametrize("form", ["dense", "sparse"])
@pytest.mark.parametrize("calibrate", [True, False])
def test_the_scale_starts_calibrated_to_the_logs_density(monkeypatch, matrix, form, calibrate):
    """s starts at linear_scale x REFERENCE_SPREAD / spread, so a sparse log's small x W is not drowned."""
    seen = {}

    def capture(net, *args, **kwargs):
        seen["scale"] = float(net.decoder.scale.detach())
        raise RuntimeError("stop here")

    monkeypatch.setattr("recvae.models.joint.train_recvae", capture)
    model = JointVAE(linear_form=form, linear_scale=10.0, calibrate_scale=calibrate, linear_neighbours=N_ITEMS - 1,
                     linear_dropout=0.0, linear_l2=20.0, **FIT)
    with pytest.raises(RuntimeError, match="stop here"):
        model.fit(matrix)
    weights = sparse_ease_weights(matrix, 20.0, N_ITEMS - 1)
    expected = 10.0 * REFERENCE_SPREAD / linear_path_spread(matrix, weights) if calibrate else 10.0
    assert seen["scale"] == pytest.approx(expected, rel=1e-3)
