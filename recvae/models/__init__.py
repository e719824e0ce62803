"""Models: the shared Recommender interface, the VAEs, the baselines and their building blocks.

Names are imported on first use (PEP 562): ``import recvae.models`` stays cheap, and the
network building blocks (``VAE``, ``VAEConfig``, ``AnnealConfig`` ...) that live in
:mod:`recvae.nn` stay importable from here as they always were.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "AnnealConfig": "recvae.nn.annealing",
    "ALS": "baselines",
    "BPR": "baselines",
    "EASE": "baselines",
    "EDLAE": "baselines",
    "ItemKNN": "baselines",
    "SparseEASE": "baselines",
    "Popularity": "baselines",
    "load_baseline": "baselines",
    "NotFittedError": "base",
    "HyperParameterError": "recvae.nn.hyperparams",
    "Recommendations": "base",
    "Recommender": "base",
    "UserEmbeddings": "base",
    "LIKELIHOODS": "recvae.nn.likelihoods",
    "make_likelihood": "recvae.nn.likelihoods",
    "MultVAE": "mult_vae",
    "MultDAE": "mult_vae",
    "WeightedGaussianVAE": "weighted_vae",
    "RecVAE": "rec_vae",
    "RecVAEConfig": "rec_vae",
    "RecVAENet": "rec_vae",
    "JointVAE": "joint",
    "JointVAEConfig": "joint",
    "VAE": "recvae.nn.vae",
    "VAEConfig": "recvae.nn.vae",
    "Blend": "hybrid",
    "TorchVAERecommender": "mult_vae",
    "MODELS": "registry",
    "VAE_MODELS": "registry",
    "is_vae_model": "registry",
    "load_model": "registry",
    "make_model": "registry",
    "model_names": "registry",
    "training_shortcuts": "options",
    "torch_model_names": "options",
    "parse_param_pairs": "params",
    "parse_param_value": "params",
}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'recvae.models' has no attribute {name!r}")
    home = _HOMES[name]
    value = getattr(importlib.import_module(home if "." in home else f"recvae.models.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from recvae.nn.annealing import AnnealConfig
    from recvae.nn.hyperparams import HyperParameterError
    from recvae.models.base import NotFittedError, Recommendations, Recommender, UserEmbeddings
    from recvae.models.baselines import ALS, BPR, EASE, EDLAE, ItemKNN, Popularity, SparseEASE, load_baseline
    from recvae.models.hybrid import Blend
    from recvae.nn.likelihoods import LIKELIHOODS, make_likelihood
    from recvae.models.mult_vae import MultDAE, MultVAE
    from recvae.models.weighted_vae import WeightedGaussianVAE
    from recvae.models.rec_vae import RecVAE, RecVAEConfig, RecVAENet
    from recvae.models.joint import JointVAE, JointVAEConfig
    from recvae.models.registry import MODELS, VAE_MODELS, is_vae_model, load_model, make_model, model_names
    from recvae.models.options import torch_model_names, training_shortcuts
    from recvae.models.params import parse_param_pairs, parse_param_value
    from recvae.nn.vae import VAE, VAEConfig
