"""Torch modules only: the sparse first layer and device CSR batches, the Mult-VAE/DAE network,
RecVAE's network and composite prior, the likelihoods (and their chunked / sampled training forms
for large catalogues), the closed-form KL and the beta schedules."""

from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.annealing import AnnealConfig, BetaSchedule, make_schedule
from recvae.nn.chunked import chunked_output_nll
from recvae.nn.item_output import ItemOutput, set_item_counts
from recvae.nn.likelihoods import LIKELIHOODS, make_likelihood
from recvae.nn.rec_vae import RecVAEConfig, RecVAENet, composite_prior_log_prob, gaussian_log_density
from recvae.nn.sampled import NegativeSampler, sampled_softmax_nll
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.nn.vae import VAE, SparseLinear, VAEConfig, gaussian_kl, posterior_mean_scores

__all__ = [
    "AnnealConfig",
    "BetaSchedule",
    "make_schedule",
    "chunked_output_nll",
    "ItemOutput",
    "set_item_counts",
    "NegativeSampler",
    "sampled_softmax_nll",
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
