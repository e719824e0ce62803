"""Torch modules only: the sparse first layer and device CSR batches, the Mult-VAE/DAE network,
RecVAE's network and composite prior, the likelihoods, the closed-form KL and the beta schedules."""

from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.annealing import AnnealConfig, BetaSchedule, make_schedule
from recvae.nn.likelihoods import LIKELIHOODS, make_likelihood
from recvae.nn.rec_vae import RecVAEConfig, RecVAENet, composite_prior_log_prob, gaussian_log_density
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.nn.vae import VAE, SparseLinear, VAEConfig, gaussian_kl, posterior_mean_scores

__all__ = [
    "AnnealConfig",
    "BetaSchedule",
    "make_schedule",
    "JointVAEConfig",
    "JointVAENet",
    "LIKELIHOODS",
    "make_likelihood",
    "RecVAEConfig",
    "RecVAENet",
    "composite_prior_log_prob",
    "gaussian_log_density",
    "DeviceCSR",
    "SparseRows",
    "VAE",
    "VAEConfig",
    "SparseLinear",
    "gaussian_kl",
    "posterior_mean_scores",
]
