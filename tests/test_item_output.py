"""Large catalogues on the training side: the chunked exact NLL, sampled softmax, sparse item updates.

The chunked NLL is pinned against the existing full likelihoods (loss and gradients of
h, W, b) and by finite differences; sampled softmax by its expected gradient over many
draws against the full softmax's (the uncorrected estimator must miss it); sparse
updates by SparseAdam's semantics (rows of absent items do not move) and by a short
training run against the dense path.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models import MultVAE, RecVAE
from recvae.nn import JointVAEConfig, RecVAEConfig, RecVAENet, VAE, VAEConfig
from recvae.nn.annealing import AnnealConfig
from recvae.nn.chunked import chunked_output_nll
from recvae.nn.likelihoods import make_likelihood
from recvae.nn.sampled import NegativeSampler, sampled_softmax_nll
from recvae.nn.sparse import SparseRows
from recvae.training import (
    ItemSparseAdam,
    LazyAdam,
    TrainingConfig,
    make_optimizer,
    prepare_item_training,
    train_step,
)
from recvae.training.checkpoints import _differences

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(seed: int = 0, n: int = 9, items: int = 203, density: float = 0.05) -> SparseRows:
    """Count-valued rows, one of them empty and one with a single item."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, items)) < density).astype(np.float32) * rng.integers(1, 4, (n, items))
    dense[2] = 0
    dense[2, 7] = 1
    dense[4] = 0
    return SparseRows.from_scipy(sp.csr_matrix(dense))


def _layer(n_rows: int, items: int, d: int = 16, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_rows, d, generator=g, dtype=dtype)
    w = torch.randn(items, d, generator=g, dtype=dtype) * 0.3
    b = torch.randn(items, generator=g, dtype=dtype) * 0.1
    return [t.requires_grad_() for t in (h, w, b)]


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal to 1e-5 relative to the largest magnitude (float32 sums in another order)."""
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale, msg=what)


# ---------------------------------------------------------------------- chunked exact NLL
@pytest.mark.parametrize("name", ["multinomial", "bernoulli", "gaussian"])
@pytest.mark.parametrize("chunk", [1, 37, 203, 5000])
def test_chunked_nll_equals_the_full_likelihood_in_loss_and_gradients(name, chunk):
    x = _rows()
    likelihood = make_likelihood(name)
    h, w, b = _layer(x.n_rows, x.n_cols)
    upstream = torch.rand(x.n_rows, generator=torch.Generator().manual_seed(2))  # any weights per user
    full = likelihood.nll(F.linear(h, w, b), x)
    (full * upstream).sum().backward()
    expected = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad = None
    chunked = chunked_output_nll(likelihood, h, w, b, x, chunk)
    (chunked * upstream).sum().backward()
    _close(chunked, full, "loss")
    for t, e, what in zip((h, w, b), expected, ("grad h", "grad W", "grad b")):
        _close(t.grad, e, what)


@pytest.mark.parametrize("name", ["multinomial", "bernoulli", "gaussian"])
def test_chunked_gradient_matches_finite_differences(name):
    x = _rows(seed=3, n=5, items=11, density=0.3)
    h, w, b = _layer(x.n_rows, x.n_cols, d=3, dtype=torch.float64)
    likelihood = make_likelihood(name)
    assert torch.autograd.gradcheck(lambda h, w, b: chunked_output_nll(likelihood, h, w, b, x, 4), (h, w, b))


def test_chunked_computes_only_the_gradients_asked_for():
    """RecVAE's phases freeze one side of the output layer; the other still gets its gradient."""
    x = _rows()
    likelihood = make_likelihood("multinomial")
    h, w, b = _layer(x.n_rows, x.n_cols)
    likelihood.nll(F.linear(h, w, b), x).sum().backward()
    expected_h, expected_w = h.grad.clone(), w.grad.clone()
    h.grad = None
    chunked_output_nll(likelihood, h, w.detach(), b.detach(), x, 50).sum().backward()
    _close(h.grad, expected_h, "grad h alone")
    chunked_output_nll(likelihood, h.detach(), w, b.detach(), x, 50).sum().backward()
    assert h.grad is not None and w.grad is not None
    _close(w.grad, expected_w * 2, "grad W alone (added to the first pass's)")


def test_chunked_runs_under_bf16_autocast_close_to_the_full_path():
    x = _rows()
    likelihood = make_likelihood("multinomial")
    h, w, b = _layer(x.n_rows, x.n_cols)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = likelihood.nll(F.linear(h, w, b), x)
        chunked = chunked_output_nll(likelihood, h, w, b, x, 64)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, rtol=1e-2, atol=1e-2)
    chunked.sum().backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def _twin_nets(make, config_full, config_chunked, items: int):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        full = make(items, config_full)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        chunked = make(items, config_chunked)
    chunked.load_state_dict(full.state_dict())  # the same weights (the chunked net adds no state)
    return full, chunked


@pytest.mark.parametrize("name", ["multinomial", "bernoulli", "gaussian"])
def test_vae_and_recvae_with_item_chunk_give_the_full_loss_and_gradients(name):
    x = _rows(items=120)
    cases = [
        (VAE, VAEConfig(hidden_dims=(32,), latent_dim=8, likelihood=name), lambda net, g: net.loss(x, 0.3, g)),
        (RecVAENet, RecVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8, likelihood=name),
         lambda net, g: net.loss(x, g)),
    ]
    for make, config, loss in cases:
        full, chunked = _twin_nets(make, config, dataclasses.replace(config, item_chunk=25), x.n_cols)
        full.train(), chunked.train()
        losses = []
        for net in (full, chunked):
            parts = loss(net, torch.Generator().manual_seed(5))  # the same dropout and noise
            parts["loss"].backward()
            losses.append(parts)
        _close(losses[1]["loss"], losses[0]["loss"], f"{make.__name__} loss")
        for (key, p_full), p_chunked in zip(full.named_parameters(), chunked.parameters()):
            if p_full.grad is not None:
                _close(p_chunked.grad, p_full.grad, f"{make.__name__} {key}")


def test_without_the_new_options_the_vae_loss_is_bit_for_bit_the_full_path():
    """item_chunk=None: the loss is the likelihood of the decoder's full output, as before."""
    x = _rows(items=120)
    net = VAE(x.n_cols, VAEConfig(hidden_dims=(32,), latent_dim=8)).train()
    parts = net.loss(x, 0.2, torch.Generator().manual_seed(4))
    output, mu, log_var = net(x, torch.Generator().manual_seed(4))
    nll = net.likelihood.nll(output, x).mean()
    kl = (0.5 * (-log_var + log_var.exp() + mu * mu - 1.0).sum(dim=1)).mean()
    torch.testing.assert_close(parts["nll"], nll, rtol=0, atol=0)
    torch.testing.assert_close(parts["loss"], nll + 0.2 * kl, rtol=0, atol=0)
    assert net.item_output is None


# ---------------------------------------------------------------------- sampled softmax
def _zipf_setup(seed: int = 0):
    """200 Zipf-popular items, 8 users with 3 positives each, logits following popularity."""
    rng = np.random.default_rng(seed)
    n_users, n_items, d = 8, 200, 8
    counts = np.floor(1000 / np.arange(1, n_items + 1)).astype(np.int64)
    p = counts / counts.sum()
    dense = np.zeros((n_users, n_items), np.float32)
    for u in range(n_users):
        dense[u, rng.choice(n_items, 3, replace=False, p=p)] = 1
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_users, d, generator=g)
    w = torch.randn(n_items, d, generator=g) * 0.25
    b = torch.from_numpy(np.log(p).astype(np.float32))
    return SparseRows.from_scipy(sp.csr_matrix(dense)), counts, [t.requires_grad_() for t in (h, w, b)]


def _gradient(params, loss_fn) -> torch.Tensor:
    for t in params:
        t.grad = None
    loss_fn(*params).mean().backward()
    return torch.cat([t.grad.flatten() for t in params]).double()


@pytest.mark.parametrize("sampler_kind", ["popularity", "uniform"])
def test_sampled_softmax_gradient_matches_the_full_softmax_in_expectation(sampler_kind):
    """Average over 1000 draws of 50 negatives: the corrected estimator's gradient (of h, W, b) is the
    full softmax's within Monte-Carlo error plus a small self-normalisation bias; without the log-Q
    correction a popularity proposal leaves a large bias."""
    x, counts, params = _zipf_setup()
    full = _gradient(params, lambda h, w, b: make_likelihood("multinomial").nll(F.linear(h, w, b), x))
    sampler = NegativeSampler(x.n_cols, sampler_kind, power=1.0)
    sampler.set_item_counts(counts)
    errors = {}
    for corrected in (True, False):
        generator = torch.Generator().manual_seed(1)
        draws = torch.stack([
            _gradient(params, lambda h, w, b: sampled_softmax_nll(h, w, b, x, *sampler.sample(50, generator),
                                                                  log_q_correction=corrected))
            for _ in range(1000)])
        mean, standard_error = draws.mean(0), draws.std(0) / len(draws) ** 0.5
        errors[corrected] = float((mean - full).norm() / full.norm())
        monte_carlo = float(standard_error.norm() / full.norm())  # the relative error noise alone gives
    assert errors[True] < max(0.04, 3 * monte_carlo), errors
    if sampler_kind == "popularity":
        assert errors[False] > 0.15 and errors[False] > 5 * errors[True], errors


def test_sampled_softmax_with_every_item_a_positive_is_the_exact_nll():
    """When the batch's positives cover the catalogue nothing is sampled: the estimate is exact."""
    rng = np.random.default_rng(0)
    dense = (rng.random((6, 20)) < 0.4).astype(np.float32)
    dense[0] = 1
    x = SparseRows.from_scipy(sp.csr_matrix(dense))
    h, w, b = _layer(6, 20)
    sampler = NegativeSampler(20)
    sampled = sampled_softmax_nll(h, w, b, x, *sampler.sample(30, torch.Generator().manual_seed(0)))
    _close(sampled, make_likelihood("multinomial").nll(F.linear(h, w, b), x), "exact when P covers all")


def test_popularity_sampler_draws_in_proportion_to_counts_to_the_power():
    counts = np.array([0, 1, 4, 9, 16, 100])
    sampler = NegativeSampler(6, "popularity", power=0.5)
    with pytest.raises(RuntimeError, match="no item counts"):
        sampler.sample(3)
    sampler.set_item_counts(counts)
    items, log_prob = sampler.sample(200_000, torch.Generator().manual_seed(0))
    expected = np.maximum(counts, 1) ** 0.5 / (np.maximum(counts, 1) ** 0.5).sum()
    np.testing.assert_allclose(np.bincount(items.numpy(), minlength=6) / 200_000, expected, atol=4e-3)
    np.testing.assert_allclose(log_prob.exp().numpy(), expected[items.numpy()], rtol=1e-6)
    uniform_items, uniform_log_prob = NegativeSampler(6).sample(10)
    assert uniform_items.max() < 6 and torch.allclose(uniform_log_prob, torch.full((10,), -np.log(6.0)))


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize("settings, message", [
    ({"item_chunk": 0}, "item_chunk=0: expected an integer >= 1 or None"),
    ({"sampled_softmax": 0}, "sampled_softmax=0: expected an integer >= 1 or None"),
    ({"sampled_softmax": 100, "likelihood": "bernoulli"}, "sampled_softmax needs the multinomial"),
    ({"item_chunk": 100, "likelihood": "gaussian_learned"}, "item_chunk supports the multinomial"),
    ({"item_chunk": 100, "sampled_softmax": 100}, "alternatives"),
    ({"sampled_softmax": 100, "negative_sampler": "zipf"}, "negative_sampler='zipf': expected one of 'uniform', 'popularity'"),
    ({"negative_power": -1.0}, "negative_power=-1.0: expected a finite number >= 0"),
])
def test_bad_settings_raise_one_line_errors(settings, message):
    for config in (VAEConfig, RecVAEConfig):
        with pytest.raises(ValueError, match=message) as error:
            config(**settings)
        assert "\n" not in str(error.value)


def test_the_joint_model_takes_chunked_or_sampled_likelihoods_except_on_its_linear_path_alone():
    # the joint NLL adds the item-item logits per block / at the sampled items (tests/test_joint_sparse.py);
    # the linear path alone has no output layer to chunk or sample
    for settings in ({"item_chunk": 100}, {"sampled_softmax": 100}):
        assert JointVAEConfig(**settings).paths == "both"
        with pytest.raises(ValueError, match="paths='linear' scores the item-item path alone"):
            JointVAEConfig(paths="linear", **settings)


def test_sparse_updates_refuse_data_parallel_training():
    net = VAE(30, VAEConfig(hidden_dims=(8,), latent_dim=4))
    with pytest.raises(ValueError, match="one process only"):
        prepare_item_training(net, sp.csr_matrix((2, 30)), TrainingConfig(sparse_item_updates=True), ctx=object())


def test_an_older_checkpoint_without_the_new_fields_still_resumes_when_they_keep_their_defaults():
    current = {"model": dataclasses.asdict(VAEConfig()), "training": {"epochs": 3, "lr": 1e-3,
                                                                      "sparse_item_updates": False},
               "shapes": {}, "train_shape": [2, 3], "train_data": "x", "validation_data": None}
    older = {**current, "model": {k: v for k, v in current["model"].items()
                                  if k not in ("item_chunk", "sampled_softmax", "negative_sampler", "negative_power")},
             "training": {"epochs": 3, "lr": 1e-3}}
    assert _differences(older, current) == ([], None)
    chunked = {**current, "model": {**current["model"], "sampled_softmax": 100}}
    assert any("sampled_softmax" in d for d in _differences(older, chunked)[0])


# ---------------------------------------------------------------------- sparse item updates
def _batch_items(x: SparseRows) -> torch.Tensor:
    return torch.unique(x.col_indices)


def test_sparse_updates_leave_the_rows_of_absent_items_unchanged():
    """SparseAdam: a step moves the input rows of the batch's items, and under sampled softmax the
    output rows of its candidates, and nothing else, even rows with momentum from earlier steps."""
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 300)) < 0.03).astype(np.float32)
    dense[np.arange(40), rng.integers(0, 300, 40)] = 1.0
    matrix = sp.csr_matrix(dense)
    # No input dropout: a dropped item's row gets a zero gradient, which a first Adam step does not move.
    config = VAEConfig(hidden_dims=(16,), latent_dim=4, input_dropout=0.0, sampled_softmax=20,
                       negative_sampler="popularity")
    net = VAE(300, config).train()
    training = TrainingConfig(sparse_item_updates=True, weight_decay=1e-3, lr=1e-2)
    prepare_item_training(net, matrix, training, None)
    optimizer = make_optimizer(net.parameters(), training)
    assert isinstance(optimizer, ItemSparseAdam)
    generator = torch.Generator().manual_seed(0)
    for rows in (np.arange(0, 20), np.arange(20, 40)):
        x = SparseRows.from_scipy(matrix[rows])
        before_in, before_out = net.input_layer.weight.detach().clone(), net.decoder[-1].weight.detach().clone()
        train_step(net, optimizer, x, 0.2, generator, CPU)
        present = torch.zeros(300, dtype=torch.bool)
        present[_batch_items(x)] = True
        moved_in = (net.input_layer.weight.detach() != before_in).any(dim=1)
        moved_out = (net.decoder[-1].weight.detach() != before_out).any(dim=1)
        assert torch.equal(moved_in, present)
        assert moved_out[present].all() and not moved_out[~present].sum() > 20  # positives + <= 20 negatives
    assert net.input_layer.weight.grad.is_sparse and net.decoder[-1].weight.grad.is_sparse


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=300, n_items=120, seed=3))
    return strong_generalization(data, 40)


ARCH = VAEConfig(hidden_dims=(32,), latent_dim=8)
SHORT = TrainingConfig(epochs=8, batch_size=50, lr=1e-2, progress=False, seed=0, device="cpu", eval_k=20,
                       anneal=AnnealConfig(kind="constant", cap=0.2))


def test_short_training_runs_reach_the_dense_full_paths_validation_ndcg(split):
    """Same data, seed and recipe: chunked (exact) tracks the full path closely; sparse updates and
    sampled softmax (a different optimiser and an estimate) land near it."""
    def best(config: VAEConfig, training: TrainingConfig = SHORT) -> float:
        return MultVAE(config, training).fit(split).training_.best_score

    dense = best(ARCH)
    assert dense > 0.2  # beyond chance: random scores give NDCG@20 ~0.08 here, popularity ~0.10
    assert abs(best(dataclasses.replace(ARCH, item_chunk=50)) - dense) < 0.01
    assert abs(best(ARCH, dataclasses.replace(SHORT, sparse_item_updates=True)) - dense) < 0.05
    sampled = dataclasses.replace(ARCH, sampled_softmax=40, negative_sampler="popularity")
    assert abs(best(sampled, dataclasses.replace(SHORT, sparse_item_updates=True)) - dense) < 0.05


def test_sparse_updates_checkpoint_and_resume_continue_identically(tmp_path, split):
    config = dataclasses.replace(ARCH, sampled_softmax=40, negative_sampler="popularity")
    training = dataclasses.replace(SHORT, epochs=3, sparse_item_updates=True)
    straight = MultVAE(config, training).fit(split)
    checkpoint = str(tmp_path / "ckpt.pt")
    MultVAE(config, dataclasses.replace(training, epochs=2, checkpoint=checkpoint)).fit(split)
    resumed = MultVAE(config, dataclasses.replace(training, checkpoint=checkpoint, resume=True)).fit(split)
    assert list(resumed.history_["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(resumed.history_["loss"], straight.history_["loss"], rtol=1e-6)
    rows = split.test.fold_in
    np.testing.assert_allclose(resumed.score(rows), straight.score(rows), rtol=1e-5, atol=1e-6)
    payload = torch.load(checkpoint, weights_only=True)
    assert set(payload["optimizer"]) == {"dense", "sparse"}
    # The net's state dict is a plain VAE's: the model saves, loads and scores as any other.
    loaded = MultVAE.load(resumed.save(tmp_path / "model.pt"), device="cpu")
    assert loaded.config.sampled_softmax == 40
    np.testing.assert_array_equal(loaded.score(rows), resumed.score(rows))


def test_recvae_trains_chunked_and_sampled_with_sparse_updates(split):
    small = RecVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8)
    training = TrainingConfig(epochs=2, batch_size=100, lr=5e-4, progress=False, seed=0, device="cpu", eval_k=20)
    full = RecVAE(small, training).fit(split).training_.history
    chunked = RecVAE(dataclasses.replace(small, item_chunk=50), training).fit(split).training_.history
    np.testing.assert_allclose(chunked["loss"], full["loss"], rtol=1e-4)
    sampled = RecVAE(dataclasses.replace(small, sampled_softmax=40, negative_sampler="popularity"),
                     dataclasses.replace(training, sparse_item_updates=True)).fit(split)
    assert np.isfinite(sampled.training_.history["loss"]).all()
    assert sampled.score(split.test.fold_in).shape == (split.test.n_users, split.n_items)


# ---------------------------------------------------------------------- lazy Adam with bf16 moments
def _sparse_steps(optimizer_for, steps: int = 6, seed: int = 0) -> torch.Tensor:
    """A 50 x 8 weight after ``steps`` updates from the same sparse row gradients (a few rows each)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(50, 8, generator=generator))
    optimizer = optimizer_for([weight])
    for _ in range(steps):
        rows = torch.randperm(50, generator=generator)[:12]
        values = torch.randn(12, 8, generator=generator)
        weight.grad = torch.sparse_coo_tensor(rows[None], values, weight.shape, check_invariants=True)
        optimizer.step()
    return weight.detach()


def test_lazy_adam_with_float32_moments_is_sparse_adam():
    ours = _sparse_steps(lambda p: LazyAdam(p, lr=1e-2, moments_dtype=torch.float32))
    torchs = _sparse_steps(lambda p: torch.optim.SparseAdam(p, lr=1e-2))
    start = _sparse_steps(lambda p: torch.optim.SparseAdam(p, lr=1e-2), steps=0)
    assert (torchs - start).abs().max() > 0.02  # the steps moved the weights
    torch.testing.assert_close(ours, torchs, rtol=1e-6, atol=1e-7)


def test_lazy_adam_with_bf16_moments_stays_near_sparse_adam_at_half_the_state():
    ours = _sparse_steps(lambda p: LazyAdam(p, lr=1e-2, moments_dtype=torch.bfloat16))
    torchs = _sparse_steps(lambda p: torch.optim.SparseAdam(p, lr=1e-2))
    start = _sparse_steps(lambda p: torch.optim.SparseAdam(p, lr=1e-2), steps=0)
    moved = (torchs - start).abs()
    # bf16 keeps 8 bits of mantissa: each step's update is off by well under 1% of its size.
    assert (ours - torchs).abs().max() < 0.01 * moved.max()
    unmoved = moved.sum(dim=1) == 0
    assert unmoved.any() and torch.equal(ours[unmoved], start[unmoved])  # rows never in a gradient
    weight = torch.nn.Parameter(torch.zeros(50, 8))
    optimizer = LazyAdam([weight], lr=1e-2)
    weight.grad = torch.sparse_coo_tensor(torch.tensor([[3, 7]]), torch.ones(2, 8), weight.shape, check_invariants=True)
    optimizer.step()
    state = optimizer.state[weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.bfloat16
    # A state dict loads back in bf16 (torch would cast it to the parameter's float32).
    again = LazyAdam([weight], lr=1e-2)
    again.load_state_dict(optimizer.state_dict())
    assert again.state[weight]["exp_avg"].dtype == torch.bfloat16
    torch.testing.assert_close(again.state[weight]["exp_avg_sq"], state["exp_avg_sq"])


def test_lazy_adam_refuses_dense_gradients():
    weight = torch.nn.Parameter(torch.zeros(5, 2))
    weight.grad = torch.ones(5, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LazyAdam([weight]).step()


def test_item_moments_settings_are_checked():
    with pytest.raises(ValueError, match="set sparse_item_updates=True with it"):
        TrainingConfig(item_moments="bf16")
    with pytest.raises(ValueError, match="item_moments='fp16': expected one of 'fp32', 'bf16'"):
        TrainingConfig(sparse_item_updates=True, item_moments="fp16")


def test_bf16_item_moments_train_and_resume(tmp_path, split):
    """A Mult-VAE with bf16 moments for its item matrices: the sparse layers' state is bf16, its
    validation NDCG lands near fp32 moments', and a checkpointed run resumes identically."""
    config = dataclasses.replace(ARCH, sampled_softmax=40, negative_sampler="popularity")
    training = dataclasses.replace(SHORT, sparse_item_updates=True)
    fp32 = MultVAE(config, training).fit(split).training_.best_score
    bf16_training = dataclasses.replace(training, item_moments="bf16")
    bf16 = MultVAE(config, bf16_training).fit(split)
    assert abs(bf16.training_.best_score - fp32) < 0.02
    short = dataclasses.replace(bf16_training, epochs=3)
    straight = MultVAE(config, short).fit(split)
    checkpoint = str(tmp_path / "ckpt.pt")
    MultVAE(config, dataclasses.replace(short, epochs=2, checkpoint=checkpoint)).fit(split)
    payload = torch.load(checkpoint, weights_only=True)
    moments = [s["exp_avg"] for s in payload["optimizer"]["sparse"]["state"].values()]
    assert moments and all(m.dtype == torch.bfloat16 for m in moments)
    resumed = MultVAE(config, dataclasses.replace(short, checkpoint=checkpoint, resume=True)).fit(split)
    np.testing.assert_allclose(resumed.history_["loss"], straight.history_["loss"], rtol=1e-6)
