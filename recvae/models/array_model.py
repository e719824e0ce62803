"""What the non-torch models share: a recommender whose learned state is a few numpy arrays in one ``.npz``
(hyper-parameters as JSON text, no pickles), input checks and single-threaded BLAS for implicit."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recvae.nn import hyperparams
from recvae.models.base import Recommender, as_user_rows, ids_from_array, ids_to_array, training_inputs
from recvae.models.files import MODEL_FIX, ModelFileError, read_npz_arrays

logger = logging.getLogger(__name__)

__all__ = ["ArrayRecommender", "SAVE_FORMAT", "training_matrix", "check_number", "single_threaded_blas", "read_npz"]


SAVE_FORMAT = "recvae.baseline/1"


# =============================================================================== shared plumbing
def training_matrix(train, validation=None) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """The validated float32 CSR training matrix and the item id map (if any)."""
    matrix, _, item_ids = training_inputs(train, validation)
    matrix = as_user_rows(matrix, matrix.shape[1], allow_empty_rows=True)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0 or matrix.nnz == 0:
        raise ValueError(f"the training matrix {matrix.shape} has no interactions; nothing to learn from")
    if item_ids is not None and len(item_ids) != matrix.shape[1]:
        raise ValueError(f"{len(item_ids)} item ids for a training matrix with {matrix.shape[1]} item columns")
    return matrix, item_ids


def check_number(name: str, value: Any, *, minimum: float, integer: bool = False, strict: bool = False) -> float:
    """A baseline's numeric hyper-parameter, checked as every model's are (:mod:`recvae.nn.hyperparams`):
    finite, not a bool, ``>= minimum`` (``> minimum`` when ``strict``), an integer when ``integer``
    (integral floats accepted). Returns it as an int or a float; raises ``HyperParameterError``
    (a ``ValueError`` and a ``TypeError``) naming it and the value."""
    if integer:
        return hyperparams.integer(name, value, minimum=int(minimum) + (1 if strict else 0))
    return hyperparams.number(name, value, minimum=minimum, low_open=strict)


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread while ``implicit`` runs its own thread pool.

    ``implicit`` parallelises over users/items itself; a multi-threaded BLAS
    underneath oversubscribes the cores (implicit warns it can be 10x slower).
    threadpoolctl is a dependency of implicit >= 0.5.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        yield


class ArrayRecommender(Recommender):
    """A recommender whose learned state is a few numpy arrays, saved as one ``.npz``.

    Subclasses define :meth:`get_params` (constructor arguments, JSON-able),
    :meth:`_state` (learned arrays) and :meth:`_set_state`.
    """

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters: keyword arguments that rebuild an unfitted copy."""
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each learned array must have for ``n_items_`` items (checked on load)."""
        return {}

    def _checked_arrays(self) -> dict:
        """The learned arrays as loaded (dense or sparse), for the load-time checks."""
        return self._state()

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
            "format": SAVE_FORMAT,
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
    def load(cls, path: str | Path) -> ArrayRecommender:
        """Read a model written by :meth:`save` (no pickled objects are read).

        Raises:
            ModelFileError: the file is damaged, foreign, or holds another model class.
        """
        meta, arrays = read_npz(path)
        if meta["class"] != cls.__name__:
            raise ModelFileError(
                f"{path}: holds a {meta['class']} model, not a {cls.__name__}; "
                f"load it with {meta['class']}.load(path) or recvae.models.load_model(path)"
            )
        return cls._from_saved(meta, arrays, path)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict[str, np.ndarray], path: str | Path) -> ArrayRecommender:
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
        unexpected = sorted(set(arrays) - set(model._state()))
        if unexpected:  # another model's or version's arrays: loading the rest would drop them silently
            raise ModelFileError(f"{path}: holds arrays a {cls.__name__} does not have (unexpected "
                                 f"{', '.join(unexpected[:3])}); {MODEL_FIX}")
        return model


def _check_loaded(model: ArrayRecommender, path: str | Path) -> None:
    """Refuse learned arrays whose shapes do not fit the saved item count and parameters, or are not finite."""
    n = model.n_items_
    if model.item_ids_ is not None and len(model.item_ids_) != n:
        raise ModelFileError(f"{path}: its item id map has {len(model.item_ids_)} ids for {n} items; {MODEL_FIX}")
    arrays = model._checked_arrays()
    expected = model._expected_shapes()
    for name, shape in expected.items():
        value = arrays.get(name)
        if value is None or tuple(value.shape) != shape:
            found = "missing" if value is None else f"of shape {tuple(value.shape)}"
            raise ModelFileError(f"{path}: its {name} array is {found}, expected {shape} for {n} items; {MODEL_FIX}")
        data = value.data if sp.issparse(value) else value
        if not np.issubdtype(data.dtype, np.number) or not np.isfinite(data).all():
            raise ModelFileError(f"{path}: its {name} array holds non-finite or non-numeric values; {MODEL_FIX}")


def read_npz(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The checked ``meta`` and the arrays of a baseline file (see :func:`recvae.models.files.check_model_file`)."""
    path = Path(path)
    arrays = read_npz_arrays(path)
    if "meta" not in arrays:
        raise ModelFileError(f"{path}: not a recvae baseline file ({SAVE_FORMAT}): it has no 'meta' entry; "
                             "give a file written by model.save")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except ValueError:  # json.JSONDecodeError, or a meta entry that is not text
        meta = None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its 'meta' entry is not recvae's JSON header; {MODEL_FIX}")
    if meta.get("format") != SAVE_FORMAT:
        raise ModelFileError(f"{path}: format {meta.get('format')!r}, but this recvae reads {SAVE_FORMAT!r}; "
                             f"{MODEL_FIX}")
    missing = [k for k in ("class", "params", "n_items", "item_ids_kind") if k not in meta]
    if missing or not isinstance(meta["params"], dict) or not isinstance(meta["n_items"], int) or meta["n_items"] < 1:
        raise ModelFileError(f"{path}: its 'meta' header is incomplete ({', '.join(missing) or 'params, n_items'}); "
                             f"{MODEL_FIX}")
    return meta, arrays
