"""The joint VAE + item-item linear model: its constraint, its gradients, its special cases, its value."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import load_model, make_model
from recvae.models.ease import EDLAE
from recvae.models.joint import JointVAE
from recvae.models.rec_vae import RecVAE
from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.sparse import DeviceCSR

FAST = dict(epochs=6, batch_size=100, progress=False, seed=0)
SMALL = dict(hidden_dim=64, latent_dim=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=600, n_items=200, seed=1))
    return strong_generalization(data, 60)


@pytest.fixture(scope="module")
def trained(split):
    return JointVAE(train_linear=True, linear_l2=50.0, **SMALL, **FAST).fit(split)


def _batch(n_users=40, n_items=30, seed=0):
    matrix = sp.random(n_users, n_items, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    matrix.data[:] = 1.0
    return DeviceCSR(matrix, "cpu"), matrix


def test_zero_diagonal_holds_after_training(trained, split):
    assert trained.net_.decoder.item_item.trainable
    weight = trained.net_.decoder.item_item.weight.detach()
    assert torch.count_nonzero(weight.diagonal()) == 0
    # ... while the off-diagonal moved away from the closed-form start.
    start = torch.from_numpy(EDLAE(l2=50.0, dropout=trained.config.linear_dropout).fit(split).weights_)
    assert (weight - start).abs().max() > 1e-3


@pytest.mark.parametrize("fusion_gradient", [False, True])
def test_gradients_reach_both_paths_and_never_the_diagonal(fusion_gradient):
    data, matrix = _batch()
    torch.manual_seed(0)
    net = JointVAENet(matrix.shape[1], JointVAEConfig(hidden_dim=16, latent_dim=4, train_linear=True,
                                                      linear_init="zeros", fusion_gradient=fusion_gradient))
    with torch.no_grad():
        net.decoder.item_item.weight.normal_()
        net.decoder.item_item.weight.diagonal().zero_()
    net.train()
    net.loss(data.rows(torch.arange(matrix.shape[0])), dropout=False)["loss"].backward()
    item_grad = net.decoder.item_item.weight.grad
    assert torch.count_nonzero(item_grad.diagonal()) == 0
    assert item_grad.abs().sum() > 0
    assert net.decoder.latent.weight.grad.abs().sum() > 0
    assert net.decoder.log_scale.grad.abs() > 0
    assert net.encoder.input_layer.weight.grad.abs().sum() > 0


def test_the_diagonal_does_not_change_the_scores():
    data, matrix = _batch()
    torch.manual_seed(0)
    net = JointVAENet(matrix.shape[1], JointVAEConfig(hidden_dim=16, latent_dim=4)).eval()
    with torch.no_grad():
        net.decoder.item_item.weight.normal_()
    x = data.rows(torch.arange(matrix.shape[0]))
    dense_w = net.decoder.item_item.weight.detach().clone()
    expected = torch.from_numpy(matrix.toarray()) @ dense_w
    torch.testing.assert_close(net.decoder.item_item(x), expected, rtol=1e-5, atol=1e-5)
    net.decoder.item_item.set_weight(dense_w)
    assert torch.count_nonzero(net.decoder.item_item.weight.diagonal()) == 0


def test_frozen_linear_path_is_a_buffer_and_the_decoder_phase_leaves_it(split):
    model = JointVAE(**SMALL, **{**FAST, "epochs": 1}).fit(split)
    item_item = model.net_.decoder.item_item
    assert "weight" in dict(item_item.named_buffers())
    assert not any(p is item_item.weight for p in model.net_.parameters())
    start = EDLAE(l2=model.config.linear_l2, dropout=model.config.linear_dropout).fit(split).weights_
    np.testing.assert_array_equal(item_item.weight.numpy(), start)


def test_vae_path_alone_is_recvae(split):
    params = {**SMALL, **FAST, "epochs": 2}
    joint = JointVAE(paths="vae", **params).fit(split)
    recvae = RecVAE(**params).fit(split)
    rows = split.test.fold_in
    np.testing.assert_allclose(joint.score(rows), recvae.score(rows), rtol=1e-5, atol=1e-5)


def test_linear_path_alone_is_edlae(split):
    model = JointVAE(paths="linear", linear_l2=20.0, linear_dropout=0.3, **SMALL, **{**FAST, "epochs": 1}).fit(split)
    edlae = EDLAE(l2=20.0, dropout=0.3).fit(split)
    scale = float(model.net_.decoder.scale.detach())
    assert scale > 0
    rows = split.test.fold_in
    np.testing.assert_allclose(model.score(rows) / scale, edlae.score(rows), rtol=1e-4, atol=1e-5)


@pytest.mark.precision
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_beats_each_path_alone_on_structured_data(precision):
    # Tastes, a Zipf popularity and off-taste noise: the VAE and the linear path each catch part of it.
    # Trained in bf16 too (emulated where the CPU has no native bf16): the paths' logits are fused in fp32.
    data = synthetic_interactions(SyntheticConfig(n_users=1500, n_items=300, n_tastes=8, seed=0,
                                                  mean_events_per_user=25))
    split = strong_generalization(data, 150, seed=0)
    params = dict(hidden_dim=128, latent_dim=32, epochs=20, batch_size=100, lr=3e-3, progress=False, seed=0,
                  linear_l2=20.0, linear_dropout=0.25, linear_scale=10.0, precision=precision)
    score = {paths: evaluate(JointVAE(paths=paths, **params).fit(split), split, "test",
                             ks=[20], metrics=["ndcg"])["ndcg@20"]
             for paths in ("vae", "linear", "both")}
    assert score["both"] > score["vae"] + 0.002, score
    assert score["both"] > score["linear"] + 0.002, score


def test_save_load_identical_scores(tmp_path, trained, split):
    path = trained.save(tmp_path / "joint.pt")
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, JointVAE)
    assert loaded.get_params() == {**trained.get_params(), "device": "cpu"}
    rows = split.test.fold_in
    np.testing.assert_array_equal(loaded.score(rows), trained.score(rows))


def test_registry_and_flat_params():
    model = make_model("joint-vae", {"train_linear": True, "linear_l2": 10.0, "epochs": 3, "lr": 1e-3})
    assert isinstance(model, JointVAE)
    assert model.config.train_linear and model.config.linear_l2 == 10.0 and model.training.epochs == 3


@pytest.mark.parametrize("bad, needle", [
    ({"paths": "neither"}, "paths='neither': expected one of 'both'"),
    ({"linear_init": "random"}, "linear_init='random': expected one of"),
    ({"linear_dropout": 1.0}, r"linear_dropout=1\.0: expected a number in \[0, 1\)"),
    ({"linear_l2": -1.0}, "linear_l2=-1.0: expected a finite number >= 0"),
    ({"linear_init": "zeros"}, "set train_linear=True"),
    ({"likelihood": "gaussian_learned"}, "one output per item"),
    ({"linear_scale": 0.0}, "linear_scale=0.0: expected a finite number > 0"),
    ({"linear_input_dropout": -0.1}, r"linear_input_dropout=-0\.1: expected a number in \[0, 1\)"),
    ({"vae_loss_weight": 0.0}, "leaves the VAE untrained"),
])
def test_bad_config_is_refused_in_one_line(bad, needle):
    with pytest.raises(ValueError, match=needle) as err:
        JointVAE(**bad)
    assert "\n" not in str(err.value)


def test_refuses_when_the_dense_item_item_matrix_does_not_fit(monkeypatch, split):
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match="dense item-item path on 200 items needs .* linear_form='sparse'"):
        JointVAE(train_linear=True, linear_form="dense", **SMALL, **FAST).fit(split)


def test_embeddings_and_similar_items(trained, split):
    mu, sigma = trained.embed_users(split.test.fold_in)
    assert mu.shape == (split.test.fold_in.shape[0], SMALL["latent_dim"]) and (sigma > 0).all()
    assert trained.item_embeddings().shape == (split.n_items, SMALL["latent_dim"])


def test_patience_never_stops_the_joint_model_inside_its_early_dip_by_default():
    # The fused score dips while the VAE half learns; one ml-1m-implicit seed was cut off there.
    assert JointVAE().get_params()["min_epochs"] == 30
    assert JointVAE(min_epochs=0).get_params()["min_epochs"] == 0
