"""Posterior-aware recommendations for the VAE family: exploration and a per-user uncertainty.

A VAE encodes each user row into a Gaussian posterior q(z|x) = N(mu, diag sigma^2); the usual
scores decode its mean, z = mu. Two things use sigma too:

- **Exploration** (``recommend(explore=t, seed=s)``): the lists are ranked from one sample
  ``z = mu + t * sigma * eps``, eps ~ N(0, I), instead of mu. ``t = 0`` is the usual ranking,
  exactly; ``t = 1`` draws from the posterior itself; larger t wanders further. The noise of a
  user is a function of ``seed`` and of the user's row (its item columns and values) alone, drawn
  by a counter-based generator (:func:`posterior_noise`): the same seed gives the same lists, in
  whatever batch, order or request a user comes, and a user with the same history gets the same
  draw. Pass another seed (a request counter, the date) for another draw.
- **Uncertainty** per user: the mean of the posterior's standard deviations,
  ``mean_j exp(0.5 * log_var_j)`` (one encoder pass), and optionally the **rank spread**: one minus
  the mean pairwise overlap of the top-k lists of ``S`` posterior samples (t = 1),
  ``1 - sum_i C(c_i, 2) / (C(S, 2) * k)`` where ``c_i`` counts the lists holding item i: 0 when
  every sample ranks the same k items, near 1 when they share none.

Models without a posterior (EASE, ALS, popularity, Mult-DAE, a blend ...) refuse both with one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recvae.models.ranking import rank_in_blocks

__all__ = ["check_explore", "check_seed", "check_samples", "check_uncertainty", "no_posterior", "posterior_noise", "row_keys",
           "PosteriorSampling", "Explored", "UserUncertainty", "user_uncertainty", "list_spread", "DEFAULT_SEED",
           "VAE_FAMILY"]

#: The seed of ``recommend(explore=t)`` when none is given: the same lists on every call.
DEFAULT_SEED = 0
#: The models that have a posterior to sample (named by every refusal).
VAE_FAMILY = "the VAE family (mult-vae, recvae, joint-vae)"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def check_explore(explore) -> float:
    """``explore`` as a float >= 0 (the scale t of sigma), or a one-line ``ValueError``."""
    if isinstance(explore, bool) or not isinstance(explore, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(explore)) or explore < 0:
        raise ValueError(f"explore must be a number >= 0 (0: the posterior mean, 1: a posterior sample); "
                         f"got {explore!r}")
    return float(explore)


def check_seed(seed) -> int:
    """``seed`` as an int >= 0, or a one-line ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1; got {seed!r}")
    return int(seed)


def check_samples(samples) -> int:
    """``uncertainty_samples``: 0 (no rank spread) or an int >= 2, or a one-line ``ValueError``."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0 or samples == 1:
        raise ValueError(f"uncertainty_samples must be 0 (mean sigma only) or an integer >= 2 (posterior samples "
                         f"whose top-k lists are compared); got {samples!r}")
    return int(samples)


def check_uncertainty(model, uncertainty: bool, samples) -> int:
    """``uncertainty_samples`` checked (:func:`check_samples`); refuses (one line) uncertainty of a model
    without a posterior. Returns the samples (0: no rank spread)."""
    samples = check_samples(samples)
    if (uncertainty or samples) and not model.has_posterior:
        raise no_posterior(model, "uncertainty")
    return samples


def no_posterior(model, what: str) -> ValueError:
    """The one-line refusal of ``what`` (e.g. ``"explore=0.5"``) for a model without a posterior."""
    name = type(model).__name__
    return ValueError(f"{what}: {name} has no posterior q(z|x) to sample or measure; use a variational model of "
                      f"{VAE_FAMILY}, or leave explore at 0 and uncertainty off")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def row_keys(rows: sp.csr_matrix) -> np.ndarray:
    """(users,) uint64: a hash of each row's item columns and values (order-free, any batch)."""
    rows = sp.csr_matrix(rows)
    with np.errstate(over="ignore"):
        values = np.ascontiguousarray(rows.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
        entry = _mix(rows.indices.astype(np.uint64) * _GOLDEN + values)
        total = np.concatenate([np.zeros(1, np.uint64), np.cumsum(entry, dtype=np.uint64)])
        per_row = total[rows.indptr[1:]] - total[rows.indptr[:-1]]
        return _mix(per_row + np.diff(rows.indptr).astype(np.uint64) * _M2)


def posterior_noise(rows: sp.csr_matrix, dim: int, seed: int = DEFAULT_SEED, sample: int = 0) -> np.ndarray:
    """(users, dim) float32 standard normal draws eps, a function of (seed, sample, each row) only.

    Counter-based: each value hashes (row key, seed, sample, dimension) with splitmix64 into two
    uniforms and a Box-Muller transform, so no user's draw depends on the others in the batch.
    """
    with np.errstate(over="ignore"):
        stream = _mix(np.asarray([seed], np.uint64) * _GOLDEN + np.asarray([sample], np.uint64) * _M1 + _M2)
        keys = _mix(row_keys(rows) ^ stream)
        counters = np.arange(dim, dtype=np.uint64) * np.uint64(2)
        first = _mix(keys[:, None] + counters[None, :] * _GOLDEN)
        second = _mix(keys[:, None] + (counters[None, :] + np.uint64(1)) * _GOLDEN)
    scale = 1.0 / float(1 << 53)
    u1 = ((first >> np.uint64(11)).astype(np.float64) + 1.0) * scale  # (0, 1]
    u2 = (second >> np.uint64(11)).astype(np.float64) * scale  # [0, 1)
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


class PosteriorSampling:
    """What :class:`recvae.models.base.Recommender` gets from this module: refusals here, the samples in
    :class:`recvae.models.mult_vae.TorchVAERecommender` (the family with a posterior)."""

    @property
    def has_posterior(self) -> bool:
        """True for models whose users have a Gaussian posterior q(z|x) (the variational VAEs): what
        ``recommend(explore=...)`` samples and the uncertainty measures (:mod:`recvae.models.posterior`)."""
        return False

    def explorer(self, explore: float = 0.0, seed: int = DEFAULT_SEED):
        """What ``recommend(explore=t, seed=s)`` ranks: the model itself at t = 0, else its :class:`Explored`
        view; a model without a posterior refuses t > 0 (one line naming the VAE family)."""
        explore, seed = check_explore(explore), check_seed(seed)
        if explore == 0:
            return self
        if not self.has_posterior:
            raise no_posterior(self, f"explore={explore:g}")
        return Explored(self, explore, seed)

    def sampled_block_scorer(self, user_rows, explore: float, seed: int = DEFAULT_SEED, sample: int = 0):
        """``item_block_scorer`` at a posterior sample of each user's code (the VAE family only)."""
        raise no_posterior(self, f"explore={explore:g}")


class Explored:
    """A model's exploratory view, ranked by :func:`recvae.models.ranking.rank_in_blocks`: its block
    scorer decodes ``z = mu + explore * sigma * eps`` (see :func:`posterior_noise`) instead of mu."""

    def __init__(self, model, explore: float, seed: int = DEFAULT_SEED, sample: int = 0) -> None:
        self.model, self.explore, self.seed, self.sample = model, float(explore), int(seed), int(sample)

    @property
    def block_scoring(self) -> bool:
        return bool(self.model.block_scoring)

    def block_score_bytes(self, user_rows: sp.csr_matrix) -> float:
        return self.model.block_score_bytes(user_rows)

    def item_block_scorer(self, user_rows: sp.csr_matrix) -> Callable[[int, int], np.ndarray]:
        return self.model.sampled_block_scorer(user_rows, self.explore, self.seed, self.sample)


@dataclass
class UserUncertainty:
    """Per-user uncertainty of a VAE's posterior (see the module docstring).

    Attributes:
        sigma_mean: (users,) mean posterior standard deviation.
        rank_spread: (users,) 1 - mean pairwise overlap of the top-k of posterior samples, or None.
    """

    sigma_mean: np.ndarray
    rank_spread: np.ndarray | None = None

    def columns(self) -> dict[str, np.ndarray]:
        """``{"uncertainty": sigma_mean}`` and ``"rank_spread"`` when computed: the output columns."""
        out = {"uncertainty": self.sigma_mean}
        if self.rank_spread is not None:
            out["rank_spread"] = self.rank_spread
        return out


def user_uncertainty(model, rows: sp.csr_matrix, *, samples: int = 0, k: int = 10, seed: int = DEFAULT_SEED,
                     exclude=None, candidates=None, restricted=None, max_memory: int | None = None
                     ) -> UserUncertainty:
    """:class:`UserUncertainty` of validated rows; the rank spread's lists are ranked as ``rank_in_blocks``
    ranks (the same ``exclude``, ``candidates``, ``restricted`` and ``max_memory``), at t = 1."""
    if not model.has_posterior:
        raise no_posterior(model, "uncertainty")
    sigma = model.embed_users(rows).sigma
    spread = None
    if samples:
        lists = [rank_in_blocks(Explored(model, 1.0, seed, sample), rows, k, exclude=exclude, candidates=candidates,
                                restricted=restricted, max_memory=max_memory)[0] for sample in range(samples)]
        spread = list_spread(lists)
    return UserUncertainty(np.asarray(sigma, dtype=np.float64).mean(axis=1).astype(np.float32), spread)


def list_spread(lists: list[np.ndarray]) -> np.ndarray:
    """(users,) 1 - the mean pairwise overlap |A ∩ B| / k of S >= 2 top-k lists per user.

    ``lists``: S arrays (users, k) of item columns, -1 for padding (not counted; k is each user's
    number of real items, the same in every list). A user with no real item gets 0.
    """
    stacked = np.concatenate(lists, axis=1)  # (users, S * k)
    n, s = stacked.shape[0], len(lists)
    users = np.repeat(np.arange(n), stacked.shape[1])
    items = stacked.ravel()
    real = items >= 0
    keys = users[real].astype(np.int64) * (int(items.max(initial=0)) + 1) + items[real]
    unique, counts = np.unique(keys, return_counts=True)
    owner = unique // (int(items.max(initial=0)) + 1)
    shared = np.bincount(owner, weights=counts * (counts - 1) / 2.0, minlength=n)
    per_list = (lists[0] >= 0).sum(axis=1)
    pairs = s * (s - 1) / 2.0
    overlap = np.divide(shared, pairs * per_list, out=np.ones(n), where=per_list > 0)
    return (1.0 - overlap).astype(np.float32)
