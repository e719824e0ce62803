"""RecVAE and an item-item linear model fit as one network: :class:`JointVAE`.

The linear path starts at EDLAE's closed form on the training rows (dense W) or at sparse
EASE's weights (CSR W of each item's top co-occurring neighbours, at any catalogue size),
and the VAE is trained with it in the loss (see :mod:`recvae.nn.joint`), so a user fits
one model, once, and gets one score per item -- unlike :class:`recvae.models.Blend`, which
mixes the scores of models trained apart.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp
import torch

from recvae.data.splits import HeldOut
from recvae.models.ease import ease_memory_bytes, edlae_weights
from recvae.models.files import MODEL_FIX, ModelFileError
from recvae.models.rec_vae import RecVAE
from recvae.models.sparse_ease import sparse_ease_weights
from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.sparse import SparseRows
from recvae.nn.sparse_item_item import check_item_item_csr
from recvae.nn.vae import l2_normalised_values
from recvae.runtime import memory
from recvae.training import EpochCallback, TrainingConfig, TrainingResult, train_recvae

logger = logging.getLogger(__name__)

__all__ = ["JointVAE", "JointVAEConfig", "JointVAENet", "joint_memory_bytes", "dense_linear_parts", "linear_path_parts", "linear_path_spread", "REFERENCE_SPREAD",
           "choose_linear_form"]

_SAVE_FORMAT = "recvae.joint-vae/1"

#: the fix named when the dense item-item path does not fit.
DENSE_FIX = "use linear_form='sparse' (--param linear_form=sparse) or linear_form='auto'"

#: bytes a sparse form's block scorer takes per term (entry and position int64, value, cell index).
_SPARSE_TERM_BYTES = 40.0


def joint_memory_bytes(n_items: int, train_linear: bool) -> int:
    """Memory of the dense item-item matrix W, and when trained its gradient and Adam's two moments (float32)."""
    return 4 * n_items * n_items * (4 if train_linear else 1)


def dense_linear_parts(n_items: int, config: JointVAEConfig) -> dict[str, int]:
    """The dense form's peak, by part: W, its gradient and Adam's moments when trained, EDLAE's closed-form start."""
    parts = {"W": 4 * n_items * n_items}
    if config.train_linear:
        parts["its gradient and Adam's two moments"] = 12 * n_items * n_items
    if config.linear_init == "edlae":
        parts["EDLAE's closed-form start"] = ease_memory_bytes(n_items)
    return parts


def _planned_form(n_items: int, config: JointVAEConfig, have: int) -> tuple[str, dict[str, int]]:
    """The form of W and the dense form's parts: the one rule :func:`choose_linear_form` and
    :func:`linear_path_parts` share. A forced dense form that does not fit is refused here."""
    parts = dense_linear_parts(n_items, config)
    if config.linear_form == "dense":
        memory.require_memory(f"the joint model's dense item-item path on {n_items:,} items", parts, DENSE_FIX,
                              available=have)
        return "dense", parts
    need = sum(parts.values())
    fits = need <= memory.WARN_FRACTION * have
    return ("dense" if fits and config.linear_form == "auto" else "sparse"), parts


def choose_linear_form(n_items: int, config: JointVAEConfig, available: int | None = None) -> str:
    """``"dense"`` or ``"sparse"``: the form of W a fit on ``n_items`` items uses.

    ``linear_form="auto"`` picks dense when :func:`dense_linear_parts` takes at most half
    of the available memory, else sparse, and logs the choice at INFO; ``"dense"`` is
    refused (:class:`recvae.runtime.memory.InsufficientMemoryError`, before any allocation)
    when it does not fit. ``paths="vae"`` has no linear path: an empty sparse one.
    """
    if config.paths == "vae" or config.linear_form == "sparse":
        return "sparse"
    have = memory.available_memory_bytes() if available is None else int(available)
    form, parts = _planned_form(n_items, config, have)
    if config.linear_form == "auto":
        logger.info("joint model: %s item-item path for %s items (the dense form needs %s, %s available%s)",
                    form, f"{n_items:,}", memory.describe_bytes(sum(parts.values())), memory.describe_bytes(have),
                    "" if form == "dense" else f"; sparse keeps {config.linear_neighbours} neighbours per item")
    return form


def linear_path_parts(n_items: int, config: JointVAEConfig, available: int | None = None) -> dict[str, int]:
    """The item-item path's share of a fit's peak in the form a fit would pick (no log line): the dense
    form's :func:`dense_linear_parts`, or the sparse W (a float32 value, an int64 column and an int64
    lookup key per stored weight, plus gradient and Adam moments when trained). A forced dense form
    that does not fit is refused here, with its own fix."""
    if config.paths == "vae":
        return {}
    have = memory.available_memory_bytes() if available is None else int(available)
    form, dense = _planned_form(n_items, config, have)
    if form == "dense":
        return dense
    stored = n_items * min(config.linear_neighbours, max(0, n_items - 1))
    return {"sparse item-item W": (20 + (12 if config.train_linear else 0)) * stored}


#: The median over training users of the top-1 minus the top-100 score of ``x W`` on ml-1m-implicit
#: (EDLAE's start, λ = 500, p = 0.25, 64 neighbours: 0.434; ~165 events per user), where the
#: default ``linear_scale`` was chosen. ``calibrate_scale`` rescales s to other densities by it.
REFERENCE_SPREAD = 0.43


def linear_path_spread(matrix: sp.csr_matrix, weights, n_rows: int = 2000, top: int = 100, seed: int = 0) -> float:
    """The median over (up to ``n_rows`` sampled) training users of the top-1 minus the top-``top``
    score of ``x W``: how far apart the linear path ranks a user's candidates. 0 without scores.

    ``weights``: W as a dense array or a scipy sparse matrix. Blocks of 256 users at a time
    (256 x items scores), never users x items.
    """
    n_users, n_items = matrix.shape
    picked = np.sort(np.random.default_rng(seed).choice(n_users, size=min(n_users, n_rows), replace=False))
    rows, k = matrix[picked], min(top, n_items)
    spreads = []
    for start in range(0, rows.shape[0], 256):
        block = rows[start:start + 256] @ weights
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        best = np.partition(block, n_items - k, axis=1)[:, n_items - k:]
        spreads.append(best.max(axis=1) - best.min(axis=1))
    spread = np.concatenate(spreads) if spreads else np.zeros(0)
    spread = spread[spread > 0]
    return float(np.median(spread)) if len(spread) else 0.0


class JointVAE(RecVAE):
    """RecVAE with an item-item linear path in its decoder, trained jointly (one fit).

    logits_u = D z_u + b + s · x_u W with diag(W) = 0; W starts at EDLAE's closed form
    (``linear_l2``, ``linear_dropout``) and is trained with the decoder when
    ``train_linear`` (a sparse W: its stored values only); the scale s always learns.
    Everything else -- encoder, composite prior, per-user beta, alternating encoder and
    decoder passes -- is RecVAE's
    (Shenbin et al. 2020), with its defaults.

    Example::

        model = JointVAE(epochs=60).fit(split)
        recs = model.recommend(split.test.fold_in, k=10)
        mu, sigma = model.embed_users(split.test.fold_in)

    ``paths="vae"`` gives RecVAE and ``paths="linear"`` the linear model alone (the
    same code path, for comparisons).

    Any catalogue size: ``linear_form="auto"`` (the default) holds W dense (items x items)
    when that, its gradient and optimizer state when trained, and EDLAE's closed-form
    start take at most half the available memory, else sparse (CSR: each item's
    ``linear_neighbours`` most co-occurring items, started at sparse EASE's weights with
    the same ``linear_l2`` and ``linear_dropout``), and logs which and why. A forced
    ``linear_form="dense"`` that does not fit is refused before any allocation. With
    ``linear_neighbours >= items - 1`` the two forms are the same model. For large
    catalogues set ``item_chunk`` or ``sampled_softmax`` too (the training NLL then
    never holds batch x items logits).

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

    def memory_parts(self, n_users: int, n_items: int, nnz: int, n_validation: int = 0,
                     **changes) -> dict[str, float]:
        """RecVAE's plan (see :meth:`TorchVAERecommender.memory_parts`) plus the item-item path's
        (:func:`linear_path_parts`), so a fit refuses before the net is built."""
        parts = super().memory_parts(n_users, n_items, nnz, n_validation, **changes)
        return {**parts, **linear_path_parts(n_items, self.config)}

    def _build_net(self, n_items: int) -> JointVAENet:
        """The network, its item-item path in the form :func:`choose_linear_form` picks (or refuses)."""
        return JointVAENet(n_items, self.config, choose_linear_form(n_items, self.config))

    def _net_for_payload(self, payload: dict, path) -> JointVAENet:
        """The network a saved payload's weights fit: dense or sparse as saved (its CSR arrays checked)."""
        n_items, state = payload["n_items"], payload["state_dict"]
        if "decoder.item_item.values" not in state:
            return JointVAENet(n_items, self.config, "dense")
        values, indptr, indices = (state.get(f"decoder.item_item.{k}") for k in ("values", "indptr", "indices"))
        if not all(isinstance(t, torch.Tensor) and t.ndim == 1 for t in (values, indptr, indices)):
            raise ModelFileError(f"{path}: its sparse item-item path is not three 1-D arrays; {MODEL_FIX}")
        problem = check_item_item_csr(n_items, indptr.numpy(), indices.numpy(), len(values))
        if problem:
            raise ModelFileError(f"{path}: {problem}; {MODEL_FIX}")
        net = JointVAENet(n_items, self.config, "sparse")
        net.decoder.item_item.resize(len(values))
        return net

    def _decoder_head(self, x: SparseRows, code=None):
        """The latent path (``D mu + b``, or ``D code(mu, log_var) + b``) and the item-item path's block ``s · x W[:, block]``.

        The linear block takes the rows of ``W[:, start:stop]`` picked by each user's items
        (dense W: gathered, as :class:`recvae.nn.joint.ItemItemLinear` over all columns;
        sparse W: the stored weights in those columns only), so it costs nnz x block at most,
        never items x block.
        """
        net = self.net_
        decoder = net.decoder
        mu, log_var = net._encode(x, l2_normalised_values(x), None, False)
        if code is not None and decoder.paths != "linear":
            mu = code(mu, log_var)  # the latent path decodes a posterior sample; the item-item path is x W
        linear = None
        if decoder.paths != "vae":
            item_item, scale = decoder.item_item, decoder.scale

            @torch.no_grad()
            def linear(start: int, stop: int) -> torch.Tensor:
                return scale * item_item.block(x, None, start, stop)

        if decoder.paths == "linear":
            return None, None, None, linear
        return mu, decoder.latent.weight, decoder.latent.bias, linear

    def block_score_bytes(self, user_rows) -> float:
        """The item-item path gathers ``nnz x block`` float32 weights per block (dense W), or
        one term per stored weight of the users' rows inside the block (sparse W, on average)."""
        if self.config.paths == "vae":
            return 0.0
        if self.net_ is not None and self.net_.decoder.form == "sparse":
            terms = self.net_.decoder.item_item.term_count(user_rows)
            return _SPARSE_TERM_BYTES * terms / max(1, user_rows.shape[0] * user_rows.shape[1])
        return 4.0 * user_rows.nnz / max(1, user_rows.shape[0])

    def _train(self, matrix: sp.csr_matrix, validation: HeldOut | None,
               on_epoch: EpochCallback | None = None) -> TrainingResult:
        config = self.config
        weights = None
        if config.paths != "vae" and self.net_.decoder.form == "sparse":
            weights = self._sparse_start(matrix)
        elif config.paths != "vae":
            if config.linear_init == "edlae":
                weights = edlae_weights(matrix, config.linear_l2, config.linear_dropout)
                self.net_.decoder.item_item.set_weight(torch.from_numpy(weights))
        if weights is not None and config.calibrate_scale and config.linear_init == "edlae":
            self._calibrate_scale(matrix, weights)
        return train_recvae(self.net_, matrix, validation, self.training, self.device_, on_epoch=on_epoch,
                            scorer=self)

    def _calibrate_scale(self, matrix: sp.csr_matrix, weights) -> None:
        """Start s at ``linear_scale · REFERENCE_SPREAD / spread`` (see ``calibrate_scale``): the linear
        path's logits then span as much on this log as the default's do on ml-1m-implicit."""
        spread = linear_path_spread(matrix, weights)
        if spread <= 0:
            return
        ratio = float(np.clip(REFERENCE_SPREAD / spread, 1e-2, 1e4))
        with torch.no_grad():
            self.net_.decoder.log_scale.fill_(math.log(ratio))
        logger.info("joint model: linear path's spread %.4g (reference %.2f): s starts at %.4g (linear_scale %g x %.3g)",
                    spread, REFERENCE_SPREAD, self.config.linear_scale * ratio, self.config.linear_scale, ratio)

    def _sparse_start(self, matrix: sp.csr_matrix):
        """W from sparse EASE with EDLAE's dropout penalty (``linear_init="zeros"``: its sparsity, values 0)."""
        config = self.config
        weights = sparse_ease_weights(matrix, config.linear_l2, config.linear_neighbours,
                                      dropout=config.linear_dropout)
        if config.linear_init == "zeros":
            weights.data[:] = np.float32(1.0)  # the positions; zeroed below (set_weight drops stored zeros)
        item_item = self.net_.decoder.item_item
        item_item.set_weight(weights)
        if config.linear_init == "zeros":
            with torch.no_grad():
                item_item.values.zero_()
        logger.info("joint model: sparse item-item path of %s weights (%.1f per item)",
                    f"{item_item.nnz:,}", item_item.nnz / max(1, matrix.shape[1]))
        return weights
