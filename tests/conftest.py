from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """../shared/datasets beside the checkout; tests using real files skip when absent."""
    return SHARED_DATASETS


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``).

    The tests' models are tiny and the cores shared, so more threads only contend; twin
    runs that compare weights exactly also need the same thread count.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_blas_thread():
    """A single-threaded BLAS for a whole test module: on shared cores more threads only contend."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        yield


def shared_file(relative: str) -> Path:
    path = SHARED_DATASETS / relative
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


def random_rows(seed: int = 0, n: int = 6, items: int = 50):
    """A small random binary CSR batch with no empty rows (the first item is in every row)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    dense = (rng.random((n, items)) < 0.15).astype(np.float32)
    dense[:, 0] = 1.0
    return sp.csr_matrix(dense)
