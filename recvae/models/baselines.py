"""Non-VAE baselines behind the same :class:`Recommender` interface.

- :class:`Popularity`: every user gets the training item counts.
- :class:`EASE`: Steck's (2019) closed-form item-item linear model.
- :class:`ALS`: implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008),
  trained by ``implicit``; held-out users are solved exactly from their fold-in rows.
- :class:`BPR`: Bayesian personalised ranking (Rendle et al. 2009), trained by
  ``implicit``; held-out users are folded in by a ridge projection.
- :class:`ItemKNN`: ``implicit``'s item-item nearest neighbours (cosine, BM25, TF-IDF).

Every model scores any user from their interaction row without retraining
(held-out users of a strong-generalization split included), saves to one
``.npz`` file (hyper-parameters as JSON text, learned arrays, item ids) and
loads it back with ``allow_pickle=False``.

Example::

    from recvae.models.baselines import EASE
    model = EASE(l2=500.0).fit(split)
    evaluate(model, split, "validation")
    model.recommend_for_items([1, 50, 260], k=10)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from recvae.models.base import Recommender, UserEmbeddings, as_user_rows, ids_from_array, ids_to_array
from recvae.models.files import MODEL_FIX, ModelFileError, read_npz_arrays
from recvae.models.mult_vae import training_inputs
from recvae.training import RecvaeWarning
from recvae.sparse import csr_from_arrays, csr_to_arrays

logger = logging.getLogger(__name__)

__all__ = [
    "Popularity",
    "EASE",
    "ALS",
    "BPR",
    "ItemKNN",
    "BASELINES",
    "load_baseline",
    "available_memory_bytes",
    "ease_memory_bytes",
]

_SAVE_FORMAT = "recvae.baseline/1"


# =============================================================================== shared plumbing
def _training_matrix(train, validation=None) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """The validated float32 CSR training matrix and the item id map (if any)."""
    matrix, _, item_ids = training_inputs(train, validation)
    matrix = as_user_rows(matrix, matrix.shape[1], allow_empty_rows=True)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0 or matrix.nnz == 0:
        raise ValueError(f"the training matrix {matrix.shape} has no interactions; nothing to learn from")
    if item_ids is not None and len(item_ids) != matrix.shape[1]:
        raise ValueError(f"{len(item_ids)} item ids for a training matrix with {matrix.shape[1]} item columns")
    return matrix, item_ids


def _check_number(name: str, value: Any, *, minimum: float, integer: bool = False, strict: bool = False) -> None:
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kind) or not np.isfinite(value):
        raise TypeError(f"{name} must be a finite {'integer' if integer else 'number'}; got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}; got {value!r}")


@contextlib.contextmanager
def _single_threaded_blas():
    """Limit BLAS to one thread while ``implicit`` runs its own thread pool.

    ``implicit`` parallelises over users/items itself; a multi-threaded BLAS
    underneath oversubscribes the cores (implicit warns it can be 10x slower).
    threadpoolctl is a dependency of implicit >= 0.5.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        yield


class _ArrayRecommender(Recommender):
    """A recommender whose learned state is a few numpy arrays, saved as one ``.npz``.

    Subclasses define :meth:`get_params` (constructor arguments, JSON-able),
    :meth:`_state` (learned arrays) and :meth:`_set_state`.
    """

    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters: keyword arguments that rebuild an unfitted copy."""
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    def _rows(self, user_rows) -> sp.csr_matrix:
        self._check_fitted()
        return as_user_rows(user_rows, self.n_items_)

    def save(self, path: str | Path) -> Path:
        """Write hyper-parameters, learned arrays and the item id map to one ``.npz`` file.

        The file is written to ``path`` exactly (no suffix is added), atomically.
        """
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids_kind, ids = ids_to_array(self.item_ids_)
        meta = {
            "format": _SAVE_FORMAT,
            "class": type(self).__name__,
            "params": self.get_params(),
            "n_items": int(self.n_items_),
            "item_ids_kind": ids_kind,
        }
        arrays = {"meta": np.asarray(json.dumps(meta)), **self._state()}
        if ids is not None:
            arrays["item_ids"] = ids
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
            np.savez(f, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> _ArrayRecommender:
        """Read a model written by :meth:`save` (no pickled objects are read).

        Raises:
            ModelFileError: the file is damaged, foreign, or holds another model class.
        """
        meta, arrays = _read_npz(path)
        if meta["class"] != cls.__name__:
            raise ModelFileError(
                f"{path}: holds a {meta['class']} model, not a {cls.__name__}; "
                f"load it with {meta['class']}.load(path) or recvae.models.load_model(path)"
            )
        return cls._from_saved(meta, arrays, path)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict[str, np.ndarray], path: str | Path) -> _ArrayRecommender:
        try:
            model = cls(**meta["params"])
        except (TypeError, ValueError) as err:
            raise ModelFileError(f"{path}: its parameters do not fit this recvae's {cls.__name__} ({err}); "
                                 f"{MODEL_FIX}") from None
        model.n_items_ = int(meta["n_items"])
        try:
            model.item_ids_ = ids_from_array(meta["item_ids_kind"], arrays.pop("item_ids", None))
            model._set_state(arrays)
        except (KeyError, ValueError, TypeError) as err:
            raise ModelFileError(f"{path}: not a complete {cls.__name__} file (bad or missing array {err}); "
                                 f"{MODEL_FIX}") from None
        _check_loaded(model, path)
        return model


def _check_loaded(model: _ArrayRecommender, path: str | Path) -> None:
    """Refuse learned arrays whose shapes do not fit the saved item count and parameters, or are not finite."""
    n = model.n_items_
    if model.item_ids_ is not None and len(model.item_ids_) != n:
        raise ModelFileError(f"{path}: its item id map has {len(model.item_ids_)} ids for {n} items; {MODEL_FIX}")
    if isinstance(model, ItemKNN):
        arrays = {"similarity": model.similarity_}
        expected = {"similarity": (n, n)}
    else:
        arrays = model._state()
        expected = {
            Popularity: {"item_counts": (n,)},
            EASE: {"weights": (n, n)},
            ALS: {"item_factors": (n, getattr(model, "factors", 0))},
            BPR: {"item_factors": (n, getattr(model, "factors", 0) + 1)},
        }.get(type(model), {})
    for name, shape in expected.items():
        value = arrays.get(name)
        if value is None or tuple(value.shape) != shape:
            found = "missing" if value is None else f"of shape {tuple(value.shape)}"
            raise ModelFileError(f"{path}: its {name} array is {found}, expected {shape} for {n} items; {MODEL_FIX}")
        data = value.data if sp.issparse(value) else value
        if not np.issubdtype(data.dtype, np.number) or not np.isfinite(data).all():
            raise ModelFileError(f"{path}: its {name} array holds non-finite or non-numeric values; {MODEL_FIX}")


def _read_npz(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The checked ``meta`` and the arrays of a baseline file (see :func:`recvae.models.files.check_model_file`)."""
    path = Path(path)
    arrays = read_npz_arrays(path)
    if "meta" not in arrays:
        raise ModelFileError(f"{path}: not a recvae baseline file ({_SAVE_FORMAT}): it has no 'meta' entry; "
                             "give a file written by model.save")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except ValueError:  # json.JSONDecodeError, or a meta entry that is not text
        meta = None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its 'meta' entry is not recvae's JSON header; {MODEL_FIX}")
    if meta.get("format") != _SAVE_FORMAT:
        raise ModelFileError(f"{path}: format {meta.get('format')!r}, but this recvae reads {_SAVE_FORMAT!r}; "
                             f"{MODEL_FIX}")
    missing = [k for k in ("class", "params", "n_items", "item_ids_kind") if k not in meta]
    if missing or not isinstance(meta["params"], dict) or not isinstance(meta["n_items"], int) or meta["n_items"] < 1:
        raise ModelFileError(f"{path}: its 'meta' header is incomplete ({', '.join(missing) or 'params, n_items'}); "
                             f"{MODEL_FIX}")
    return meta, arrays


def load_baseline(path: str | Path) -> _ArrayRecommender:
    """Load any baseline written by ``save``, whatever its class.

    Raises:
        ModelFileError: the file is damaged, foreign or of an unknown class.
    """
    meta, arrays = _read_npz(path)
    cls = {c.__name__: c for c in BASELINES.values()}.get(meta["class"])
    if cls is None:
        raise ModelFileError(f"{path}: holds an unknown model class {str(meta['class'])[:40]!r}; "
                             "give a file written by a recvae baseline's save")
    return cls._from_saved(meta, arrays, path)


# =============================================================================== popularity
class Popularity(_ArrayRecommender):
    """Ranks items by how many training users interacted with them; the same for every user.

    Attributes set by ``fit``: ``item_counts_`` (float32, one per item),
    ``item_ids_``, ``n_items_``.
    """

    def __init__(self) -> None:
        self.item_counts_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {}

    def fit(self, train, validation=None) -> Popularity:
        """Count each item's training users. ``validation`` is ignored. Returns self."""
        matrix, item_ids = _training_matrix(train, validation)
        self.item_counts_ = matrix.getnnz(axis=0).astype(np.float32)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        return self

    def score(self, user_rows) -> np.ndarray:
        """The training counts, repeated for every user row (a fresh, writable array).

        Empty rows are accepted: popularity is what a cold user can be served.
        """
        self._check_fitted()
        rows = as_user_rows(user_rows, self.n_items_, allow_empty_rows=True)
        return np.tile(self.item_counts_, (rows.shape[0], 1))

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_counts": self.item_counts_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_counts_ = arrays["item_counts"]


# =============================================================================== EASE
def available_memory_bytes() -> int:
    """Bytes of RAM this process can still allocate, as best it can tell.

    ``psutil``'s available memory if psutil is installed, else ``MemAvailable``
    from /proc/meminfo, else the total physical memory (``os.sysconf``); capped
    by a cgroup (container) memory limit when one is set.
    """
    available = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(current))
    except (OSError, ValueError):
        pass
    return int(available)


def ease_memory_bytes(n_items: int) -> int:
    """Peak extra memory EASE's fit needs for ``n_items`` items.

    One dense float64 item x item matrix (the Gram matrix, inverted in place by
    Cholesky) plus the float32 weights: 12 bytes per item pair.
    """
    return 12 * int(n_items) ** 2


class EASE(_ArrayRecommender):
    """Embarrassingly Shallow Autoencoder (Steck 2019): closed-form item-item weights.

    ``G = XᵀX + λI``, ``P = G⁻¹``, ``B = I − P·diagMat(1/diag(P))`` (so ``B_ii = 0``),
    and a user row ``x`` scores ``x B``. Equivalently each column ``b_j`` is the
    ridge regression of item ``j`` on all other items. Computed in float64 (an
    in-place Cholesky inverse), stored as float32.

    Memory: ``12 · n_items²`` bytes at peak (checked before allocating: a
    :class:`MemoryError` names the fix when it does not fit).

    Args:
        l2: the ridge penalty λ (> 0); Steck uses 500 on ML-20M and Netflix.

    Attributes set by ``fit``: ``weights_`` ((items, items) float32 ``B``),
    ``item_ids_``, ``n_items_``.
    """

    def __init__(self, l2: float = 500.0) -> None:
        _check_number("l2", l2, minimum=0.0, strict=True)
        self.l2 = float(l2)
        self.weights_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {"l2": self.l2}

    def fit(self, train, validation=None) -> EASE:
        """Solve for the item-item weights. ``validation`` is ignored. Returns self.

        Raises:
            MemoryError: the dense item x item matrices do not fit in available RAM.
        """
        matrix, item_ids = _training_matrix(train, validation)
        n = matrix.shape[1]
        _check_ease_memory(n)
        started = time.perf_counter()
        # A bar over the three dense stages (terminals only): the inverse dominates on large catalogues.
        bar = tqdm(total=3, desc=f"EASE {n:,} items", unit="stage", disable=None, leave=False)
        gram = _dense_gram(matrix)
        gram[np.arange(n), np.arange(n)] += self.l2
        bar.update()
        precision = _spd_inverse_in_place(gram)
        del gram
        bar.update()
        diag = precision.diagonal().copy()
        precision /= -diag[None, :]  # column j divided by -P_jj: B = I - P diagMat(1/diag(P))
        precision[np.arange(n), np.arange(n)] = 0.0
        self.weights_ = np.ascontiguousarray(precision, dtype=np.float32)
        del precision
        bar.update()
        bar.close()
        self.item_ids_, self.n_items_ = item_ids, n
        logger.info("EASE fitted on %d users x %d items in %.2fs", matrix.shape[0], n, time.perf_counter() - started)
        return self

    def score(self, user_rows) -> np.ndarray:
        """``x_u B`` for each user row (a sparse-dense product)."""
        rows = self._rows(user_rows)
        return np.asarray(rows @ self.weights_, dtype=np.float32)

    def item_similarities(self, items: np.ndarray) -> np.ndarray:
        """Rows of ``B``: how much having item ``i`` raises each other item's score (``B_ii = 0``)."""
        self._check_fitted()
        return self.weights_[np.asarray(items)]

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = arrays["weights"]


def _check_ease_memory(n_items: int) -> None:
    needed = ease_memory_bytes(n_items)
    available = available_memory_bytes()
    gib = 2**30
    if needed > available:
        raise MemoryError(
            f"EASE on {n_items:,} items needs about {needed / gib:.2f} GiB ({needed:,} bytes: dense "
            f"{n_items:,} x {n_items:,} item matrices) but only {available / gib:.2f} GiB is available; "
            "drop rare items first (e.g. Interactions.from_dataframe(..., min_item_interactions=N)) "
            "or use a factor model (ALS)"
        )
    if needed > 0.5 * available:
        logger.warning(
            "EASE on %d items needs about %.2f GiB, more than half of the %.2f GiB available",
            n_items, needed / gib, available / gib,
        )


def _dense_gram(matrix: sp.csr_matrix, block_bytes: int = 1 << 28) -> np.ndarray:
    """``XᵀX`` as a dense float64 Fortran-ordered array, built a block of columns at a time.

    Blocking bounds the sparse intermediate (a dense-ish sparse product would
    need 12 bytes per entry on top of the dense result).
    """
    n = matrix.shape[1]
    x = matrix.astype(np.float64)
    xt = x.T.tocsr()
    xc = x.tocsc()
    gram = np.empty((n, n), dtype=np.float64, order="F")
    block = max(1, block_bytes // (8 * n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        gram[:, start:stop] = (xt @ xc[:, start:stop]).toarray()
    return gram


def _spd_inverse_in_place(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite Fortran-ordered matrix, overwriting it."""
    from scipy.linalg import lapack

    factor, info = lapack.dpotrf(a, lower=False, clean=False, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"XᵀX + λI is not positive definite (LAPACK dpotrf info={info}); increase l2"
        )
    inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverting XᵀX + λI failed (LAPACK dpotri info={info}); increase l2")
    # dpotri fills the upper triangle: mirror it into the lower one, a block of rows at a time.
    n = inverse.shape[0]
    block = max(1, (1 << 26) // max(1, 8 * n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        inverse[start:stop, :start] = inverse[:start, start:stop].T
        diag_block = inverse[start:stop, start:stop]
        inverse[start:stop, start:stop] = np.triu(diag_block) + np.triu(diag_block, 1).T
    return inverse


# =============================================================================== ALS
class ALS(_ArrayRecommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008), trained by ``implicit`` on CPU.

    Confidence: an observed value ``x_ui`` (1 for binarised data) has confidence
    ``c_ui = 1 + alpha · x_ui`` and preference 1; unobserved cells have
    confidence 1 and preference 0. ``implicit`` >= 0.5 instead reads the matrix
    values themselves as confidences (its own ``alpha`` multiplies them), so
    recvae passes it ``1 + alpha · X`` and sets its ``alpha`` to 1: on binary
    data ``ALS(alpha=a)`` equals implicit's ``alpha=1+a``.

    Fold-in (held-out and new users, and ``embed_users``): with the item factors
    ``Y`` fixed, the exact ALS user step in closed form, batched in numpy (float64)::

        u = (YᵀY + λI + Y_uᵀ diag(alpha · x_u) Y_u)⁻¹ Y_uᵀ (1 + alpha · x_u)

    where ``Y_u`` are the user's items' factors. For a training user this
    reproduces the factor implicit learned, once training has converged.

    Args:
        factors: latent dimension.
        regularization: λ, the L2 penalty on factors (not scaled by counts, as in implicit).
        alpha: confidence slope (>= 0; 0 gives unweighted least squares).
        iterations: ALS sweeps.
        seed: seeds implicit's factor initialisation.
        use_cg: conjugate-gradient user/item steps in training (implicit's fast
            default); False solves each step exactly (Cholesky). Fold-in is always exact.
        num_threads: implicit's training threads (0 = all cores).

    Attributes set by ``fit``: ``item_factors_`` ((items, factors) float32),
    ``user_factors_`` (the training users', float32; not saved),
    ``implicit_model_`` (the trained implicit object; not saved), ``item_ids_``, ``n_items_``.
    """

    def __init__(
        self,
        factors: int = 128,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 0,
        *,
        use_cg: bool = True,
        num_threads: int = 0,
    ) -> None:
        _check_number("factors", factors, minimum=1, integer=True)
        _check_number("regularization", regularization, minimum=0.0)
        _check_number("alpha", alpha, minimum=0.0)
        _check_number("iterations", iterations, minimum=1, integer=True)
        _check_number("seed", seed, minimum=0, integer=True)
        _check_number("num_threads", num_threads, minimum=0, integer=True)
        self.factors, self.regularization, self.alpha = int(factors), float(regularization), float(alpha)
        self.iterations, self.seed = int(iterations), int(seed)
        self.use_cg, self.num_threads = bool(use_cg), int(num_threads)
        self.item_factors_: np.ndarray | None = None
        self.user_factors_: np.ndarray | None = None
        self.implicit_model_ = None

    def get_params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "seed": self.seed,
            "use_cg": self.use_cg,
            "num_threads": self.num_threads,
        }

    def fit(self, train, validation=None) -> ALS:
        """Train with implicit's ALS. ``validation`` is ignored. Returns self."""
        from implicit.cpu.als import AlternatingLeastSquares

        matrix, item_ids = _training_matrix(train, validation)
        _warn_degenerate_als(self.factors, self.regularization, matrix.shape[1])
        confidence = matrix.copy()
        confidence.data = (1.0 + self.alpha * confidence.data).astype(np.float32)
        started = time.perf_counter()
        with _single_threaded_blas():
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=1.0,
                dtype=np.float32,
                use_cg=self.use_cg,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.seed,
            )
            model.fit(confidence, show_progress=False)
        self.implicit_model_ = model
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        logger.info(
            "ALS fitted on %d users x %d items (%d factors, %d iterations) in %.2fs",
            matrix.shape[0], matrix.shape[1], self.factors, self.iterations, time.perf_counter() - started,
        )
        return self

    def embed_users(self, user_rows) -> UserEmbeddings:
        """``mu``: (users, factors) float32 factors solved from the rows (exact ALS user step); no sigma."""
        return UserEmbeddings(self._user_factors(user_rows))

    def _user_factors(self, user_rows) -> np.ndarray:
        rows = self._rows(user_rows)
        y = self.item_factors_.astype(np.float64)
        gram = y.T @ y
        gram[np.diag_indices_from(gram)] += self.regularization
        return _als_fold_in(rows, y, gram, self.alpha).astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        """(items, factors) float32 item factors; ``score = embed_users(x) @ item_embeddings().T``."""
        self._check_fitted()
        return self.item_factors_

    def score(self, user_rows) -> np.ndarray:
        """Folded-in user factors times the item factors."""
        return self._user_factors(user_rows) @ self.item_factors_.T

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = arrays["item_factors"]


def _warn_degenerate_als(factors: int, regularization: float, n_items: int) -> None:
    """Warn about ALS settings that fit but cannot generalise (an exact interpolation of the data)."""
    if factors >= n_items:
        warnings.warn(f"ALS with factors={factors} >= {n_items} items can reproduce the training matrix exactly "
                      f"and rank unseen items arbitrarily; use fewer factors (< {n_items})", RecvaeWarning,
                      stacklevel=3)
    if regularization == 0:
        warnings.warn("ALS with regularization=0 is unregularised: the factors overfit and the fold-in solve can be "
                      "singular; use regularization > 0 (e.g. 0.01)", RecvaeWarning, stacklevel=3)


def _als_fold_in(
    rows: sp.csr_matrix, y: np.ndarray, gram_reg: np.ndarray, alpha: float, budget: int = 1 << 23
) -> np.ndarray:
    """Batched exact ALS user solve: ``(YᵀY + λI + Y_uᵀ diag(αx_u) Y_u)⁻¹ Y_uᵀ (1 + αx_u)``.

    Users are sorted by row length and solved in batches whose padded
    (users, longest row, factors) gather stays under ``budget`` elements; each
    batch is one batched matmul and one batched ``np.linalg.solve``.
    """
    # Many small gemms and solves: a multi-threaded BLAS on a busy machine ran this 9x
    # slower (15.8 s vs 1.75 s for 300 ml-1m users at 256 factors), so use one thread.
    with _single_threaded_blas():
        return _als_fold_in_batched(rows, y, gram_reg, alpha, budget)


def _als_fold_in_batched(
    rows: sp.csr_matrix, y: np.ndarray, gram_reg: np.ndarray, alpha: float, budget: int
) -> np.ndarray:
    n_users, f = rows.shape[0], y.shape[1]
    confidence = rows.astype(np.float64)
    confidence.data = 1.0 + alpha * confidence.data
    rhs = np.asarray(confidence @ y)  # (users, f): sum over the user's items of c_ui y_i
    if alpha == 0.0:
        return np.linalg.solve(gram_reg, rhs.T).T
    lengths = np.diff(rows.indptr)
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    max_batch = max(1, budget // (f * f))
    out = np.empty((n_users, f), dtype=np.float64)
    start = 0
    while start < n_users:
        # Largest batch (ascending lengths, so the last user is the longest) within budget.
        cost = np.arange(1, n_users - start + 1) * np.maximum(sorted_lengths[start:], 1) * f
        size = int(min(max(1, np.searchsorted(cost, budget, side="right")), max_batch))
        users = order[start : start + size]
        sub = rows[users]
        sub_lengths = np.diff(sub.indptr)
        width = max(1, int(sub_lengths.max()))
        mask = np.arange(width)[None, :] < sub_lengths[:, None]
        index = np.zeros((size, width), dtype=np.int64)
        index[mask] = sub.indices  # CSR order is row-major, as is boolean-mask assignment
        weight = np.zeros((size, width), dtype=np.float64)
        weight[mask] = np.sqrt(alpha * sub.data.astype(np.float64))
        z = y[index] * weight[:, :, None]  # (size, width, f): sqrt(alpha x_ui) y_i, zero padded
        a = np.matmul(z.transpose(0, 2, 1), z)
        a += gram_reg
        out[users] = np.linalg.solve(a, rhs[users][:, :, None])[:, :, 0]
        start += size
    return out


# =============================================================================== BPR
class BPR(_ArrayRecommender):
    """Bayesian Personalised Ranking (Rendle et al. 2009), trained by ``implicit`` on CPU.

    implicit's CPU BPR learns ``factors + 1`` columns: the last item column is an
    item bias and the last user column is fixed at 1.

    Fold-in (held-out and new users): BPR has no closed-form user step, so a user
    row ``x`` is projected onto the span of the item factors (bias column
    included) by ridge regression, ``u = (YᵀY + λ_f I)⁻¹ Yᵀ x`` with
    ``λ_f = fold_in_l2``, and scored ``Y u``: the best linear reconstruction of
    the row in BPR's item space. Training users are scored the same way (their
    BPR-learned factors are kept in ``user_factors_`` but not used by ``score``).

    Args:
        factors: latent dimension (without the bias column).
        learning_rate, regularization, iterations: implicit's SGD settings.
        seed: seeds implicit's initialisation and sampling.
        fold_in_l2: the ridge penalty λ_f of the fold-in projection.
        num_threads: implicit's training threads (0 = all cores; >1 makes SGD
            updates race, so results vary slightly between runs).

    Attributes set by ``fit``: ``item_factors_`` ((items, factors + 1) float32,
    the last column the item bias), ``user_factors_`` (training users; not
    saved), ``item_ids_``, ``n_items_``.
    """

    def __init__(
        self,
        factors: int = 128,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
        *,
        fold_in_l2: float = 1.0,
        num_threads: int = 0,
    ) -> None:
        _check_number("factors", factors, minimum=1, integer=True)
        _check_number("learning_rate", learning_rate, minimum=0.0, strict=True)
        _check_number("regularization", regularization, minimum=0.0)
        _check_number("iterations", iterations, minimum=1, integer=True)
        _check_number("seed", seed, minimum=0, integer=True)
        _check_number("fold_in_l2", fold_in_l2, minimum=0.0, strict=True)
        _check_number("num_threads", num_threads, minimum=0, integer=True)
        self.factors, self.learning_rate, self.regularization = int(factors), float(learning_rate), float(regularization)
        self.iterations, self.seed = int(iterations), int(seed)
        self.fold_in_l2, self.num_threads = float(fold_in_l2), int(num_threads)
        self.item_factors_: np.ndarray | None = None
        self.user_factors_: np.ndarray | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "learning_rate": self.learning_rate,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "seed": self.seed,
            "fold_in_l2": self.fold_in_l2,
            "num_threads": self.num_threads,
        }

    def fit(self, train, validation=None) -> BPR:
        """Train with implicit's BPR. ``validation`` is ignored. Returns self."""
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        matrix, item_ids = _training_matrix(train, validation)
        started = time.perf_counter()
        with _single_threaded_blas():
            model = BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                dtype=np.float32,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.seed,
            )
            model.fit(matrix, show_progress=False)
        item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        if item_factors.shape != (matrix.shape[1], self.factors + 1):
            raise RuntimeError(
                f"implicit BPR returned item factors of shape {item_factors.shape}; expected "
                f"{(matrix.shape[1], self.factors + 1)} (factors + a bias column): unsupported implicit version"
            )
        self.item_factors_ = item_factors
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        logger.info(
            "BPR fitted on %d users x %d items (%d factors, %d iterations) in %.2fs",
            matrix.shape[0], matrix.shape[1], self.factors, self.iterations, time.perf_counter() - started,
        )
        return self

    def embed_users(self, user_rows) -> UserEmbeddings:
        """``mu``: (users, factors + 1) float32 ridge fold-in coefficients (last: the bias coefficient); no sigma."""
        return UserEmbeddings(self._user_factors(user_rows))

    def _user_factors(self, user_rows) -> np.ndarray:
        rows = self._rows(user_rows)
        y = self.item_factors_.astype(np.float64)
        gram = y.T @ y
        gram[np.diag_indices_from(gram)] += self.fold_in_l2
        rhs = np.asarray(rows.astype(np.float64) @ y)
        return np.linalg.solve(gram, rhs.T).T.astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        """(items, factors + 1) float32 item factors, the last column the item bias."""
        self._check_fitted()
        return self.item_factors_

    def score(self, user_rows) -> np.ndarray:
        """Ridge fold-in coefficients times the item factors (bias column included)."""
        return self._user_factors(user_rows) @ self.item_factors_.T

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = arrays["item_factors"]


# =============================================================================== item KNN
_SIMILARITIES = ("cosine", "bm25", "tfidf")


class ItemKNN(_ArrayRecommender):
    """Item-item nearest neighbours from ``implicit`` (cosine, BM25 or TF-IDF weighting).

    ``fit`` keeps each item's ``k`` most similar items in a sparse item x item
    matrix ``S`` (row ``i``: the neighbours of item ``i``, as implicit computes
    it); a user row ``x`` scores ``x S``, one sparse product for a whole batch,
    so held-out users need no retraining. This equals implicit's own
    ``recommend`` scores.

    Args:
        k: neighbours kept per item.
        similarity: "cosine" (L2-normalised item columns), "bm25" or "tfidf"
            (implicit's weightings of the item x user matrix).
        K1, B: BM25 parameters (used with ``similarity="bm25"`` only).
        num_threads: implicit's threads (0 = all cores).

    Attributes set by ``fit``: ``similarity_`` ((items, items) float32 CSR),
    ``item_ids_``, ``n_items_``.
    """

    def __init__(
        self, k: int = 100, similarity: str = "cosine", K1: float = 1.2, B: float = 0.75, *, num_threads: int = 0
    ) -> None:
        _check_number("k", k, minimum=1, integer=True)
        if similarity not in _SIMILARITIES:
            raise ValueError(f"similarity must be one of {_SIMILARITIES}; got {similarity!r}")
        _check_number("K1", K1, minimum=0.0)
        _check_number("B", B, minimum=0.0)
        if B > 1:
            raise ValueError(f"B must lie in [0, 1]; got {B!r}")
        _check_number("num_threads", num_threads, minimum=0, integer=True)
        self.k, self.similarity, self.K1, self.B = int(k), similarity, float(K1), float(B)
        self.num_threads = int(num_threads)
        self.similarity_: sp.csr_matrix | None = None

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "similarity": self.similarity, "K1": self.K1, "B": self.B, "num_threads": self.num_threads}

    def fit(self, train, validation=None) -> ItemKNN:
        """Compute the k-nearest-neighbour item similarities. ``validation`` is ignored. Returns self."""
        from implicit.nearest_neighbours import ItemItemRecommender, bm25_weight, normalize, tfidf_weight

        matrix, item_ids = _training_matrix(train, validation)
        items_users = matrix.T
        # implicit's Cosine/BM25/TFIDFRecommender.fit apply these weightings but hand a COO
        # matrix on (with a conversion warning); weighting here keeps it CSR.
        if self.similarity == "cosine":
            weighted = normalize(items_users).T
        elif self.similarity == "bm25":
            weighted = bm25_weight(items_users, self.K1, self.B).T
        else:
            weighted = normalize(tfidf_weight(items_users)).T
        started = time.perf_counter()
        with _single_threaded_blas():
            model = ItemItemRecommender(K=self.k, num_threads=self.num_threads)
            model.fit(sp.csr_matrix(weighted), show_progress=False)
        similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        similarity.sort_indices()
        self.similarity_ = similarity
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        logger.info(
            "ItemKNN (%s, k=%d) fitted on %d users x %d items in %.2fs",
            self.similarity, self.k, matrix.shape[0], matrix.shape[1], time.perf_counter() - started,
        )
        return self

    def item_similarities(self, items: np.ndarray) -> np.ndarray:
        """Rows of the neighbour matrix ``S``: item ``i``'s k nearest neighbours, 0 elsewhere."""
        self._check_fitted()
        return self.similarity_[np.asarray(items)].toarray()

    def score(self, user_rows) -> np.ndarray:
        """``x S`` for each user row (a sparse product, densified per batch)."""
        rows = self._rows(user_rows)
        return (rows @ self.similarity_).toarray().astype(np.float32, copy=False)

    def _state(self) -> dict[str, np.ndarray]:
        return csr_to_arrays("similarity", self.similarity_)

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity_ = csr_from_arrays("similarity", arrays)


#: The baselines by short name (for command lines and experiment configs).
BASELINES: dict[str, type[_ArrayRecommender]] = {
    "popularity": Popularity,
    "ease": EASE,
    "als": ALS,
    "bpr": BPR,
    "itemknn": ItemKNN,
}
