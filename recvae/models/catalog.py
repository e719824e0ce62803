"""The single models by name, built from flat parameters and loaded from their files.

:mod:`recvae.models.registry` adds the blend on top; :class:`recvae.models.Blend`
builds and loads its components through this module, so neither needs the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recvae.models.base import Recommender
from recvae.models.baselines import ALS, BPR, EASE, EDLAE, ItemKNN, Popularity, SparseEASE, load_baseline
from recvae.models.files import ModelFileError, check_model_file, check_vae_payload, read_torch_payload
from recvae.models.mult_vae import MultDAE, MultVAE, TorchVAERecommender
from recvae.models.joint import JointVAE
from recvae.models.rec_vae import RecVAE
from recvae.models.weighted_vae import WeightedGaussianVAE
from recvae.nn.hyperparams import HyperParameterError

__all__ = ["SINGLE_MODELS", "make_single_model", "load_model_file"]

#: name -> class of every model that is not a combination of others.
SINGLE_MODELS: dict[str, type[Recommender]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "als": ALS,
    "bpr": BPR,
    "ease": EASE,
    "edlae": EDLAE,
    "sparse-ease": SparseEASE,
    "mult-dae": MultDAE,
    "mult-vae": MultVAE,
    "recvae": RecVAE,
    "joint-vae": JointVAE,
    "weighted-vae": WeightedGaussianVAE,
}


def make_single_model(name: str, params: dict[str, Any] | None = None,
                      models: dict[str, type[Recommender]] = SINGLE_MODELS) -> Recommender:
    """An unfitted model from its name and flat keyword parameters, every one checked now.

    Raises:
        KeyError: an unknown model name.
        TypeError: an unknown parameter (named).
        HyperParameterError: a parameter's value of the wrong type, range or shape (a ``ValueError``
            and a ``TypeError``), in one line naming it, the value and what is allowed.
    """
    key = str(name).strip().lower()
    if key not in models:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(models)}")
    try:
        return models[key](**dict(params or {}))
    except HyperParameterError:
        raise  # already one line naming the parameter and its value
    except TypeError as err:
        raise TypeError(f"bad parameters for model {name!r}: {err}") from None


def load_model_file(path: str | Path, device: str = "auto") -> Recommender:
    """A single model from the file its ``save`` wrote: a baseline ``.npz`` or a torch VAE file, checked first."""
    path = Path(path)
    if check_model_file(path) == "npz":
        return load_baseline(path)
    payload = read_torch_payload(path)
    cls_name = payload.get("class")
    classes = {c.__name__: c for c in SINGLE_MODELS.values() if issubclass(c, TorchVAERecommender)}
    if cls_name not in classes:
        raise ModelFileError(f"{path}: not a saved recvae model (it names the class {str(cls_name)[:40]!r}); "
                             "give a file written by model.save")
    # Every key, config and weight shape checked here, so that the class's loader meets no surprise.
    check_vae_payload(payload, path, classes[cls_name])
    return classes[cls_name].load(path, device=device)
