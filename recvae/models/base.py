"""The one interface every recvae model implements, VAE or baseline.

CSR rows in, numpy out. A model is fitted on a users x items training matrix and
then scores any user from their interaction row ("fold-in"): held-out users and
brand-new users are served the same way, without retraining.

Ranking scores into top-k lists (exclusions, candidate lists, a memory budget) lives
in :mod:`recvae.models.ranking`; :func:`item_mask`, :func:`rank_items` and
:func:`rank_in_blocks` are importable from here too.
"""

from __future__ import annotations

import copy

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from recvae.data.ids import UnknownIdError, lookup_ids
from recvae.data.interactions import Interactions
from recvae.data.splits import HeldOut, Split
from recvae.models.answers import Recommendations, UserEmbeddings
from recvae.models.posterior import DEFAULT_SEED, PosteriorSampling, check_uncertainty, user_uncertainty
from recvae.models.ranking import item_mask, rank_in_blocks, rank_items

logger = logging.getLogger(__name__)

__all__ = [
    "Recommender",
    "Recommendations",
    "UserEmbeddings",
    "NotFittedError",
    "as_user_rows",
    "item_mask",
    "rank_items",
    "rank_in_blocks",
    "ids_to_array",
    "ids_from_array",
    "training_inputs",
]


class NotFittedError(RuntimeError):
    """A model was asked for predictions before :meth:`Recommender.fit`."""


def as_user_rows(user_rows: Any, n_items: int, *, allow_empty_rows: bool = False) -> sp.csr_matrix:
    """Validate user rows at the API boundary; returns float32 canonical CSR.

    Accepts a scipy sparse matrix/array or a 2-D numpy array (small inputs).
    """
    if sp.issparse(user_rows):
        rows = sp.csr_matrix(user_rows, dtype=np.float32)
    elif isinstance(user_rows, np.ndarray):
        if user_rows.ndim == 1:
            user_rows = user_rows[None, :]
        if user_rows.ndim != 2:
            raise ValueError(f"user rows must be 2-D (users x items); got an array of shape {user_rows.shape}")
        rows = sp.csr_matrix(user_rows, dtype=np.float32)
    else:
        raise TypeError(
            "user rows must be a scipy.sparse CSR matrix (users x items); "
            f"got {type(user_rows).__name__}. Build one with scipy.sparse.csr_matrix(...)"
        )
    if rows.shape[1] != n_items:
        raise ValueError(
            f"user rows have {rows.shape[1]} item columns but the model was fitted on {n_items} items; "
            "use the item index of the training data (Split.item_ids / Interactions.item_ids)"
        )
    if rows.nnz and not np.isfinite(rows.data).all():
        raise ValueError("user rows contain NaN or infinite values")
    if rows.nnz and (rows.data < 0).any():
        raise ValueError("user rows contain negative values; interactions must be >= 0")
    rows.sum_duplicates()
    rows.eliminate_zeros()
    rows.sort_indices()
    if not allow_empty_rows:
        empty = np.flatnonzero(np.diff(rows.indptr) == 0)
        if len(empty):
            raise ValueError(
                f"{len(empty)} user row(s) are empty (first: row {empty[0]}); a model cannot "
                "recommend from no history. Drop them, or use a popularity ranking for cold users"
            )
    return rows


class Recommender(PosteriorSampling, ABC):
    """Base of every recvae model.

    Subclasses implement :meth:`fit`, :meth:`score`, :meth:`save` and
    :meth:`load`; :meth:`recommend` and :meth:`recommend_for_items` build on
    :meth:`score`. Learned state lives in attributes with a trailing
    underscore, set by ``fit``.
    """

    item_ids_: np.ndarray | None = None
    n_items_: int | None = None
    #: True when ``fit`` draws random numbers from a ``seed`` hyper-parameter (a constructor
    #: keyword listed by :meth:`get_params`), so that another seed gives another model. The
    #: experiment runner refits such models with further seeds; the others are fit once.
    seeded: ClassVar[bool] = False
    #: True when :meth:`item_block_scorer` scores a block of items in memory proportional to
    #: users x block (not users x catalogue): recommend and evaluate then rank big catalogues a
    #: block at a time. The default scorer slices :meth:`score`, so it is False here.
    block_scoring: ClassVar[bool] = False

    # ---------------------------------------------------------------- to implement
    @abstractmethod
    def fit(self, train, validation=None) -> Recommender:
        """Learn from a users x items training matrix (or an Interactions / Split)."""

    @abstractmethod
    def score(self, user_rows) -> np.ndarray:
        """(users, items) scores for users given by their interaction rows; higher is better."""

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the fitted model to ``path`` (weights, config and id maps)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Recommender:
        """Read a model written by :meth:`save`."""

    # ---------------------------------------------------------------- scoring a block of items
    def item_block_scorer(self, user_rows) -> Callable[[int, int], np.ndarray]:
        """A function ``(start, stop) -> (users, stop - start)`` scores of item columns ``[start, stop)``.

        Whatever depends on the users alone (a VAE's encoding, ALS's folded-in factors, a
        sparse product) is computed once, here; each call then scores one block. The
        result equals ``score(user_rows)[:, start:stop]``, up to the float rounding of a
        matrix product over fewer columns (bit for bit for the sparse products: EASE,
        EDLAE, sparse EASE, item-KNN, popularity). It may return a torch tensor on the model's
        device (the torch VAEs); every call returns a fresh array (callers mask it in place).

        This default computes :meth:`score` once, on the first call, and slices it: correct
        for every model, but it holds users x items scores (``block_scoring`` is False).
        """
        full: list[np.ndarray] = []

        def scorer(start: int, stop: int) -> np.ndarray:
            if not full:
                full.append(np.array(self.score(user_rows), dtype=np.float32))
            if start == 0 and stop == full[0].shape[1]:
                return full.pop()  # the whole catalogue: hand over the array itself (no second copy)
            return full[0][:, start:stop].copy()

        return scorer

    def score_items(self, user_rows, item_start: int, item_stop: int) -> np.ndarray:
        """(users, item_stop - item_start) float32 scores of the item columns ``[item_start, item_stop)``.

        One block of :meth:`score`'s columns, computed in memory proportional to the block
        when :attr:`block_scoring` is True (see :meth:`item_block_scorer`, which also keeps
        the per-user work for several blocks).
        """
        self._check_fitted()
        start, stop = int(item_start), int(item_stop)
        if not 0 <= start < stop <= self.n_items_:
            raise ValueError(f"item block [{item_start}, {item_stop}) must lie within [0, {self.n_items_}) "
                             "and hold at least one item")
        block = self.item_block_scorer(user_rows)(start, stop)
        return block.cpu().numpy() if hasattr(block, "cpu") else np.asarray(block, dtype=np.float32)

    def block_score_bytes(self, user_rows) -> float:
        """Bytes :meth:`item_block_scorer` allocates per scored (user, item) cell of a block,
        beyond the float32 block itself, for these rows (0 unless a model says otherwise).
        The block planner counts them against ``max_memory``."""
        return 0.0

    # ---------------------------------------------------------------- shared
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters: keyword arguments that rebuild an unfitted copy (scikit-learn style).

        ``deep`` is accepted for scikit-learn's tools; the parameters are flat, so it changes nothing.
        """
        raise NotImplementedError(f"{type(self).__name__} does not list its hyper-parameters")

    def __sklearn_clone__(self) -> Recommender:
        """An unfitted copy with the same hyper-parameters (``sklearn.base.clone``): the protocol, because
        the torch models' parameters are rebuilt from their configs on each ``get_params`` call."""
        return type(self)(**{k: _cloned(v) for k, v in self.get_params(deep=False).items()})

    def set_params(self, **params: Any) -> Recommender:
        """Change hyper-parameters (validated as the constructor does); returns self. Refit afterwards."""
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for {type(self).__name__}; its parameters are {sorted(current)}"
            )
        fresh = type(self)(**{**current, **params})
        self._take_params(fresh)
        return self

    def _take_params(self, fresh: Recommender) -> None:
        for name in self.get_params():
            setattr(self, name, getattr(fresh, name))

    def embed_users(self, user_rows) -> UserEmbeddings:
        """User embeddings (:class:`UserEmbeddings`), for models that have them."""
        raise NotImplementedError(f"{type(self).__name__} has no user embeddings")

    def item_embeddings(self) -> np.ndarray:
        """Item factors, for models that have them."""
        raise NotImplementedError(f"{type(self).__name__} has no item embeddings")

    def item_similarities(self, items: np.ndarray) -> np.ndarray:
        """(len(items), n_items) similarity of each given item column to every item.

        The default is the cosine similarity of :meth:`item_embeddings` rows;
        models with an item-item matrix (EASE, item-KNN) use it instead.
        """
        self._check_fitted()
        try:
            embeddings = np.asarray(self.item_embeddings(), dtype=np.float32)
        except NotImplementedError:
            raise NotImplementedError(
                f"{type(self).__name__} has no item representation, so no similar items; "
                "use a model with item embeddings or item-item weights (ease, itemknn, als, bpr, the VAEs)"
            ) from None
        norms = np.linalg.norm(embeddings, axis=1)
        norms[norms == 0] = 1.0
        unit = embeddings / norms[:, None]
        return unit[np.asarray(items)] @ unit.T

    def similar_items(self, item_ids, k: int = 10, *, by_column: bool = False) -> Recommendations:
        """The ``k`` items most similar to each given item (itself excluded), best first.

        Args:
            item_ids: raw item ids (or item columns with ``by_column=True``).
            k: items per query item; past the other items of the catalogue, all of them, with a warning.

        Each model uses its own item space; see :meth:`item_similarities`.
        """
        self._check_fitted()
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if by_column or self.item_ids_ is None:
            columns = np.atleast_1d(np.asarray(item_ids, dtype=np.int64))
            if len(columns) and (columns.min() < 0 or columns.max() >= self.n_items_):
                raise ValueError(f"item columns must lie in 0..{self.n_items_ - 1}")
        else:
            columns = lookup_ids(_item_lookup(self.item_ids_), item_ids, "item")
        similarity = np.asarray(self.item_similarities(columns), dtype=np.float32)
        own = sp.csr_matrix((np.ones(len(columns), np.float32), columns, np.arange(len(columns) + 1)),
                            shape=(len(columns), self.n_items_))
        if k > self.n_items_ - 1:
            logger.warning("k=%s is more than the %s other items of the catalogue: returning at most %s similar "
                           "items per item", f"{int(k):,}", f"{self.n_items_ - 1:,}", f"{self.n_items_ - 1:,}")
        items, scores = rank_items(similarity, min(k, self.n_items_ - 1), exclude=own)
        return Recommendations(items=items, scores=scores, item_ids=self._item_ids_of(items))

    def _item_ids_of(self, items: np.ndarray) -> np.ndarray | None:
        if self.item_ids_ is None:
            return None
        ids = self.item_ids_[np.maximum(items, 0)]
        if (items < 0).any():
            ids = ids.astype(object)
            ids[items < 0] = None
        return ids

    def _check_fitted(self) -> None:
        if self.n_items_ is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(train) first")

    def recommend(
        self,
        user_rows,
        k: int = 10,
        *,
        filter_seen: bool = True,
        seen=None,
        exclude=None,
        candidates=None,
        max_memory: int | None = None,
        explore: float = 0.0,
        seed: int = DEFAULT_SEED,
        uncertainty: bool = False,
        uncertainty_samples: int = 0,
    ) -> Recommendations:
        """Top-k items for each user row, best first.

        Args:
            user_rows: (users, items) CSR of the users' histories (the model's input).
            k: items per user (at most the number of items).
            filter_seen: never recommend an item of the user's row (nor of ``seen``).
            seen: optional (users, items) sparse matrix of further items each user
                already has (e.g. every raw interaction, ratings under the positive
                threshold included), masked like the row's own items.
            exclude: items never to recommend: item columns (for every user) or a
                (users, items) sparse matrix (per user), as implicit's ``filter_items``.
            candidates: the only items that may be recommended: item columns or a
                (users, items) sparse matrix, as implicit's ``items``.
            max_memory: bytes the ranking may take (None: 1 GiB). Users are ranked in
                batches, and a model with :attr:`block_scoring` scores the catalogue a block
                of items at a time with a running top-k (see :func:`rank_in_blocks`), so a
                million-item catalogue never holds users x items scores. The result does
                not depend on it.
            explore: t >= 0; above 0 each user's list is ranked from one sample of their posterior,
                ``z = mu + t * sigma * eps``, instead of its mean: more varied, exploratory lists. The
                VAE family only (others refuse t > 0); 0 gives the usual lists exactly.
            seed: the draw of ``explore`` (and of the rank spread): the same seed, the same lists
                (default 0); each user's draw depends on the seed and their row only.
            uncertainty: also return each user's mean posterior sigma (``Recommendations.uncertainty``).
            uncertainty_samples: 0, or S >= 2: also the rank spread of S posterior samples' lists
                (``Recommendations.rank_spread``; see :mod:`recvae.models.posterior`).

        Users with fewer than ``k`` eligible items get padding (see :class:`Recommendations`).
        Ties are broken by the lower item index.
        """
        self._check_fitted()
        ranked, samples = self.explorer(explore, seed), check_uncertainty(self, uncertainty, uncertainty_samples)
        rows = as_user_rows(user_rows, self.n_items_)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if k > self.n_items_:
            raise ValueError(f"k={k} exceeds the model's {self.n_items_} items; ask for fewer")
        n = rows.shape[0]
        excluded = [rows if filter_seen else None, item_mask(seen, n, self.n_items_, "seen") if filter_seen else None,
                    item_mask(exclude, n, self.n_items_, "exclude")]
        allowed = item_mask(candidates, n, self.n_items_, "candidates")
        items, top_scores = rank_in_blocks(ranked, rows, k, exclude=excluded, candidates=allowed, max_memory=max_memory)
        recs = Recommendations(items=items, scores=top_scores, item_ids=self._item_ids_of(items))
        if uncertainty or samples:
            found = user_uncertainty(self, rows, samples=samples, k=k, seed=seed, exclude=excluded,
                                     candidates=allowed, max_memory=max_memory)
            recs.uncertainty, recs.rank_spread = found.sigma_mean, found.rank_spread
        return recs

    def rows_from_item_ids(self, raw_item_ids) -> sp.csr_matrix:
        """One user row from raw item ids (the model must hold the item id map)."""
        self._check_fitted()
        if self.item_ids_ is None:
            raise ValueError(
                "this model has no item id map (it was fitted on a bare matrix); fit it on an "
                "Interactions or Split, or build the row yourself and call recommend()"
            )
        raw = np.atleast_1d(np.asarray(raw_item_ids))
        if raw.size == 0:
            raise ValueError("a new user needs at least one item in their history")
        try:
            positions = np.unique(lookup_ids(_item_lookup(self.item_ids_), raw, "item"))
        except UnknownIdError as err:
            raise UnknownIdError(f"{err}: not in the training catalogue of {self.n_items_} items", err.unknown) from None
        return sp.csr_matrix(
            (np.ones(len(positions), np.float32), positions, [0, len(positions)]), shape=(1, self.n_items_)
        )

    def recommend_for_items(self, raw_item_ids, k: int = 10, **options) -> Recommendations:
        """Top-k for a new user given the raw ids of the items they interacted with.

        The user is folded in (no retraining); their items are never recommended back.
        ``options`` (``exclude``, ``candidates``, ``explore``, ``seed``, ``uncertainty`` ...) are :meth:`recommend`'s.
        """
        return self.recommend(self.rows_from_item_ids(raw_item_ids), k=k, filter_seen=True, **options)


def _item_lookup(item_ids: np.ndarray):
    import pandas as pd

    return pd.Index(np.asarray(item_ids))


def ids_to_array(ids: np.ndarray | None) -> tuple[str | None, np.ndarray | None]:
    """Raw ids as (kind, plain array) for pickle-free files: int64, float64 or unicode."""
    if ids is None:
        return None, None
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.integer) or ids.dtype == bool:
        return "int", ids.astype(np.int64)
    if np.issubdtype(ids.dtype, np.floating):
        return "float", ids.astype(np.float64)
    return "str", np.asarray([str(v) for v in ids.tolist()], dtype=str)


def ids_from_array(kind: str | None, values: np.ndarray | None) -> np.ndarray | None:
    """Inverse of :func:`ids_to_array` (string ids come back as an object array)."""
    if kind is None or values is None:
        return None
    return values.astype(object) if kind == "str" else values


def training_inputs(train, validation=None) -> tuple[sp.csr_matrix, HeldOut | None, np.ndarray | None]:
    """Normalise ``fit``'s arguments: a Split, an Interactions or a CSR matrix.

    A Split brings its own validation users (unless ``validation`` is given) and
    its item id map; an Interactions brings its item id map.
    """
    item_ids = None
    if isinstance(train, Split):
        validation = train.validation if validation is None else validation
        item_ids = train.item_ids
        matrix = train.train
    elif isinstance(train, Interactions):
        item_ids = train.item_ids
        matrix = train.matrix
    elif sp.issparse(train):
        matrix = sp.csr_matrix(train, dtype=np.float32)
    else:
        raise TypeError(
            "train must be a recvae Split, an Interactions or a scipy.sparse CSR matrix (users x items); "
            f"got {type(train).__name__}"
        )
    if validation is not None:
        if not isinstance(validation, HeldOut):
            raise TypeError(f"validation must be a recvae HeldOut (e.g. split.validation); got {type(validation).__name__}")
        if validation.fold_in.shape[1] != matrix.shape[1]:
            raise ValueError(
                f"validation rows have {validation.fold_in.shape[1]} items, training has {matrix.shape[1]}"
            )
    return matrix, validation, item_ids


def _cloned(value: Any) -> Any:
    """A parameter value for a clone: models (a blend's components) as unfitted clones, the rest copied."""
    if isinstance(value, Recommender):
        return value.__sklearn_clone__()
    if isinstance(value, (list, tuple)):
        return type(value)(_cloned(v) for v in value)
    return copy.deepcopy(value)
