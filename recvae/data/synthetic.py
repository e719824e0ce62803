"""A seeded, MovieLens-style synthetic interaction log.

Used as the embedded default dataset (no download) and in tests. It has the
structure collaborative filtering exploits, so a working model must beat a
popularity ranking on it by a wide margin:

- item popularity follows a power law (a few blockbusters, a long tail);
- each item belongs to one of a few latent "tastes" (genres);
- each user mixes one or two tastes (a sparse Dirichlet draw) and rates items
  of their tastes higher, so binarising ratings at 3.5 keeps mostly on-taste
  events, as with real MovieLens data;
- activity per user is log-normal (heavy tail), at a realistic sparsity.

Sampling is vectorised over all events (a taste per event, then an item by
inverse CDF within the taste): memory is O(events), never O(users x items), so
ML-20M-sized logs take seconds.

:func:`catalogue_interactions` draws the same kind of data straight into a CSR
matrix (no raw log, ratings or timestamps) for catalogues of 100k to millions of
items (:data:`CATALOGUE_100K`, :data:`CATALOGUE_1M`): the scale of the serving and
evaluation paths that rank a block of items at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.interactions import Interactions

__all__ = ["SyntheticConfig", "ML1M_SHAPE", "ML20M_SHAPE", "synthetic_log", "synthetic_interactions",
           "CatalogueConfig", "CATALOGUE_100K", "CATALOGUE_1M", "catalogue_interactions"]


def _check_shape(n_users: int, n_items: int, n_tastes: int) -> None:
    """The users, items and tastes a generator can draw: every taste needs an item."""
    if n_users < 1 or n_items < 2 or n_tastes < 1:
        raise ValueError("need n_users >= 1, n_items >= 2 and n_tastes >= 1")
    if n_tastes > n_items:
        raise ValueError(f"n_tastes ({n_tastes}) cannot exceed n_items ({n_items})")


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape and structure of a synthetic log.

    Attributes:
        n_users, n_items: size of the catalogue and user base (before filters).
        n_tastes: number of latent item groups ("genres").
        mean_events_per_user: mean raw events per user (log-normal, at least 5).
        popularity_exponent: Zipf exponent of item popularity (~1 for MovieLens).
        taste_concentration: Dirichlet concentration of user taste mixtures;
            small values give users one dominant taste.
        on_taste_share: probability that an event is drawn from the user's
            tastes rather than from global popularity (noise).
        with_ratings: add 1-5 star ratings (on-taste items rated higher).
        seed: everything is a function of this seed.
    """

    n_users: int = 3000
    n_items: int = 1500
    n_tastes: int = 12
    mean_events_per_user: float = 60.0
    popularity_exponent: float = 0.9
    taste_concentration: float = 0.25
    on_taste_share: float = 0.85
    with_ratings: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _check_shape(self.n_users, self.n_items, self.n_tastes)
        if not 0.0 <= self.on_taste_share <= 1.0:
            raise ValueError("on_taste_share must lie in [0, 1]")
        if self.mean_events_per_user < 5:
            raise ValueError("mean_events_per_user must be >= 5 (users need >= 5 events to be kept)")


#: About the size and density of MovieLens-1M after Liang et al.'s preprocessing.
ML1M_SHAPE = SyntheticConfig(n_users=6040, n_items=3706, mean_events_per_user=95.0, with_ratings=False)
#: The ML-20M shape of the published benchmark (136,677 x 20,108 at 0.37%).
ML20M_SHAPE = SyntheticConfig(
    n_users=136_677, n_items=20_108, n_tastes=40, mean_events_per_user=76.0, with_ratings=False
)


def synthetic_log(config: SyntheticConfig = SyntheticConfig()) -> pd.DataFrame:
    """Draw a raw event log with columns user, item, (rating), timestamp.

    Rows are ordered by user, then time, like the MovieLens files. Raw ids
    start at 1. The same config always gives the same log.
    """
    rng = np.random.default_rng(config.seed)
    n_users, n_items, n_tastes = config.n_users, config.n_items, config.n_tastes

    item_taste, by_taste, cum_pop, taste_mass_before = _taste_catalogue(
        rng, n_items, n_tastes, config.popularity_exponent, normalise=False)

    theta = rng.dirichlet(np.full(n_tastes, config.taste_concentration), size=n_users)
    sigma = 0.9
    mu = np.log(config.mean_events_per_user - 4) - sigma**2 / 2
    n_events = 5 + np.floor(rng.lognormal(mu, sigma, size=n_users)).astype(np.int64)
    n_events = np.minimum(n_events, n_items // 2 + 5)
    # Draw extra events since duplicates are discarded below.
    n_draws = (n_events * 1.25).astype(np.int64) + 2
    user_of_draw = np.repeat(np.arange(n_users), n_draws)

    # A taste per draw from the user's mixture (inverse CDF over theta rows).
    theta_cdf = np.cumsum(theta, axis=1)
    theta_cdf[:, -1] = 1.0
    u = rng.random(len(user_of_draw))
    taste = _row_searchsorted(theta_cdf, user_of_draw, u)
    on_taste = rng.random(len(user_of_draw)) < config.on_taste_share
    v = rng.random(len(user_of_draw))
    lo = np.where(on_taste, taste_mass_before[taste], 0.0)
    hi = np.where(on_taste, taste_mass_before[taste + 1], cum_pop[-1])
    item = by_taste[np.minimum(np.searchsorted(cum_pop, lo + v * (hi - lo), side="right"), n_items - 1)]

    user_of_draw, item = _first_draws(user_of_draw, item, n_events, n_items)

    n = len(item)
    start = rng.integers(946_684_800, 1_500_000_000, size=n_users)  # 2000 .. 2017
    timestamps = start[user_of_draw] + np.cumsum(rng.integers(1, 86_400 * 7, size=n)) % (86_400 * 3650)
    order = np.lexsort((timestamps, user_of_draw))
    columns = {"user": user_of_draw[order] + 1, "item": item[order] + 1}
    if config.with_ratings:
        affinity = theta[user_of_draw, item_taste[item]]  # how much the user likes the item's taste
        stars = 2.0 + 3.2 * np.sqrt(affinity) + rng.normal(0.0, 0.8, size=n)
        columns["rating"] = np.clip(np.rint(stars), 1, 5).astype(np.float32)[order]
    columns["timestamp"] = timestamps[order].astype(np.int64)
    return pd.DataFrame(columns)


def synthetic_interactions(config: SyntheticConfig = SyntheticConfig(), **preprocessing) -> Interactions:
    """:func:`synthetic_log` passed through :meth:`Interactions.from_dataframe`.

    With ratings, the default MovieLens preprocessing applies (rating > 3.5,
    users >= 5); without, every event is positive. ``preprocessing`` overrides
    from_dataframe's keyword arguments.
    """
    log = synthetic_log(config)
    if not config.with_ratings:
        preprocessing.setdefault("rating_col", None)
    return Interactions.from_dataframe(log, **preprocessing)


@dataclass(frozen=True)
class CatalogueConfig:
    """Shape and structure of a large-catalogue interaction matrix (:func:`catalogue_interactions`).

    Attributes:
        n_users, n_items: rows and columns of the matrix (every item is a column, also
            the ones no user drew: a big catalogue has a long cold tail).
        events_per_user: mean distinct items per user (log-normal, heavy tailed,
            at least ``min_events``; at most ``max_events``).
        min_events, max_events: bounds on a user's draws.
        popularity_exponent: Zipf exponent of item popularity (1.0: the top 1% of a
            million items hold about two thirds of the events).
        n_tastes: latent item groups; each item belongs to one.
        taste_concentration: Dirichlet concentration of users' taste mixtures (small:
            one or two dominant tastes per user).
        on_taste_share: probability that an event comes from the user's tastes rather
            than from global popularity.
        seed: everything is a function of this seed.
    """

    n_users: int = 20_000
    n_items: int = 100_000
    events_per_user: float = 50.0
    min_events: int = 5
    max_events: int = 2_000
    popularity_exponent: float = 1.0
    n_tastes: int = 200
    taste_concentration: float = 0.1
    on_taste_share: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        _check_shape(self.n_users, self.n_items, self.n_tastes)
        if not 1 <= self.min_events <= self.events_per_user <= self.max_events:
            raise ValueError("need 1 <= min_events <= events_per_user <= max_events")
        if self.max_events > self.n_items:
            raise ValueError(f"max_events ({self.max_events}) cannot exceed n_items ({self.n_items})")
        if not 0.0 <= self.on_taste_share <= 1.0:
            raise ValueError("on_taste_share must lie in [0, 1]")
        if self.taste_concentration <= 0 or self.popularity_exponent < 0:
            raise ValueError("taste_concentration must be > 0 and popularity_exponent >= 0")


#: 20,000 users x 100,000 items, about 50 events per user (density 0.05%).
CATALOGUE_100K = CatalogueConfig(n_items=100_000)
#: 20,000 users x 1,000,000 items, about 50 events per user (density 0.005%).
CATALOGUE_1M = CatalogueConfig(n_items=1_000_000, n_tastes=1_000)


def catalogue_interactions(config: CatalogueConfig = CATALOGUE_100K) -> Interactions:
    """A seeded users x items matrix with a power-law catalogue, drawn straight into CSR.

    Item popularity is Zipf over a random permutation of the items; each item has one
    taste; each user mixes a few tastes (a sparse Dirichlet) and draws each event from
    them (an item by popularity within the taste) or, with ``1 - on_taste_share``, from
    global popularity. Repeated draws of an item are merged (binary data), extra draws
    make up for them, and each user keeps at most their drawn activity. Raw ids are
    ``1..n_users`` and ``1..n_items``; no timestamps.

    Everything is vectorised over the events: time and memory are O(events + items +
    users x tastes), never users x items (1M items x 20k users takes a few seconds).
    The same config always gives the same matrix.
    """
    rng = np.random.default_rng(config.seed)
    n_users, n_items, n_tastes = config.n_users, config.n_items, config.n_tastes

    _, by_taste, cum_pop, taste_mass_before = _taste_catalogue(rng, n_items, n_tastes, config.popularity_exponent,
                                                               normalise=True)

    sigma = 1.0
    mu = np.log(config.events_per_user) - sigma**2 / 2
    n_events = np.clip(np.rint(rng.lognormal(mu, sigma, size=n_users)), config.min_events,
                       config.max_events).astype(np.int64)
    n_draws = np.minimum((n_events * 1.3).astype(np.int64) + 3, n_items)
    user_of_draw = np.repeat(np.arange(n_users), n_draws)

    # A taste per draw from the user's mixture: one global searchsorted over the rows' CDFs,
    # each row shifted by its index so that the concatenation is increasing.
    theta_cdf = np.cumsum(rng.dirichlet(np.full(n_tastes, config.taste_concentration), size=n_users), axis=1)
    theta_cdf /= theta_cdf[:, -1:]
    theta_cdf += np.arange(n_users)[:, None]
    u = np.minimum(rng.random(len(user_of_draw)), 1.0 - 1e-12) + user_of_draw
    taste = np.searchsorted(theta_cdf.ravel(), u, side="right") - user_of_draw * n_tastes
    taste = np.minimum(taste, n_tastes - 1)
    del theta_cdf, u
    on_taste = rng.random(len(user_of_draw)) < config.on_taste_share
    lo = np.where(on_taste, taste_mass_before[taste], 0.0)
    hi = np.where(on_taste, taste_mass_before[taste + 1], 1.0)
    v = rng.random(len(user_of_draw))
    item = by_taste[np.minimum(np.searchsorted(cum_pop, lo + v * (hi - lo), side="right"), n_items - 1)]
    del lo, hi, v, on_taste, taste

    user_of_draw, item = _first_draws(user_of_draw, item, n_events, n_items)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(user_of_draw, minlength=n_users))])
    order = np.lexsort((item, user_of_draw))
    matrix = sp.csr_matrix((np.ones(len(item), np.float32), item[order].astype(np.int32), indptr),
                           shape=(n_users, n_items))
    return Interactions(matrix, np.arange(1, n_users + 1), np.arange(1, n_items + 1))


def _taste_catalogue(rng: np.random.Generator, n_items: int, n_tastes: int, exponent: float,
                     normalise: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zipf popularity over a random permutation of the items, and one taste per item (none empty).

    Returns ``item_taste``; ``by_taste``, the items sorted by taste; ``cum_pop``, the cumulative
    popularity in that order (scaled to end at exactly 1 when ``normalise``); and
    ``taste_mass_before``, where each taste's span of ``cum_pop`` starts (n_tastes + 1 entries),
    for inverse-CDF draws of an item within a taste or over the whole catalogue.
    """
    popularity = np.empty(n_items)
    popularity[rng.permutation(n_items)] = 1.0 / np.arange(1, n_items + 1) ** exponent
    popularity /= popularity.sum()
    item_taste = rng.integers(0, n_tastes, size=n_items)
    item_taste[rng.choice(n_items, size=n_tastes, replace=False)] = np.arange(n_tastes)  # no empty taste
    by_taste = np.argsort(item_taste, kind="stable")
    taste_start = np.searchsorted(item_taste[by_taste], np.arange(n_tastes + 1))
    cum_pop = np.cumsum(popularity[by_taste])
    if normalise:
        cum_pop /= cum_pop[-1]
    return item_taste, by_taste, cum_pop, np.concatenate([[0.0], cum_pop])[taste_start]


def _first_draws(user_of_draw: np.ndarray, item: np.ndarray, n_events: np.ndarray,
                 n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first draw of each item, in draw order, and at most ``n_events[user]`` of them
    (draws come grouped by user, so extra draws make up for the repeats dropped)."""
    key = user_of_draw * n_items + item
    _, first = np.unique(key, return_index=True)
    first.sort()
    user_of_draw, item = user_of_draw[first], item[first]
    rank_in_user = np.arange(len(first)) - np.searchsorted(user_of_draw, user_of_draw)
    keep = rank_in_user < n_events[user_of_draw]
    return user_of_draw[keep], item[keep]


def _row_searchsorted(cdf: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index of the first cdf[rows[j]] entry >= u[j], in chunks that bound memory."""
    out = np.empty(len(u), dtype=np.int64)
    step = 1 << 18
    for s in range(0, len(u), step):
        out[s : s + step] = (u[s : s + step, None] > cdf[rows[s : s + step]]).sum(axis=1)
    return out

