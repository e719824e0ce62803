"""EASE's and EDLAE's dense solve: torch's in-place Cholesky inverse, its blocked stages, float32
against float64, and the memory check under a real address-space cap (not a kill).

The factorisation at >= 20k items with 2 threads (where OpenBLAS's dpotrf segfaulted) runs only with
RECVAE_BIG_TESTS=1: it takes minutes.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recvae.evaluation.metrics import mask_seen, ndcg_at_k, recall_at_k, top_k
from recvae.models import ease
from recvae.runtime.memory import available_memory_bytes


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The test machine's cores are shared: more threads only contend (and spin) there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _log(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    """Binary users x items with long-tailed item popularity and no empty user."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7
    probability = np.minimum(1.0, density * n_items * popularity / popularity.sum())
    x = rng.random((n_users, n_items)) < probability[rng.permutation(n_items)]
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    return sp.csr_matrix(x.astype(np.float32))


def _spd(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return np.asfortranarray(a @ a.T / n + np.eye(n))


# ----------------------------------------------------------------------------- the solver
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_the_inverse_is_written_into_the_matrix_itself(dtype, rtol):
    a = _spd(300, seed=1)
    expected = np.linalg.inv(a)
    work = a.astype(dtype, order="F")
    address = work.ctypes.data
    assert ease._spd_inverse_in_place(work) is work and work.ctypes.data == address
    np.testing.assert_allclose(work, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    np.testing.assert_array_equal(work, work.T)  # both triangles, not only the one LAPACK writes


def test_a_matrix_that_is_not_positive_definite_is_one_line_linalg_error():
    a = _spd(50, seed=2)
    a[7, 7] = -1.0
    with pytest.raises(np.linalg.LinAlgError, match=r"not positive definite \(.*column 8\); increase l2$"):
        ease._spd_inverse_in_place(a)
    with pytest.raises(ValueError, match="Fortran-ordered"):
        ease._spd_inverse_in_place(np.ascontiguousarray(_spd(5, seed=3)))


def test_edlae_without_ridge_on_an_item_nobody_has_says_increase_l2():
    x = _log(40, 12, 0.3, seed=4).tolil()
    x[:, 5] = 0
    with pytest.raises(np.linalg.LinAlgError, match="increase l2"):
        ease.edlae_weights(x.tocsr(), 0.0, 0.3)


# ----------------------------------------------------------------------------- the blocked stages
def test_small_blocks_give_the_one_block_result_bit_for_bit(monkeypatch):
    """Blocks of the Gram build and of the in-place float32 conversion (whose float32 rows overwrite
    float64 rows of the same buffer) give exactly the weights of a single block."""
    x = _log(300, 90, 0.08, seed=5)
    whole = {d: ease._closed_form_weights(x, 30.0, 0.2, "EDLAE", dtype=d) for d in (np.float64, np.float32)}
    monkeypatch.setattr(ease, "BLOCK_BYTES", 8 * 90 * 7)  # 7 rows, 4 Gram columns per block
    assert ease._weights_block_rows(90) == 7 and ease._gram_block_columns(90, 8) == 4
    np.testing.assert_array_equal(ease._dense_gram(x), (x.T @ x).toarray().astype(np.float64))
    for dtype, weights in whole.items():
        blocked = ease._closed_form_weights(x, 30.0, 0.2, "EDLAE", dtype=dtype)
        np.testing.assert_array_equal(blocked, weights)


def test_float64_weights_match_the_textbook_formula_and_keep_only_their_float32_bytes():
    x = _log(400, 150, 0.05, seed=6).astype(np.float64)
    gram = (x.T @ x).toarray() + 50.0 * np.eye(150)
    precision = np.linalg.inv(gram)
    expected = np.eye(150) - precision / np.diag(precision)[None, :]
    np.fill_diagonal(expected, 0.0)
    weights = ease._closed_form_weights(x.tocsr(), 50.0, 0.0, "EASE", dtype=np.float64)
    assert weights.dtype == np.float32 and weights.flags.c_contiguous and weights.shape == (150, 150)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-7)
    owner = weights
    while owner.base is not None:
        owner = owner.base
    assert owner.nbytes <= 4 * 150 * 150 + 8  # the float64 buffer shrank to the weights


def test_float32_solve_ranks_like_float64_on_a_mid_size_catalogue():
    x = _log(3000, 1500, 0.01, seed=7)
    held = np.random.default_rng(8).random(x.nnz) < 0.2
    coo = x.tocoo()
    fold_in = sp.csr_matrix((coo.data[~held], (coo.row[~held], coo.col[~held])), shape=x.shape)
    target = sp.csr_matrix((coo.data[held], (coo.row[held], coo.col[held])), shape=x.shape)
    metrics, weights = {}, {}
    for dtype in (np.float64, np.float32):
        weights[dtype] = ease._closed_form_weights(fold_in, 200.0, 0.0, "EASE", dtype=dtype)
        top = top_k(mask_seen(np.asarray(fold_in @ weights[dtype]), fold_in), 100)
        metrics[dtype] = (ndcg_at_k(top, target, 100).mean(), recall_at_k(top[:, :20], target, 20).mean())
    scale = np.abs(weights[np.float64]).max()
    np.testing.assert_allclose(weights[np.float32], weights[np.float64], atol=1e-4 * scale)
    np.testing.assert_allclose(metrics[np.float32], metrics[np.float64], atol=1e-3)


# ----------------------------------------------------------------------------- memory: a refusal, never a kill
def _run_capped(args: list[str], cap_bytes: int, cwd) -> subprocess.CompletedProcess:
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recvae", *args], cwd=cwd, env=env, preexec_fn=cap,
                          capture_output=True, text=True, timeout=600)


def test_a_catalogue_too_large_is_refused_in_one_line_under_an_address_space_cap(tmp_path):
    """Sized so that even the float32 solve needs ~2x the available memory, under an 8 GiB address
    space cap: were the check wrong, the allocation would fail (or, uncapped, the OOM killer strike)."""
    n_items = int(math.sqrt(2.5 * available_memory_bytes() / 4))  # the training split keeps ~85% of them
    rng = np.random.default_rng(9)
    users = np.repeat(np.arange(n_items // 4), 6)
    items = np.concatenate([np.arange(n_items), rng.integers(0, n_items, len(users) - n_items)])
    path = tmp_path / "log.csv"
    pd.DataFrame({"user": users, "item": items}).drop_duplicates().to_csv(path, index=False)
    done = _run_capped(["train", str(path), "--implicit", "--model", "ease", "--no-progress", "--min-user-events", "1",
                        "-o", str(tmp_path / "run")], 8 * 2**30, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[-1].startswith("recvae: error: out of memory: EASE on ") and " items (in float32) needs about " in lines[-1]
    assert "but only" in lines[-1] and "--model sparse-ease" in lines[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.environ.get("RECVAE_BIG_TESTS") != "1", reason="set RECVAE_BIG_TESTS=1: minutes of CPU and ~2-4 GB")
def test_the_factorisation_holds_at_20k_items_with_two_threads(tmp_path):
    """OpenBLAS's dpotrf segfaulted here with 2+ threads (a dead process); torch's MKL solve must exit 0."""
    script = textwrap.dedent("""
        import numpy as np, scipy.sparse as sp, torch
        from recvae.models import ease
        torch.set_num_threads(2)
        n = 20_000
        x = sp.random(n // 2, n, density=0.002, format="csr", dtype=np.float32, random_state=0)
        x.data[:] = 1.0
        weights = ease.edlae_weights(x, 500.0, 0.0)  # float64 unless that needs over half the memory
        assert weights.shape == (n, n) and np.isfinite(weights[:: 997]).all()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-2000:])
