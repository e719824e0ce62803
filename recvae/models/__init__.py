"""Models: the shared Recommender interface, the VAEs, the baselines and their building blocks.

Names are imported on first use (PEP 562), so that ``recvae.training`` can import
``recvae.models.annealing`` without pulling in the models that import the
trainer in turn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "AnnealConfig": "annealing",
    "ALS": "baselines",
    "BPR": "baselines",
    "EASE": "baselines",
    "ItemKNN": "baselines",
    "Popularity": "baselines",
    "load_baseline": "baselines",
    "NotFittedError": "base",
    "Recommendations": "base",
    "Recommender": "base",
    "UserEmbeddings": "base",
    "LIKELIHOODS": "likelihoods",
    "make_likelihood": "likelihoods",
    "MultVAE": "mult_vae",
    "MultDAE": "mult_vae",
    "RecVAE": "rec_vae",
    "RecVAEConfig": "rec_vae",
    "RecVAENet": "rec_vae",
    "VAE": "vae",
    "VAEConfig": "vae",
    "Blend": "hybrid",
    "MODELS": "registry",
    "VAE_MODELS": "registry",
    "is_vae_model": "registry",
    "load_model": "registry",
    "make_model": "registry",
    "model_names": "registry",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'recvae.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"recvae.models.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from recvae.models.annealing import AnnealConfig
    from recvae.models.base import NotFittedError, Recommendations, Recommender, UserEmbeddings
    from recvae.models.baselines import ALS, BPR, EASE, ItemKNN, Popularity, load_baseline
    from recvae.models.hybrid import Blend
    from recvae.models.likelihoods import LIKELIHOODS, make_likelihood
    from recvae.models.mult_vae import MultDAE, MultVAE
    from recvae.models.rec_vae import RecVAE, RecVAEConfig, RecVAENet
    from recvae.models.registry import MODELS, VAE_MODELS, is_vae_model, load_model, make_model, model_names
    from recvae.models.vae import VAE, VAEConfig
