"""scikit-learn conventions for real: every registered model clones, lists its parameters (deep or not),
rebuilds from them, and shows them in its signature."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

sklearn_base = pytest.importorskip("sklearn.base")

from recvae.models import EASE, Blend, NotFittedError, Popularity  # noqa: E402
from recvae.models.describe import model_parameters  # noqa: E402
from recvae.models.mult_vae import TorchVAERecommender  # noqa: E402
from recvae.models.registry import MODELS, make_model  # noqa: E402

BLEND = {"components": [{"name": "ease", "params": {"l2": 30.0}}, {"name": "popularity"}], "weights": [0.7, 0.3]}


def _model(name):
    return make_model(name, BLEND if name == "blend" else {})


@pytest.mark.parametrize("name", list(MODELS))
def test_clone_round_trips_every_model(name):
    model = _model(name)
    copy = sklearn_base.clone(model)
    assert type(copy) is type(model) and copy is not model
    assert copy.get_params(deep=True) == model.get_params(deep=False) == model.get_params()
    assert repr(copy) == repr(model)
    rebuilt = type(model)(**model.get_params())  # the parameters rebuild the model
    assert rebuilt.get_params() == model.get_params()


@pytest.mark.parametrize("name", [n for n, c in MODELS.items() if issubclass(c, TorchVAERecommender)])
def test_a_torch_models_signature_names_every_hyper_parameter(name):
    cls = MODELS[name]
    signature = inspect.signature(cls)
    listed = set(model_parameters(name).parameter)
    assert listed <= set(signature.parameters)
    defaults = cls().get_params()
    for key in listed - {"anneal"}:
        default = signature.parameters[key].default
        assert (list(default) if isinstance(default, tuple) else default) == \
            (list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]), key


def test_a_clone_is_unfitted_and_changing_it_leaves_the_original_alone():
    rng = np.random.default_rng(0)
    from scipy import sparse

    x = sparse.csr_matrix((rng.random((40, 12)) < 0.3).astype(np.float32))
    model = EASE(l2=5.0).fit(x)
    copy = sklearn_base.clone(model)
    assert model.weights_ is not None and copy.weights_ is None
    with pytest.raises(NotFittedError):
        copy.recommend(x[:2], k=3)
    copy.set_params(l2=50.0)
    assert model.get_params()["l2"] == 5.0
    blend = Blend([EASE(l2=5.0).fit(x), Popularity().fit(x)], weights=[0.5, 0.5])
    cloned = sklearn_base.clone(blend)
    assert all(c is not o for c, o in zip(cloned.components, blend.components))
    assert cloned.components[0].get_params() == {"l2": 5.0}
    assert blend.components[0].weights_ is not None and cloned.components[0].weights_ is None  # unfitted clones
