"""Models by name: build one from plain parameters (a config file, the CLI) and load any saved model.

Names are lower-case and stable: they appear in experiment configs and on the
command line. Parameters are flat: for the torch VAEs, keys of the model's
config dataclass (e.g. ``latent_dim``) and of :class:`TrainingConfig` (e.g.
``epochs``, ``lr``, ``anneal = {kind = "linear", cap = 0.2}``) may be mixed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from recvae.models.annealing import AnnealConfig
from recvae.models.base import Recommender
from recvae.models.baselines import ALS, BPR, EASE, ItemKNN, Popularity, load_baseline
from recvae.models.files import ModelFileError, check_model_file, check_vae_payload, read_torch_payload
from recvae.models.hybrid import Blend, is_blend_dir
from recvae.models.mult_vae import MultDAE, MultVAE, TorchVAERecommender
from recvae.models.rec_vae import RecVAE

__all__ = ["MODELS", "VAE_MODELS", "is_vae_model", "make_model", "load_model", "model_names"]

#: name -> model class. Every class implements :class:`recvae.models.Recommender`.
MODELS: dict[str, type[Recommender]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "als": ALS,
    "bpr": BPR,
    "ease": EASE,
    "mult-dae": MultDAE,
    "mult-vae": MultVAE,
    "recvae": RecVAE,
    "blend": Blend,
}

#: the names whose models are variational autoencoders (Mult-DAE is not: it has no posterior).
VAE_MODELS: frozenset[str] = frozenset({"mult-vae", "recvae"})


def is_vae_model(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether a registry entry is VAE-based: a VAE, or a blend with a VAE component."""
    key = str(name).strip().lower()
    if key in VAE_MODELS:
        return True
    if key == "blend":
        components = (params or {}).get("components") or []
        return any(isinstance(c, dict) and is_vae_model(c.get("name", ""), c.get("params")) or
                   isinstance(c, (MultVAE, RecVAE)) and not isinstance(c, MultDAE) for c in components)
    return False


def model_names() -> list[str]:
    """The registered model names, in registry order."""
    return list(MODELS)


def _lookup(name: str) -> type[Recommender]:
    key = str(name).strip().lower()
    if key not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[key]


def make_model(name: str, params: dict[str, Any] | None = None) -> Recommender:
    """An unfitted model from its registry name and flat parameters.

    For the torch VAEs, each key goes to the model config when it is one of its
    fields, else to the training config (starting from the model's own defaults,
    e.g. Mult-DAE's weight decay). Unknown keys raise ``TypeError`` naming them.
    """
    cls = _lookup(name)
    params = dict(params or {})
    if not issubclass(cls, TorchVAERecommender):
        try:
            return cls(**params)
        except TypeError as err:
            raise TypeError(f"bad parameters for model {name!r}: {err}") from None
    config = cls.default_config()
    training = cls.default_training()
    config_fields = {f.name for f in dataclasses.fields(config)}
    training_fields = {f.name for f in dataclasses.fields(training)}
    config_values = {k: v for k, v in params.items() if k in config_fields}
    training_values = {k: v for k, v in params.items() if k in training_fields and k not in config_fields}
    unknown = sorted(set(params) - set(config_values) - set(training_values))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {unknown} for model {name!r}; model parameters: {sorted(config_fields)}; "
            f"training parameters: {sorted(training_fields)}"
        )
    for key in ("hidden_dims",):
        if key in config_values and isinstance(config_values[key], list):
            config_values[key] = tuple(config_values[key])
    if isinstance(training_values.get("anneal"), dict):
        training_values["anneal"] = AnnealConfig(**training_values["anneal"])
    return cls(dataclasses.replace(config, **config_values), dataclasses.replace(training, **training_values))


def load_model(path: str | Path, device: str = "auto") -> Recommender:
    """Load any model written by ``save``: a baseline ``.npz``, a torch VAE file or a Blend directory.

    The file is checked before it is read (see :mod:`recvae.models.files`): a
    damaged, truncated, foreign or pickle-bearing file raises
    :class:`recvae.models.files.ModelFileError` with a one-line message (a
    missing one :class:`recvae.models.files.ModelFileNotFoundError`, also a
    ``FileNotFoundError``).
    """
    path = Path(path)
    if path.is_dir():
        if is_blend_dir(path):
            return Blend.load(path, device=device)
        raise ModelFileError(f"{path}: a directory but not a saved Blend (no blend.json); give the model file inside it")
    if check_model_file(path) == "npz":
        return load_baseline(path)
    payload = read_torch_payload(path)
    cls_name = payload.get("class")
    classes: dict[str, Callable] = {c.__name__: c for c in MODELS.values() if issubclass(c, TorchVAERecommender)}
    if cls_name not in classes:
        raise ModelFileError(f"{path}: not a saved recvae model (it names the class {str(cls_name)[:40]!r}); "
                             "give a file written by model.save")
    # Every key, config and weight shape checked here, so that the class's loader,
    # which trusts its file, meets no surprise.
    check_vae_payload(payload, path, classes[cls_name])
    return classes[cls_name].load(path, device=device)
