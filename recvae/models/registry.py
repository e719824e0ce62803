"""Models by name: build one from plain parameters (a config file, the CLI) and load any saved model.

Names are lower-case and stable: they appear in experiment configs and on the
command line. Parameters are flat: for the torch VAEs, keys of the model's
config dataclass (e.g. ``latent_dim``) and of :class:`TrainingConfig` (e.g.
``epochs``, ``lr``, ``anneal = {kind = "linear", cap = 0.2}``) may be mixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recvae.models.base import Recommender
from recvae.models.catalog import SINGLE_MODELS, load_model_file, make_single_model
from recvae.models.files import ModelFileError
from recvae.models.hybrid import BLEND_EXAMPLE, Blend, is_blend_dir
from recvae.models.mult_vae import MultDAE, MultVAE
from recvae.models.rec_vae import RecVAE

__all__ = ["MODELS", "VAE_MODELS", "is_vae_model", "make_model", "load_model", "model_names"]

#: name -> model class. Every class implements :class:`recvae.models.Recommender`.
MODELS: dict[str, type[Recommender]] = {**SINGLE_MODELS, "blend": Blend}

#: the names whose models are variational autoencoders (Mult-DAE is not: it has no posterior).
VAE_MODELS: frozenset[str] = frozenset({"mult-vae", "recvae", "joint-vae", "weighted-vae"})


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

    Every model takes its hyper-parameters as flat keywords (for the torch VAEs,
    keys of the model config and of :class:`TrainingConfig` mixed). A blend's
    components may be models or ``{"name": ..., "params": ...}`` dicts. Unknown
    keys raise ``TypeError`` naming them.
    """
    if str(name).strip().lower() == "blend" and "components" not in (params or {}):
        raise TypeError(f"model 'blend' needs its components, e.g. {BLEND_EXAMPLE} (--param on the command line; "
                        "'recvae models blend' lists its parameters)")
    return make_single_model(name, params, MODELS)


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
    return load_model_file(path, device=device)
