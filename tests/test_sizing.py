"""Defaults from the log's shape (recvae.models.sizing): chosen for a large sparse catalogue, said and kept
in the run, never over a parameter the user gave; and the history's wall time per epoch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recvae.data import SplitSpec
from recvae.models import make_model
from recvae.models import sizing
from recvae.models.sizing import LogShape, apply_sizing, sizing_choices
from recvae.runs import Run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LARGE_SPARSE = LogShape(n_users=60_000, n_items=80_000, n_events=600_000)
MOVIELENS = LogShape(n_users=6_040, n_items=3_706, n_events=1_000_209)


def _chosen(name: str, shape: LogShape, params=None, given=()) -> dict:
    return {c.parameter: c.value for c in sizing_choices(make_model(name, dict(params or {})), shape, given)}


@pytest.mark.parametrize("name", ["mult-vae", "mult-dae", "recvae"])
def test_a_large_sparse_catalogue_samples_the_softmax_and_stops_sooner(name):
    chosen = _chosen(name, LARGE_SPARSE)
    assert chosen == {"sampled_softmax": sizing.SAMPLED_NEGATIVES, "negative_sampler": "popularity",
                      "sparse_item_updates": True, "patience": sizing.SPARSE_LOG_PATIENCE}


@pytest.mark.parametrize("name", ["mult-vae", "recvae", "ease", "als", "popularity", "sparse-ease"])
def test_movielens_shapes_keep_the_papers_defaults(name):
    assert _chosen(name, MOVIELENS) == {}


@pytest.mark.parametrize("name", ["ease", "edlae", "als", "bpr", "popularity", "sparse-ease", "itemknn"])
def test_closed_form_and_factor_models_get_nothing(name):
    assert _chosen(name, LARGE_SPARSE) == {}


def test_what_the_user_gave_is_never_overridden():
    assert "patience" not in _chosen("mult-vae", LARGE_SPARSE, {"patience": 50}, given={"patience"})
    # an item_chunk (or a sampled softmax) of the user's own: the softmax is theirs
    chosen = _chosen("mult-vae", LARGE_SPARSE, {"item_chunk": 8192}, given={"item_chunk"})
    assert not {"sampled_softmax", "negative_sampler", "sparse_item_updates"} & set(chosen)
    chosen = _chosen("mult-vae", LARGE_SPARSE, {"sampled_softmax": 512}, given={"sampled_softmax"})
    assert not {"sampled_softmax", "negative_sampler", "sparse_item_updates"} & set(chosen)


def test_a_likelihood_without_a_sampled_form_keeps_the_full_output():
    chosen = _chosen("mult-vae", LARGE_SPARSE, {"likelihood": "bernoulli"}, given={"likelihood"})
    assert "sampled_softmax" not in chosen and chosen.get("patience") == sizing.SPARSE_LOG_PATIENCE


def test_choices_are_checked_per_group_and_leave_the_model_alone_until_applied():
    model = make_model("mult-vae", {})
    before = model.get_params()
    choices = sizing_choices(model, LARGE_SPARSE)
    assert choices and model.get_params() == before
    lines: list[str] = []
    applied = apply_sizing(model, LARGE_SPARSE, say=lines.append)
    assert model.get_params() == {**before, **applied}
    assert lines[0].startswith("defaults for 60,000 users x 80,000 items, 600,000 events (10.0 per user)")
    assert all("to override" in line for line in lines[1:-1]) and len(lines) == 2 + len(applied)
    assert lines[-1].startswith("note: ") and "--model weighted-vae" in lines[-1]


@pytest.mark.parametrize("name,params,shape,advised", [
    ("mult-vae", {}, LARGE_SPARSE, True),
    ("recvae", {}, LARGE_SPARSE, True),
    ("mult-vae", {"likelihood": "bernoulli"}, LARGE_SPARSE, False),
    ("weighted-vae", {}, LARGE_SPARSE, False),
    ("als", {}, LARGE_SPARSE, False),
    ("mult-vae", {}, MOVIELENS, False),
    ("mult-vae", {}, LogShape(n_users=60_000, n_items=80_000, n_events=6_000_000), False),  # 100 per user
])
def test_a_multinomial_vae_on_a_large_sparse_log_is_pointed_to_the_weighted_vae(name, params, shape, advised):
    lines: list[str] = []
    apply_sizing(make_model(name, params), shape, say=lines.append)
    assert any(line.startswith("note: ") and "weighted-vae" in line for line in lines) == advised


def _sparse_log(n_users: int = 150, n_items: int = 60, per_user: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1)
    rows = [(u, int(i)) for u in range(n_users)
            for i in rng.choice(n_items, size=per_user, replace=False, p=pop / pop.sum())]
    return pd.DataFrame(rows, columns=["customer", "product"])


def test_run_fit_applies_says_and_keeps_the_choices(monkeypatch):
    monkeypatch.setattr(sizing, "SAMPLED_FROM_ITEMS", 40)
    monkeypatch.setattr(sizing, "SAMPLED_NEGATIVES", 16)
    said: list[str] = []
    run = Run.fit(_sparse_log(), "mult-vae", params={"epochs": 2, "progress": False, "latent_dim": 4,
                                                       "hidden_dims": [8], "batch_size": 50},
                  split=SplitSpec(heldout_users=20, seed=1), report=said.append)
    expected = {"sampled_softmax": 16, "negative_sampler": "popularity", "sparse_item_updates": True,
                "patience": sizing.SPARSE_LOG_PATIENCE}
    assert run.config["catalogue_choices"] == expected
    params = run.model.get_params()
    assert {k: params[k] for k in expected} == expected
    assert any(line.startswith("defaults for ") for line in said)
    assert any(line.strip().startswith("sampled_softmax=16:") for line in said)


def test_run_fit_keeps_a_given_parameter_and_a_given_model(monkeypatch):
    monkeypatch.setattr(sizing, "SAMPLED_FROM_ITEMS", 40)
    run = Run.fit(_sparse_log(), "mult-vae", params={"epochs": 1, "progress": False, "latent_dim": 4,
                                                       "hidden_dims": [8], "patience": 50, "sampled_softmax": 8},
                  split=SplitSpec(heldout_users=20, seed=1))
    assert run.model.get_params()["patience"] == 50 and run.model.get_params()["sampled_softmax"] == 8
    assert "patience" not in run.config["catalogue_choices"]
    model = make_model("mult-vae", {"epochs": 1, "progress": False, "latent_dim": 4, "hidden_dims": [8]})
    run = Run.fit(_sparse_log(), model, split=SplitSpec(heldout_users=20, seed=1))
    assert run.config["catalogue_choices"] == {} and run.model.get_params()["sampled_softmax"] is None


def test_the_history_carries_wall_time_to_each_epoch():
    run = Run.fit(_sparse_log(), "mult-vae", params={"epochs": 3, "progress": False, "latent_dim": 4,
                                                       "hidden_dims": [8]},
                  split=SplitSpec(heldout_users=20, seed=1), evaluate=False)
    history = run.model.history_
    steps = history["train_seconds"] + history["eval_seconds"].fillna(0.0)
    np.testing.assert_allclose(history["elapsed_seconds"], steps.cumsum())
    assert history["elapsed_seconds"].is_monotonic_increasing


def test_a_group_the_model_refuses_leaves_the_others():
    # the joint model's linear path alone has no softmax to sample: that group is refused by its own check,
    # the sparse log's patience still applies
    chosen = _chosen("joint-vae", LARGE_SPARSE, {"paths": "linear"}, given={"paths"})
    assert chosen == {"patience": sizing.SPARSE_LOG_PATIENCE}
    assert "sampled_softmax" in _chosen("joint-vae", LARGE_SPARSE)
