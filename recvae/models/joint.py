"""RecVAE and an item-item linear model fit as one network: :class:`JointVAE`.

The linear path starts at EDLAE's closed form on the training rows and the VAE is
trained with it in the loss (see :mod:`recvae.nn.joint`), so a user fits one model,
once, and gets one score per item -- unlike :class:`recvae.models.Blend`, which
mixes the scores of models trained apart.
"""

from __future__ import annotations

import logging

import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recvae.data.splits import HeldOut
from recvae.models.ease import available_memory_bytes, edlae_weights
from recvae.models.rec_vae import RecVAE
from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.sparse import SparseRows
from recvae.nn.vae import l2_normalised_values
from recvae.training import EpochCallback, TrainingConfig, TrainingResult, train_recvae

logger = logging.getLogger(__name__)

__all__ = ["JointVAE", "JointVAEConfig", "JointVAENet", "joint_memory_bytes"]

_SAVE_FORMAT = "recvae.joint-vae/1"


def joint_memory_bytes(n_items: int, train_linear: bool) -> int:
    """Extra memory of the item-item path: W, and when trained its gradient and Adam's two moments
    (float32), next to the closed-form start's own need (checked by :func:`edlae_weights`)."""
    return 4 * n_items * n_items * (4 if train_linear else 1)


class JointVAE(RecVAE):
    """RecVAE with an item-item linear path in its decoder, trained jointly (one fit).

    logits_u = D z_u + b + s · x_u W with diag(W) = 0; W starts at EDLAE's closed form
    (``linear_l2``, ``linear_dropout``) and is trained with the decoder when
    ``train_linear``; the scale s always learns. Everything else -- encoder, composite
    prior, per-user beta, alternating encoder and decoder passes -- is RecVAE's
    (Shenbin et al. 2020), with its defaults.

    Example::

        model = JointVAE(epochs=60).fit(split)
        recs = model.recommend(split.test.fold_in, k=10)
        mu, sigma = model.embed_users(split.test.fold_in)

    ``paths="vae"`` gives RecVAE and ``paths="linear"`` the linear model alone (the
    same code path, for comparisons). W is items x items: the fit refuses, before any
    work, when it (with its gradient and optimizer state when trained) does not fit
    in memory.

    Attributes set by ``fit``: ``net_`` (a :class:`JointVAENet`), ``history_``,
    ``training_``, ``item_ids_``, ``n_items_``, ``device_``.
    """

    save_format = _SAVE_FORMAT
    file_kind = "joint VAE"

    @staticmethod
    def default_config() -> JointVAEConfig:
        return JointVAEConfig()

    @classmethod
    def _config_from_dict(cls, values: dict) -> JointVAEConfig:
        return JointVAEConfig(**values)

    @staticmethod
    def default_training() -> TrainingConfig:
        """RecVAE's schedule: batch 500, Adam lr 5e-4; 50 epochs, none stopped by patience before the 30th.

        The joint score starts at the linear path's and dips for the first epochs while the
        VAE half learns: on ml-1m-implicit one seed's best epoch was the first and patience 10
        stopped it at epoch 11 (test NDCG@100 0.4920 against 0.5088 and 0.5082 for the two
        seeds that ran on); ``min_epochs`` keeps patience from acting inside that dip.
        """
        return TrainingConfig(epochs=50, batch_size=500, lr=5e-4, min_epochs=30)

    def _build_net(self, n_items: int) -> JointVAENet:
        return JointVAENet(n_items, self.config)

    def _decoder_head(self, x: SparseRows):
        """The latent path (``D mu + b``) and the item-item path's block ``s · x W[:, block]``.

        The linear block sums the rows of ``W[:, start:stop]`` picked by each user's items
        (``F.embedding_bag``, as :class:`recvae.nn.joint.ItemItemLinear` over all columns), so
        it costs nnz x block, never items x block.
        """
        net = self.net_
        decoder = net.decoder
        mu, _ = net._encode(x, l2_normalised_values(x), None, False)
        linear = None
        if decoder.paths != "vae":
            weight, scale = decoder.item_item.weight, decoder.scale
            columns, offsets = x.col_indices, x.crow_indices[:-1]
            entries = torch.arange(len(columns), device=columns.device)

            @torch.no_grad()
            def linear(start: int, stop: int) -> torch.Tensor:
                rows = weight[:, start:stop].index_select(0, columns)
                return scale * F.embedding_bag(entries, rows, offsets, mode="sum",
                                               per_sample_weights=x.values.to(weight.dtype))

        if decoder.paths == "linear":
            return None, None, None, linear
        return mu, decoder.latent.weight, decoder.latent.bias, linear

    def block_score_bytes(self, user_rows) -> float:
        """The item-item path gathers ``nnz x block`` float32 weights per block."""
        if self.config.paths == "vae":
            return 0.0
        return 4.0 * user_rows.nnz / max(1, user_rows.shape[0])

    def _train(self, matrix: sp.csr_matrix, validation: HeldOut | None,
               on_epoch: EpochCallback | None = None) -> TrainingResult:
        config = self.config
        if config.paths != "vae":
            n_items = matrix.shape[1]
            need, have = joint_memory_bytes(n_items, config.train_linear), available_memory_bytes()
            if need > have:
                raise MemoryError(
                    f"the joint model's item-item matrix for {n_items:,} items needs {need / 2**30:.1f} GiB "
                    f"({'W, its gradient and optimizer state' if config.train_linear else 'W'}) but "
                    f"{have / 2**30:.1f} GiB is available; use RecVAE (paths='vae') or filter rare items")
            if config.linear_init == "edlae":
                weights = edlae_weights(matrix, config.linear_l2, config.linear_dropout)
                self.net_.decoder.item_item.set_weight(torch.from_numpy(weights))
        return train_recvae(self.net_, matrix, validation, self.training, self.device_, on_epoch=on_epoch,
                            scorer=self)
