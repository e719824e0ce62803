"""The joint VAE + item-item model's options reach what they should (issue 34: wiring, not maths).

Oracles are independent of the library's code paths: EDLAE's closed form in float64 numpy,
the fused logits ``D mu + b + s · x W`` as dense products, the multinomial NLL as
``-sum x log_softmax``, the linear path's input dropout redrawn from a twin generator,
memory and block byte counts by hand.
"""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import recvae.training.rec_vae as rec_vae_training
from recvae.models.ease import EDLAE, ease_memory_bytes
from recvae.models.joint import (JointVAE, choose_linear_form, dense_linear_parts, joint_memory_bytes,
                                 linear_path_parts)
from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.rec_vae import RecVAEConfig, RecVAENet
from recvae.nn.sparse import DeviceCSR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_ITEMS = 40
TINY = dict(hidden_dim=16, latent_dim=4)
FIT = dict(**TINY, epochs=1, batch_size=50, progress=False, seed=0, device="cpu")


def _matrix(n_users=60, n_items=N_ITEMS, seed=0, density=0.15):
    matrix = sp.random(n_users, n_items, density=density, format="csr", random_state=seed, dtype=np.float32)
    matrix.data[:] = 1.0
    return matrix


def _closed_form(matrix, l2, dropout):
    """EDLAE (Steck 2020) by hand, float64: B = I - P diagMat(1 / diag P), P = (G + L)^-1."""
    x = matrix.toarray().astype(np.float64)
    gram = x.T @ x
    penalty = l2 * np.eye(len(gram)) + dropout / (1.0 - dropout) * np.diag(np.diag(gram))
    inverse = np.linalg.inv(gram + penalty)
    weights = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


def _rows(matrix):
    return DeviceCSR(matrix, "cpu").rows(torch.arange(matrix.shape[0]))


def _net(seed=0, **config):
    torch.manual_seed(seed)
    net = JointVAENet(N_ITEMS, JointVAEConfig(**TINY, **config))
    with torch.no_grad():
        weight = torch.randn(N_ITEMS, N_ITEMS, generator=torch.Generator().manual_seed(seed + 1))
        net.decoder.item_item.set_weight(weight)
    return net


def _multinomial_nll(logits, dense):
    """-sum_i x_ui log softmax(l_u)_i per user."""
    return -(dense * torch.log_softmax(logits.double(), dim=1)).sum(dim=1)


# ----------------------------------------------------------------------------- the closed-form start


@pytest.mark.parametrize("l2, dropout", [(7.0, 0.4), (30.0, 0.0)])
def test_linear_l2_and_linear_dropout_reach_the_closed_form_start(l2, dropout):
    matrix = _matrix()
    model = JointVAE(linear_l2=l2, linear_dropout=dropout, **FIT).fit(matrix)
    weight = model.net_.decoder.item_item.weight.detach().numpy()
    np.testing.assert_allclose(weight, _closed_form(matrix, l2, dropout), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(weight, EDLAE(l2=l2, dropout=dropout).fit(matrix).weights_)
    assert np.count_nonzero(np.diag(weight)) == 0
    # ... and a start with the defaults would differ (the options matter at these sizes).
    assert np.abs(weight - _closed_form(matrix, 500.0, 0.25)).max() > 1e-3


def test_zeros_start_is_zero_not_the_closed_form():
    # Adam moves each weight by at most ~lr per step: a few steps at lr 1e-6 stay near the start.
    model = JointVAE(linear_init="zeros", train_linear=True, **{**FIT, "lr": 1e-6}).fit(_matrix())
    assert model.net_.decoder.item_item.weight.detach().abs().max() < 1e-4
    assert np.abs(_closed_form(_matrix(), 500.0, 0.25)).max() > 1e-3


def test_train_linear_makes_w_a_parameter_that_moves_else_a_buffer_that_stays():
    matrix = _matrix()
    start = _closed_form(matrix, 20.0, 0.25).astype(np.float32)
    frozen = JointVAE(linear_l2=20.0, train_linear=False, **{**FIT, "epochs": 2}).fit(matrix)
    item_item = frozen.net_.decoder.item_item
    assert "weight" in dict(item_item.named_buffers())
    assert not any(p is item_item.weight for p in frozen.net_.parameters())
    np.testing.assert_array_equal(item_item.weight.numpy(), EDLAE(l2=20.0, dropout=0.25).fit(matrix).weights_)

    trained = JointVAE(linear_l2=20.0, train_linear=True, **{**FIT, "epochs": 2, "lr": 1e-2}).fit(matrix)
    weight = trained.net_.decoder.item_item.weight
    assert any(p is weight for p in trained.net_.decoder.parameters())
    moved = weight.detach().numpy() - start
    assert np.abs(moved).max() > 1e-3
    assert np.count_nonzero(np.diag(weight.detach().numpy())) == 0


@pytest.mark.parametrize("train_linear", [False, True])
def test_linear_weight_decay_reaches_the_optimizer_for_w_only(monkeypatch, train_linear):
    made = []

    def spy(params, config):
        optimizer = original(params, config)
        made.append(optimizer)
        return optimizer

    original = rec_vae_training.make_optimizer
    monkeypatch.setattr(rec_vae_training, "make_optimizer", spy)
    model = JointVAE(train_linear=train_linear, linear_weight_decay=0.125, weight_decay=0.01, linear_l2=20.0,
                     **FIT).fit(_matrix())
    weight = model.net_.decoder.item_item.weight
    groups = [(group["weight_decay"], p) for optimizer in made for group in optimizer.param_groups
              for p in group["params"]]
    assert len(made) == 2
    holding_w = [decay for decay, p in groups if p is weight]
    assert holding_w == ([0.125] if train_linear else [])
    others = {decay for decay, p in groups if p is not weight}
    assert 0.125 not in others
    for decay, p in groups:
        if p is not weight:
            assert decay == (0.01 if p.ndim >= 2 else 0.0)


# ----------------------------------------------------------------------------- the scores of each path


@pytest.mark.parametrize("scale", [3.5, 10.0])
def test_linear_scale_is_the_starting_s_and_the_linear_path_alone_scores_s_x_w(scale):
    matrix = _matrix(n_users=12)
    net = _net(paths="linear", linear_scale=scale)
    assert float(net.decoder.scale.detach()) == pytest.approx(scale, rel=1e-6)
    weight = net.decoder.item_item.weight.detach().double().numpy()
    expected = scale * matrix.toarray().astype(np.float64) @ weight
    np.testing.assert_allclose(net.scores(_rows(matrix)).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_both_paths_score_latent_plus_scaled_linear_by_hand():
    matrix = _matrix(n_users=12)
    net = _net(linear_scale=2.5).eval()
    with torch.no_grad():
        net.decoder.log_scale.fill_(math.log(1.5))  # s = 2.5 * 1.5
    x = _rows(matrix)
    mu, _ = net.encode(x, dropout=False)
    decoder = net.decoder.latent
    dense = matrix.toarray().astype(np.float64)
    expected = (mu.detach().double().numpy() @ decoder.weight.detach().double().numpy().T
                + decoder.bias.detach().double().numpy()
                + 3.75 * dense @ net.decoder.item_item.weight.double().numpy())
    np.testing.assert_allclose(net.scores(x).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_vae_path_alone_scores_equal_recvae_weight_for_weight():
    matrix = _matrix(n_users=12)
    joint = _net(seed=3, paths="vae")
    torch.manual_seed(3)
    recvae = RecVAENet(N_ITEMS, RecVAEConfig(**TINY))
    x = _rows(matrix)
    torch.testing.assert_close(joint.scores(x), recvae.scores(x), rtol=0, atol=0)
    assert not joint.decoder.item_item.trainable


def test_fitted_scores_and_blocks_equal_the_dense_oracle():
    matrix, rows = _matrix(), _matrix(n_users=9, seed=5)
    for paths in ("both", "linear"):
        model = JointVAE(paths=paths, linear_l2=20.0, linear_scale=4.0, **FIT).fit(matrix)
        net = model.net_
        s = float(net.decoder.scale.detach())
        linear = s * rows.toarray().astype(np.float64) @ _closed_form(matrix, 20.0, 0.25)
        if paths == "both":
            mu, _ = net.eval().encode(_rows(rows), dropout=False)
            latent = net.decoder.latent(mu).detach().double().numpy()
        else:
            latent = 0.0
        expected = latent + linear
        np.testing.assert_allclose(model.score(rows), expected, rtol=1e-4, atol=1e-4)
        assert model.block_scoring
        np.testing.assert_allclose(model.score_items(rows, 7, 23), expected[:, 7:23], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the training loss


def _loss_parts(net, matrix, z, generator_seed, p):
    """The joint and latent logits by hand, the linear input dropped at rate p from a twin generator."""
    dense = torch.from_numpy(matrix.toarray()).double()
    x = _rows(matrix)
    values = x.values.double()
    if p:
        keep = torch.rand(x.values.shape, generator=torch.Generator().manual_seed(generator_seed)) >= p
        values = values * keep / (1.0 - p)
    dropped = torch.zeros_like(dense)
    dropped[x.row_of_entry.long(), x.col_indices.long()] = values
    latent = net.decoder.latent(z).double()
    linear = float(net.decoder.scale.detach()) * dropped @ net.decoder.item_item.weight.double()
    return dense, latent, linear


@pytest.mark.parametrize("weight, fusion", [(0.7, False), (0.0, True), (1.3, True)])
def test_vae_loss_weight_adds_exactly_weight_times_the_latent_nll(weight, fusion):
    matrix = _matrix(n_users=10)
    net = _net(vae_loss_weight=weight, fusion_gradient=fusion).train()
    z = torch.randn(10, TINY["latent_dim"], generator=torch.Generator().manual_seed(9))
    dense, latent, linear = _loss_parts(net, matrix, z, 0, 0.0)
    expected = _multinomial_nll(latent + linear, dense) + weight * _multinomial_nll(latent, dense)
    got = net.reconstruction_nll(z, _rows(matrix), torch.Generator().manual_seed(0))
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("p", [0.3, 0.6])
def test_linear_input_dropout_in_training_is_drawn_from_the_generator_at_rate_p(p):
    matrix = _matrix(n_users=10, density=0.4)
    net = _net(linear_input_dropout=p, vae_loss_weight=0.5, input_dropout=0.9).train()
    z = torch.randn(10, TINY["latent_dim"], generator=torch.Generator().manual_seed(9))
    dense, latent, linear = _loss_parts(net, matrix, z, 11, p)
    expected = _multinomial_nll(latent + linear, dense) + 0.5 * _multinomial_nll(latent, dense)
    got = net.reconstruction_nll(z, _rows(matrix), torch.Generator().manual_seed(11))
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-4)
    # ... not the undropped loss
    _, _, undropped = _loss_parts(net, matrix, z, 11, 0.0)
    plain = _multinomial_nll(latent + undropped, dense) + 0.5 * _multinomial_nll(latent, dense)
    assert (got.double() - plain.detach()).abs().max() > 1e-3


def test_linear_input_dropout_is_off_in_eval():
    matrix = _matrix(n_users=10, density=0.4)
    x = _rows(matrix)
    dropped, plain = _net(linear_input_dropout=0.5).eval(), _net().eval()
    torch.testing.assert_close(dropped.scores(x), plain.scores(x), rtol=0, atol=0)
    z = torch.randn(10, TINY["latent_dim"], generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(dropped.reconstruction_nll(z, x, torch.Generator().manual_seed(1)),
                                   plain.reconstruction_nll(z, x, torch.Generator().manual_seed(1)),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("fusion", [False, True])
def test_fusion_gradient_decides_whether_the_joint_nll_reaches_the_latent_decoder(fusion):
    matrix = _matrix(n_users=10)
    weight = 0.6
    net = _net(vae_loss_weight=weight, fusion_gradient=fusion).train()
    z = torch.randn(10, TINY["latent_dim"], generator=torch.Generator().manual_seed(9), requires_grad=True)
    net.reconstruction_nll(z, _rows(matrix)).sum().backward()
    got_w, got_z = net.decoder.latent.weight.grad.clone(), z.grad.clone()
    assert net.decoder.log_scale.grad.abs() > 0  # the joint NLL always trains s

    # The oracle: the same loss by hand, the latent logits cut from the joint term unless fusion.
    latent_w = net.decoder.latent.weight.detach().double().requires_grad_()
    bias = net.decoder.latent.bias.detach().double()
    z2 = z.detach().double().requires_grad_()
    dense = torch.from_numpy(matrix.toarray()).double()
    latent = z2 @ latent_w.T + bias
    linear = float(net.decoder.scale.detach()) * dense @ net.decoder.item_item.weight.double()
    fused = latent if fusion else latent.detach()
    (_multinomial_nll(fused + linear, dense) + weight * _multinomial_nll(latent, dense)).sum().backward()
    torch.testing.assert_close(got_w.double(), latent_w.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_z.double(), z2.grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- memory and refits


def test_joint_memory_bytes_by_hand():
    assert joint_memory_bytes(40, False) == 4 * 1600
    assert joint_memory_bytes(40, True) == 16 * 1600


@pytest.mark.parametrize("train_linear, factor", [(False, 1), (True, 4)])
def test_memory_check_refuses_one_byte_short_and_fits_at_the_boundary(train_linear, factor):
    # W (x4 when trained: its gradient and Adam's two moments) and EDLAE's closed-form start. Checked on the
    # dense path's own plan: in a whole fit the VAE's fixed allowances are larger than W at 40 items.
    config = JointVAEConfig(train_linear=train_linear, linear_form="dense", linear_l2=20.0)
    need = 4 * N_ITEMS * N_ITEMS * factor + ease_memory_bytes(N_ITEMS)
    assert sum(dense_linear_parts(N_ITEMS, config).values()) == need
    with pytest.raises(MemoryError, match="dense item-item path") as err:
        choose_linear_form(N_ITEMS, config, available=need - 1)
    assert "\n" not in str(err.value)
    assert choose_linear_form(N_ITEMS, config, available=need) == "dense"


def test_memory_check_counts_the_trained_w_four_times():
    frozen, trained = (sum(dense_linear_parts(N_ITEMS, JointVAEConfig(train_linear=t)).values()) for t in (False, True))
    assert trained - frozen == 12 * N_ITEMS * N_ITEMS


def test_a_fit_that_does_not_fit_with_its_dense_path_is_refused_before_the_net(monkeypatch):
    # room for the VAE but not for its dense W as well: the fit's own plan, W in it, refuses in one line
    matrix = _matrix()
    model = JointVAE(linear_form="dense", linear_l2=20.0, **FIT)
    vae_only = sum(JointVAE(paths="vae", **FIT).memory_parts(*matrix.shape, matrix.nnz).values())
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: vae_only + 10)
    with pytest.raises(MemoryError) as err:
        model.fit(matrix)
    assert "W: " in str(err.value) and "\n" not in str(err.value) and model.net_ is None


def test_vae_path_alone_has_no_item_item_memory():
    assert linear_path_parts(N_ITEMS, JointVAEConfig(paths="vae", linear_form="dense"), available=0) == {}
    model = JointVAE(paths="vae", linear_form="dense", **FIT).fit(_matrix())
    assert model.net_.decoder.item_item.nnz == 0  # no item-item weights held at all


@pytest.mark.parametrize("paths, expected", [("both", 4.0 * 12 / 4), ("linear", 4.0 * 12 / 4), ("vae", 0.0)])
def test_block_score_bytes_by_hand(paths, expected):
    rows = sp.csr_matrix((np.ones(12, dtype=np.float32), (np.repeat(np.arange(4), 3), np.arange(12))),
                         shape=(4, N_ITEMS))
    assert JointVAE(paths=paths).block_score_bytes(rows) == expected
    empty = sp.csr_matrix((0, N_ITEMS), dtype=np.float32)
    assert JointVAE(paths=paths).block_score_bytes(empty) == 0.0


def test_a_refit_on_other_data_starts_w_from_the_new_data():
    first, second = _matrix(seed=0), _matrix(seed=1)
    model = JointVAE(linear_l2=20.0, **FIT).fit(first)
    np.testing.assert_allclose(model.net_.decoder.item_item.weight.numpy(), _closed_form(first, 20.0, 0.25),
                               rtol=1e-4, atol=1e-6)
    model.fit(second)
    np.testing.assert_allclose(model.net_.decoder.item_item.weight.numpy(), _closed_form(second, 20.0, 0.25),
                               rtol=1e-4, atol=1e-6)
