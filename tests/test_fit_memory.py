"""Issue 30 part 2: every fit checks its memory before its first large allocation.

The VAE family's plan (:meth:`memory_parts`, :mod:`recvae.training.memory_plan`), ALS/BPR's and
SparseEASE's checks and the ranking's block plan refuse in one line, naming what needs how much,
what is available and the knob that fits, before anything catalogue-sized is allocated; and the
VAE plan is an upper bound of a real fit's peak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.evaluation.ranking import BlockPlan, plan_blocks
from recvae.models.registry import make_model
from recvae.runtime.memory import InsufficientMemoryError
from recvae.training.memory_plan import ItemMatrix, fit_memory_parts
from recvae.training.config import TrainingConfig

VAES = ("mult-vae", "mult-dae", "recvae")


def _rows(users: int = 60, items: int = 3000, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((users, items)) < 0.01
    dense[:, 0] = True
    return sp.csr_matrix(dense.astype(np.float32))


def _fake_available(monkeypatch, available: int) -> None:
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: int(available))


def _no_net(monkeypatch, name: str) -> None:
    """Building the net (the first catalogue-sized allocation) fails the test."""
    cls = type(make_model(name, {}))
    monkeypatch.setattr(cls, "_build_net", lambda self, n: pytest.fail("the net was built before the memory check"))


@pytest.mark.parametrize("name", VAES)
def test_a_vae_fit_that_cannot_fit_refuses_in_one_line_naming_sparse_ease(monkeypatch, name):
    _fake_available(monkeypatch, 10_000)
    _no_net(monkeypatch, name)
    with pytest.raises(InsufficientMemoryError) as err:
        make_model(name, {"epochs": 1, "progress": False, "device": "cpu"}).fit(_rows())
    message = str(err.value)
    assert "\n" not in message
    assert f"training on 60 users x 3,000 items needs about" in message
    assert "item weights" in message and "Adam moments" in message and "is available" in message
    assert message.endswith("use --model sparse-ease (sparse item-item weights)")


@pytest.mark.parametrize("name", VAES)
def test_the_refusal_names_the_item_chunk_that_fits_and_its_need(monkeypatch, name):
    rows = _rows()
    model = make_model(name, {"epochs": 1, "progress": False, "device": "cpu", "batch_size": 60})
    full = sum(model.memory_parts(60, 3000, rows.nnz).values())
    chunked = sum(model.memory_parts(60, 3000, rows.nnz, item_chunk=1024).values())
    assert chunked < full
    _fake_available(monkeypatch, (chunked + full) // 2)
    _no_net(monkeypatch, name)
    with pytest.raises(InsufficientMemoryError, match=r"--param item_chunk=1024 would need [\d.]+ (MiB|GiB); "
                                                      r"or use --model sparse-ease") as err:
        model.fit(rows)
    assert "batch x items logits" in str(err.value)


def test_a_vae_fit_that_fits_trains(monkeypatch):
    _fake_available(monkeypatch, 2**40)
    model = make_model("mult-dae", {"epochs": 1, "progress": False, "device": "cpu"}).fit(_rows(items=300))
    assert model.net_ is not None


def test_the_plan_counts_the_parts_a_config_changes():
    training = TrainingConfig(batch_size=100)
    matrices = [ItemMatrix("input layer", 600, sparse_grad=True), ItemMatrix("output layer", 601)]
    full = fit_memory_parts(1000, 100_000, 10_000, matrices, training, output_width=600)
    assert full["item weights"] == 4 * 100_000 * 1201
    assert full["gradients"] == full["item weights"] and full["Adam moments"] == 2 * full["item weights"]
    assert full["batch x items logits"] == 6 * 4 * 100 * 100_000
    chunked = fit_memory_parts(1000, 100_000, 10_000, matrices, training, output_width=600, item_chunk=1000)
    assert chunked["batch x item_chunk logits"] == 6 * 4 * 100 * 1000
    sparse = fit_memory_parts(1000, 100_000, 10_000, matrices, TrainingConfig(batch_size=100, sparse_item_updates=True,
                                                                               item_moments="bf16"),
                              output_width=600)
    assert sparse["gradients"] < full["gradients"] and sparse["Adam moments"] < full["Adam moments"]
    validated = fit_memory_parts(1000, 100_000, 10_000, matrices, TrainingConfig(batch_size=10), output_width=600,
                                 n_validation=5000)
    # Validation (after the epoch) outweighs a batch of 10's logits; the best weights' copy stays.
    assert validated["validation scores"] == 2**30 and validated["best weights copy"] == 4 * 100_000 * 1201
    assert "batch x items logits" not in validated


# ------------------------------------------------------------------ the other models' checks
@pytest.mark.parametrize("name, params", [("als", {}), ("bpr", {}), ("sparse-ease", {})])
def test_the_array_models_refuse_through_require_memory(monkeypatch, name, params):
    _fake_available(monkeypatch, 1_000)
    with pytest.raises(InsufficientMemoryError) as err:
        make_model(name, params).fit(_rows(items=400))
    message = str(err.value)
    assert "\n" not in message and "needs about" in message and "but only 0 MiB is available" in message


def test_the_factor_models_name_the_factors_that_fit(monkeypatch):
    _fake_available(monkeypatch, 1_000)
    with pytest.raises(InsufficientMemoryError, match=r"--param factors=32 would need"):
        make_model("als", {"factors": 128}).fit(_rows(items=400))


# ------------------------------------------------------------------ ranking blocks
def test_a_ranking_step_that_cannot_fit_at_one_user_is_refused_in_one_line():
    with pytest.raises(InsufficientMemoryError) as err:
        plan_blocks(10, 300_000, 100, blockwise=False, available=1_000_000)
    message = str(err.value)
    assert "\n" not in message and "ranking 1 user(s) over 300,000 items needs about" in message
    assert "score block" in message and "free memory" in message


def test_the_ranking_budget_never_exceeds_the_available_memory():
    assert plan_blocks(100, 1000, 10, 2**30, available=2**40) == BlockPlan(100, 1000)
    shrunk = plan_blocks(100, 1000, 10, 2**30, available=20 * (1000 * 16 + 640))
    assert shrunk == BlockPlan(20, 1000) == plan_blocks(100, 1000, 10, 20 * (1000 * 16 + 640), available=2**40)


# ------------------------------------------------------------------ the plan bounds the real peak
_MEASURE = """
import json, os, resource, sys
import numpy as np, scipy.sparse as sp
from recvae.data.splits import HeldOut
from recvae.models.registry import make_model
name, items = sys.argv[1], int(sys.argv[2])
def rows(users, items, seed):
    rng = np.random.default_rng(seed)
    indices = np.concatenate([rng.choice(items, 10, replace=False) for _ in range(users)])
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, np.arange(0, 10 * users + 1, 10)),
                         shape=(users, items))
params = {"epochs": 1, "progress": False, "device": "cpu", "batch_size": 250}
make_model(name, params).fit(rows(300, 200, 1))  # torch's own first-use allocations, before measuring
train, held = rows(500, items, 2), rows(250, items, 3)
model = make_model(name, params)
plan = sum(model.memory_parts(500, items, train.nnz, 250).values())
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
model.fit(train, HeldOut(fold_in=held, target=held, user_ids=np.arange(250)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"plan": plan, "measured": peak - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss in KiB")
@pytest.mark.parametrize("name", ["mult-vae", "recvae"])
def test_the_plan_is_an_upper_bound_of_the_fit_peak(name):
    out = subprocess.run([sys.executable, "-c", _MEASURE, name, "10000"], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["measured"] <= row["plan"] <= 2.0 * row["measured"], row
