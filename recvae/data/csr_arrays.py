"""CSR matrices as named plain arrays, for pickle-free ``.npz`` files (numpy only, no torch)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["csr_to_arrays", "csr_from_arrays"]


def csr_to_arrays(name: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as named plain arrays (for ``np.savez`` without pickles)."""
    return {
        f"{name}_data": matrix.data,
        f"{name}_indices": matrix.indices,
        f"{name}_indptr": matrix.indptr,
        f"{name}_shape": np.asarray(matrix.shape, dtype=np.int64),
    }


def csr_from_arrays(name: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    """Inverse of :func:`csr_to_arrays`."""
    shape = tuple(int(x) for x in arrays[f"{name}_shape"])
    return sp.csr_matrix((arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]), shape=shape)
