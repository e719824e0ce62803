"""Models by name: building from flat parameters and loading any saved file."""

import numpy as np
import pytest

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models import MODELS, EASE, MultDAE, MultVAE, load_model, make_model


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=300, n_items=100, seed=0))
    return strong_generalization(data, 30)


def test_flat_parameters_go_to_model_and_training_configs():
    model = make_model("mult-vae", {"latent_dim": 16, "epochs": 3, "anneal": {"kind": "constant", "cap": 0.1},
                                    "hidden_dims": [32]})
    assert isinstance(model, MultVAE)
    assert model.config.latent_dim == 16 and model.config.hidden_dims == (32,)
    assert model.training.epochs == 3 and model.training.anneal.kind == "constant"


def test_model_defaults_are_kept():
    dae = make_model("Mult-DAE", {"epochs": 2})
    assert isinstance(dae, MultDAE)
    assert dae.training.weight_decay == MultDAE.default_training().weight_decay


def test_unknown_names_and_parameters_are_refused():
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        make_model("nope")
    with pytest.raises(TypeError, match="bogus"):
        make_model("mult-vae", {"bogus": 1})
    with pytest.raises(TypeError, match="'ease'"):
        make_model("ease", {"bogus": 1})


@pytest.mark.parametrize("name,params", [("ease", {"l2": 50.0}), ("popularity", {}),
                                         ("mult-vae", {"epochs": 2, "progress": False}),
                                         ("recvae", {"epochs": 1, "progress": False})])
def test_load_model_reads_every_format(tmp_path, split, name, params):
    model = make_model(name, params).fit(split)
    path = model.save(tmp_path / "model")
    loaded = load_model(path, device="cpu")
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.score(split.test.fold_in), model.score(split.test.fold_in))


def test_load_model_refuses_other_files(tmp_path):
    other = tmp_path / "x.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError):
        load_model(other)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")


def test_every_registered_class_is_a_recommender():
    from recvae.models import Recommender
    assert all(issubclass(c, Recommender) for c in MODELS.values())
    assert MODELS["ease"] is EASE


def test_seeded_models_take_a_seed_and_rebuild_with_another():
    """Recommender.seeded: the experiment runner refits these with further seeds, rebuilding each as
    type(model)(**{**model.get_params(), "seed": seed + s}); the others are fit once."""
    seeded = {name for name, cls in MODELS.items() if cls.seeded}
    assert {"mult-vae", "mult-dae", "recvae", "als", "bpr"} <= seeded
    assert not seeded & {"popularity", "itemknn", "ease", "blend"}  # a blend is seeded through its components
    for name in seeded:
        params = make_model(name).get_params()
        again = type(make_model(name))(**{**params, "seed": params["seed"] + 1})
        assert again.get_params() == {**params, "seed": params["seed"] + 1}, name
