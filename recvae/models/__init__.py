"""Models: the shared Recommender interface, the VAEs and their building blocks."""

from recvae.models.annealing import AnnealConfig
from recvae.models.baselines import ALS, BPR, EASE, ItemKNN, Popularity, load_baseline
from recvae.models.base import NotFittedError, Recommendations, Recommender
from recvae.models.likelihoods import LIKELIHOODS, make_likelihood
from recvae.models.mult_vae import MultDAE, MultVAE
from recvae.models.rec_vae import RecVAE, RecVAEConfig, RecVAENet
from recvae.models.vae import VAE, VAEConfig
from recvae.models.hybrid import Blend
from recvae.models.registry import MODELS, VAE_MODELS, is_vae_model, load_model, make_model, model_names

__all__ = [
    "ALS",
    "BPR",
    "EASE",
    "ItemKNN",
    "Popularity",
    "load_baseline",
    "AnnealConfig",
    "NotFittedError",
    "Recommendations",
    "Recommender",
    "LIKELIHOODS",
    "make_likelihood",
    "MultVAE",
    "MultDAE",
    "RecVAE",
    "RecVAEConfig",
    "RecVAENet",
    "VAE",
    "VAEConfig",
    "Blend",
    "MODELS",
    "is_vae_model",
    "VAE_MODELS",
    "load_model",
    "make_model",
    "model_names",
]
