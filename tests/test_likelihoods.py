import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.distributions import Bernoulli, Multinomial, Normal, kl_divergence

from recvae.nn.likelihoods import LIKELIHOODS, GaussianLearnedVariance, make_likelihood
from recvae.nn.vae import gaussian_kl
from recvae.nn.sparse import SparseRows


def _batch(seed=0, counts=False):
    rng = np.random.default_rng(seed)
    dense = (rng.random((7, 30)) < 0.2).astype(np.float32)
    dense[3] = 0
    dense[3, 5] = 1  # a row with one item
    if counts:
        dense *= rng.integers(1, 4, size=dense.shape)
    return SparseRows.from_scipy(sp.csr_matrix(dense)), torch.from_numpy(dense)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    q = Normal(mu, torch.exp(0.5 * log_var))
    expected = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, log_var), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("counts", [False, True])
def test_multinomial_matches_torch_up_to_count_coefficient(counts):
    x, dense = _batch(counts=counts)
    logits = torch.randn(dense.shape, generator=torch.Generator().manual_seed(1))
    ours = make_likelihood("multinomial").nll(logits, x)
    for u in range(dense.shape[0]):
        n = int(dense[u].sum())
        log_prob = Multinomial(n, logits=logits[u]).log_prob(dense[u])
        coefficient = torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(dense[u] + 1).sum()
        torch.testing.assert_close(ours[u], -(log_prob - coefficient), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("counts", [False, True])
def test_multinomial_gradient_matches_autograd_of_log_softmax(counts):
    """The hand-written gradient equals autograd's of -sum x * log_softmax(logits), with any upstream weights."""
    x, dense = _batch(seed=2, counts=counts)
    logits = torch.randn(dense.shape, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.rand(dense.shape[0], generator=torch.Generator().manual_seed(4))
    (make_likelihood("multinomial").nll(logits, x) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    (-(dense * torch.log_softmax(logits, dim=1)).sum(1) * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad, rtol=1e-5, atol=1e-6)


def test_multinomial_gradient_matches_finite_differences():
    from recvae.nn.likelihoods import _MultinomialNLL

    x, dense = _batch(seed=5, counts=True)
    values = x.values.double()

    def loss(l):
        return _MultinomialNLL.apply(l, x.row_of_entry, x.col_indices, values, x.row_sums().double()).sum()

    logits = torch.randn(dense.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6),
                         requires_grad=True)
    loss(logits).backward()
    eps = 1e-6
    with torch.no_grad():
        for u, i in [(0, 0), (1, 7), (3, 5), (3, 6), (6, 29)]:
            step = torch.zeros_like(logits)
            step[u, i] = eps
            numeric = (loss(logits + step) - loss(logits - step)) / (2 * eps)
            assert abs(float(numeric) - float(logits.grad[u, i])) < 1e-6


def test_multinomial_gradient_is_refused_twice():
    x, dense = _batch(seed=7)
    logits = torch.randn(dense.shape, generator=torch.Generator().manual_seed(8), requires_grad=True)
    loss = make_likelihood("multinomial").nll(logits, x).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_bernoulli_matches_torch():
    x, dense = _batch()
    logits = 3 * torch.randn(dense.shape, generator=torch.Generator().manual_seed(2))
    expected = -Bernoulli(logits=logits).log_prob(dense).sum(-1)
    torch.testing.assert_close(make_likelihood("bernoulli").nll(logits, x), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("counts", [False, True])
def test_gaussian_matches_torch(counts):
    x, dense = _batch(counts=counts)
    mean = torch.randn(dense.shape, generator=torch.Generator().manual_seed(3))
    expected = -Normal(mean, 1.0).log_prob(dense).sum(-1)
    torch.testing.assert_close(make_likelihood("gaussian").nll(mean, x), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("counts", [False, True])
def test_gaussian_learned_variance_matches_torch(counts):
    x, dense = _batch(counts=counts)
    g = torch.Generator().manual_seed(4)
    mean, log_var = torch.randn(dense.shape, generator=g), torch.randn(dense.shape, generator=g)
    output = torch.cat([mean, log_var], dim=1)
    expected = -Normal(mean, torch.exp(0.5 * log_var)).log_prob(dense).sum(-1)
    torch.testing.assert_close(make_likelihood("gaussian_learned").nll(output, x), expected, rtol=1e-5, atol=1e-4)
    # the clamp bounds the variance from below
    wild = torch.cat([mean, torch.full_like(log_var, -50.0)], dim=1)
    _, clamped = GaussianLearnedVariance().split(wild)
    assert clamped.min().item() == -6.0


def test_registry_and_unknown_name():
    assert set(LIKELIHOODS) == {"multinomial", "bernoulli", "gaussian", "gaussian_learned"}
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson")
