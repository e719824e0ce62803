"""RecVAE (Shenbin et al., WSDM 2020) as a recommender: the estimator over :class:`recvae.nn.RecVAENet`
(the network, composite prior and per-user beta) trained by :func:`recvae.training.train_recvae`
(alternating encoder and decoder passes).
"""

from __future__ import annotations

import logging

import torch

from recvae.data.splits import HeldOut
from recvae.models.base import UserEmbeddings
from recvae.models.mult_vae import TorchVAERecommender
from recvae.nn.rec_vae import RecVAEConfig, RecVAENet, composite_prior_log_prob, gaussian_log_density
from recvae.nn.sparse import SparseRows
from recvae.training import EpochCallback, TrainingConfig, TrainingResult, full_precision, train_recvae
from recvae.training.memory_plan import ItemMatrix

logger = logging.getLogger(__name__)

__all__ = ["RecVAEConfig", "RecVAENet", "RecVAE", "composite_prior_log_prob", "gaussian_log_density", "train_recvae"]

_SAVE_FORMAT = "recvae.recvae/1"


class RecVAE(TorchVAERecommender):
    """RecVAE (Shenbin et al. 2020) as a recommender.

    Example::

        model = RecVAE().fit(split)                      # 50 epochs, batch 500, Adam 5e-4
        recs = model.recommend(split.test.fold_in, k=10)
        mu, sigma = model.embed_users(split.test.fold_in)

    Attributes set by ``fit``: ``net_`` (a :class:`RecVAENet`), ``history_``,
    ``training_`` (a :class:`TrainingResult`), ``item_ids_``, ``n_items_``, ``device_``.
    """

    save_format = _SAVE_FORMAT
    file_kind = "RecVAE"

    @staticmethod
    def default_config() -> RecVAEConfig:
        return RecVAEConfig()

    @classmethod
    def _config_from_dict(cls, values: dict) -> RecVAEConfig:
        return RecVAEConfig(**values)

    @staticmethod
    def default_training() -> TrainingConfig:
        """The authors' schedule: 50 epochs, batch 500, Adam lr 5e-4."""
        return TrainingConfig(epochs=50, batch_size=500, lr=5e-4)

    def _build_net(self, n_items: int) -> RecVAENet:
        return RecVAENet(n_items, self.config)

    def _memory_layout(self, config: RecVAEConfig) -> tuple[list[ItemMatrix], int, int]:
        """The encoder's sparse input layer, its frozen copy in the prior, the linear decoder; per user
        the cached prior posterior (mean and log-variance)."""
        return [ItemMatrix("input layer", config.hidden_dim, sparse_grad=True),
                ItemMatrix("prior encoder input layer", config.hidden_dim, trained=False),
                ItemMatrix("decoder", config.latent_dim + 1, sparse_grad=config.sampled_softmax is not None),
                ], config.latent_dim, 2 * config.latent_dim

    def _train(self, matrix, validation: HeldOut | None, on_epoch: EpochCallback | None = None) -> TrainingResult:
        return train_recvae(self.net_, matrix, validation, self.training, self.device_, on_epoch=on_epoch,
                            scorer=self)

    def _decoder_head(self, x: SparseRows, code=None):
        """The posterior mean (or ``code(mu, log_var)``) and the linear decoder (scores are ``decoder(mu)``)."""
        mu, log_var = self.net_.encode(x)
        if code is not None:
            mu = code(mu, log_var)
        return mu, self.net_.decoder.weight, self.net_.decoder.bias, None

    @torch.no_grad()
    def embed_users(self, user_rows) -> UserEmbeddings:
        """Posterior mean and standard deviation of z for each user row (``mu, sigma = ...`` unpacks)."""
        x = self._rows(user_rows)
        with full_precision(self.device_):
            mu, log_var = self.net_.encode(x, dropout=False)
        return UserEmbeddings(mu.cpu().numpy(), torch.exp(0.5 * log_var).cpu().numpy())
