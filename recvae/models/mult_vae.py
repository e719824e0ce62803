"""Mult-VAE and Mult-DAE as recommenders: fit, score, recommend, embed, save/load."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recvae.data.splits import HeldOut
from recvae.runtime.distributed import rank_device
from recvae.nn.annealing import AnnealConfig, anneal_config
from recvae.models.files import read_vae_payload
from recvae.models.flat_params import flat_signature, plain, split_flat_params
from recvae.models.warm_start import copy_grown_state, take_warm_start
from recvae.models.base import Recommender, UserEmbeddings, as_user_rows, ids_from_array, ids_to_array, training_inputs
from recvae.models.posterior import no_posterior, posterior_noise
from recvae.nn.likelihoods import Likelihood
from recvae.nn.vae import VAE, VAEConfig, decoder_hidden_dims
from recvae.nn.sparse import SparseRows
from recvae.training import (
    EpochCallback,
    TrainingConfig,
    TrainingDivergedError,
    TrainingResult,
    full_precision,
    resolve_device,
    sparse_rows,
    train_vae,
)
from recvae.nn.likelihoods import make_likelihood
from recvae.runtime import memory
from recvae.training.memory_plan import ItemMatrix, check_fit_memory, fit_memory_parts, fit_options
from recvae.training.refine import refine_linear_decoder, refinement_bytes

logger = logging.getLogger(__name__)

__all__ = ["TorchVAERecommender", "MultVAE", "MultDAE", "training_inputs"]

_SAVE_FORMAT = "recvae.vae/1"


class TorchVAERecommender(Recommender):
    """What every torch VAE recommender shares: configs, seeded fit, fold-in scoring.

    Subclasses give ``default_config``, ``default_training``, ``_build_net``,
    ``_train``, ``_config_from_dict``, ``embed_users`` and their file format.
    """

    save_format: str = ""
    file_kind: str = ""
    seeded = True  # TrainingConfig.seed (the flat ``seed`` keyword): initialisation, shuffling, dropout, noise

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        try:
            cls.__signature__ = flat_signature(cls)  # help(MultVAE) and inspect list every hyper-parameter
        except NotImplementedError:
            pass  # an abstract intermediate class without default configs

    def __init__(self, config=None, training: TrainingConfig | None = None, **params: Any) -> None:
        """Hyper-parameters as flat keywords (``MultVAE(latent_dim=100, epochs=50, lr=1e-3)``),
        or as the config dataclasses (``MultVAE(VAEConfig(...), TrainingConfig(...))``), or both:
        each keyword goes to the model config when it names one of its fields, else to the
        training config. Unknown keywords raise ``TypeError`` naming them.
        """
        config = config if config is not None else self.default_config()
        training = training if training is not None else self.default_training()
        if params:
            config, training = split_flat_params(type(self).__name__, config, training, params)
        self.config = config
        self.training = training
        self.net_: torch.nn.Module | None = None
        self.training_: TrainingResult | None = None
        self.device_: torch.device | None = None

    @staticmethod
    def default_config():
        raise NotImplementedError

    @staticmethod
    def default_training() -> TrainingConfig:
        return TrainingConfig()

    def _build_net(self, n_items: int) -> torch.nn.Module:
        raise NotImplementedError

    def _net_for_payload(self, payload: dict, path) -> torch.nn.Module:
        """The network a saved payload's weights load into (a model whose shapes depend on its data overrides it)."""
        return self._build_net(payload["n_items"])

    def _train(self, matrix: sp.csr_matrix, validation: HeldOut | None,
               on_epoch: EpochCallback | None = None) -> TrainingResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, {self.training})"

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Every model and training hyper-parameter as one flat dict (``anneal`` as a dict)."""
        return {**plain(asdict(self.training)), **plain(asdict(self.config))}

    def set_params(self, **params: Any):
        """Change hyper-parameters, checked as the constructor checks them (the flat ``anneal_<field>``
        keys included, e.g. ``anneal_cap=0.3``); returns self. A refused value leaves the model as it was."""
        fields = {f"anneal_{f.name}": f.name for f in fields_of(AnnealConfig)}
        schedule = {fields[k]: params.pop(k) for k in list(params) if k in fields}
        if schedule:
            params["anneal"] = {**asdict(anneal_config(params.get("anneal", self.training.anneal))), **schedule}
        return super().set_params(**params)

    def _take_params(self, fresh: Recommender) -> None:
        self.config, self.training = fresh.config, fresh.training

    @property
    def history_(self):
        return None if self.training_ is None else self.training_.history

    def fit(self, train, validation: HeldOut | None = None, *, on_epoch: EpochCallback | None = None):
        """Train on ``train`` (Split, Interactions or CSR); selects the best epoch on ``validation``.

        With a Split, its validation users are used unless ``validation`` is given.
        ``on_epoch(epoch, score)`` is called after each validated epoch with its
        validation NDCG@``eval_k``; an exception it raises stops training and
        propagates (a tuner prunes a trial this way; the model is then not fitted).
        Under a torch.distributed process group of several ranks every rank calls
        ``fit`` alike and training is data-parallel (see :mod:`recvae.training`).
        Returns self.
        """
        matrix, validation, item_ids = training_inputs(train, validation)
        # Under data-parallel CUDA training each rank takes its own GPU (LOCAL_RANK).
        self.device_ = rank_device(resolve_device(self.training.device))
        self._check_fit_memory(matrix, validation)  # before the net's first catalogue-sized allocation
        with torch.random.fork_rng(devices=[]):
            # Initialisation is seeded without touching the caller's global RNG.
            torch.manual_seed(self.training.seed)
            net = self._build_net(matrix.shape[1])
        warm = take_warm_start(self)
        if warm is not None:  # the earlier run's weights, item rows remapped (recvae.models.warm_start)
            copy_grown_state(net, warm.previous.net_, warm.positions, warm.previous.n_items_)
        self.net_ = net.to(self.device_)
        self.item_ids_ = item_ids
        self.n_items_ = matrix.shape[1]
        try:
            self.training_ = self._train(matrix, validation, on_epoch)
        except TrainingDivergedError as err:
            self.training_ = err.result  # the net holds the best weights so far; the caller decides
            raise
        return self

    # ------------------------------------------------------------------ memory
    def _memory_layout(self, config) -> tuple[list[ItemMatrix], int, int]:
        """``(catalogue-sized matrices, the output layer's input width, floats kept per training user)``
        of a net built from ``config`` (see :func:`recvae.training.memory_plan.fit_memory_parts`)."""
        raise NotImplementedError

    def memory_parts(self, n_users: int, n_items: int, nnz: int, n_validation: int = 0,
                     **changes: Any) -> dict[str, float]:
        """The planned peak of fitting on a ``n_users x n_items`` matrix with ``nnz`` nonzeros, by part
        (bytes; ``n_validation`` validation users), checked by ``fit`` before the net is built.

        ``changes``: flat hyper-parameters to plan with instead of the model's (e.g.
        ``item_chunk=4096``). A subclass with more catalogue-sized state adds its parts to
        this dict (the hook for, e.g., an item-item path)."""
        config, training = self.config, self.training
        if changes:
            config, training = split_flat_params(type(self).__name__, config, training, dict(changes))
        matrices, output_width, user_floats = self._memory_layout(config)
        parts = fit_memory_parts(n_users, n_items, nnz, matrices, training, n_validation=n_validation,
                                 output_width=output_width, item_chunk=config.item_chunk,
                                 sampled_softmax=config.sampled_softmax,
                                 outputs_per_item=make_likelihood(config.likelihood).outputs_per_item,
                                 user_floats=user_floats)
        # Counted on top of the epochs' peak, although it comes after them: an overstatement.
        return {**parts, **self._after_epochs_memory(config, n_users, n_items)}

    def _after_epochs_memory(self, config, n_users: int, n_items: int) -> dict[str, float]:
        """Parts of the plan for work after the epochs (a subclass that does such work gives them)."""
        return {}

    def _check_fit_memory(self, matrix: sp.csr_matrix, validation: HeldOut | None) -> None:
        """Refuse (one-line :class:`recvae.runtime.memory.InsufficientMemoryError`) a fit whose plan does
        not fit in the device's free memory, naming the ``--param`` that fits, or ``--model sparse-ease``."""
        n_users, n_items = matrix.shape
        n_validation = 0 if validation is None else validation.fold_in.shape[0]
        if self.device_.type == "cuda":
            available = int(torch.cuda.mem_get_info(self.device_)[0])
        else:
            available = memory.available_memory_bytes()  # looked up now: tests fake it

        def plan(changes: dict) -> dict[str, float]:
            return self.memory_parts(n_users, n_items, matrix.nnz, n_validation, **changes)

        options = fit_options(plan, n_items=n_items, likelihood=self.config.likelihood,
                              item_chunk=self.config.item_chunk, sampled_softmax=self.config.sampled_softmax,
                              batch_size=self.training.batch_size, available=available)
        check_fit_memory(f"{type(self).__name__} training on {n_users:,} users x {n_items:,} items", plan({}),
                         options, available=available)

    def _rows(self, user_rows) -> SparseRows:
        self._check_fitted()
        return sparse_rows(as_user_rows(user_rows, self.n_items_), self.device_)

    def score_tensor(self, user_rows) -> torch.Tensor:
        """Scores as a torch tensor on the model's device (used by the evaluation harness).

        Always fp32, also inside a caller's autocast and whatever precision the model
        trained in: what ranks and reports (validation, ``evaluate``, ``recommend``) is exact."""
        x = self._rows(user_rows)
        with full_precision(self.device_):
            return self.net_.scores(x)

    def score(self, user_rows) -> np.ndarray:
        """(users, items) scores for CSR user rows (fold-in: no retraining)."""
        return self.score_tensor(user_rows).cpu().numpy()

    # ------------------------------------------------------------------ scoring a block of items
    @property
    def block_scoring(self) -> bool:  # type: ignore[override]
        """True when the scores are the decoder's last linear layer as they are (the likelihoods'
        default ``scores``): a block of items is then that layer's block of rows."""
        return (self.net_ is not None and type(self.net_.likelihood).scores is Likelihood.scores
                and type(self)._decoder_head is not TorchVAERecommender._decoder_head)

    def _decoder_head(self, x: SparseRows, code=None):
        """``(h, weight, bias, linear)`` such that the scores of items [s, e) are
        ``h @ weight[s:e].T + bias[s:e]`` (when ``h`` is not None) plus ``linear(s, e)`` (when
        not None); computed once per batch in eval mode under no_grad, from the code
        ``code(mu, log_var)`` (None: mu). None here: no block path."""
        return None

    def item_block_scorer(self, user_rows):
        """Scores of item blocks from one encoding of the rows: the users' last hidden layer
        is computed once, then each block ``[start, stop)`` is the decoder's output layer on its
        rows ``W[start:stop]`` (a torch tensor on the model's device). Equal to
        :meth:`score_tensor`'s columns up to the float rounding of the smaller matrix product;
        memory is users x block. Falls back to slicing the full scores when the likelihood
        transforms the decoder output (see :attr:`block_scoring`)."""
        if not self.block_scoring:
            return super().item_block_scorer(user_rows)
        return self._head_scorer(self._rows(user_rows))

    @property
    def has_posterior(self) -> bool:  # type: ignore[override]
        """True unless the encoder is deterministic (Mult-DAE) or the scores ignore z (``paths="linear"``)."""
        return bool(getattr(self.config, "variational", True)) and getattr(self.config, "paths", "") != "linear"

    def sampled_block_scorer(self, user_rows, explore: float, seed: int = 0, sample: int = 0):
        """:meth:`item_block_scorer` at one posterior sample per user, ``z = mu + explore * sigma * eps``
        instead of mu (eps from :func:`recvae.models.posterior.posterior_noise`: a function of ``seed``,
        ``sample`` and the user's row only). What ``recommend(explore=...)`` ranks."""
        if not self.has_posterior:
            raise no_posterior(self, f"explore={explore:g}")
        rows = as_user_rows(user_rows, self.n_items_)

        def code(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
            eps = torch.from_numpy(posterior_noise(rows, mu.shape[1], seed, sample)).to(mu.device, mu.dtype)
            return mu + float(explore) * torch.exp(0.5 * log_var) * eps

        return self._head_scorer(self._rows(rows), code)

    def _head_scorer(self, x: SparseRows, code=None):
        """The block scorer over :meth:`_decoder_head` (``code(mu, log_var) -> z``: the code decoded, default mu)."""
        net = self.net_
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), full_precision(self.device_):
                h, weight, bias, linear = self._decoder_head(x, code)
        finally:
            net.train(was_training)

        @torch.no_grad()
        def scorer(start: int, stop: int) -> torch.Tensor:
            with full_precision(self.device_):  # fp32, as score_tensor
                out = None if h is None else F.linear(h, weight[start:stop], bias[start:stop])
                if linear is not None:
                    part = linear(start, stop)
                    out = part if out is None else out + part.to(out.dtype)
            return out.float()

        return scorer

    def item_embeddings(self) -> np.ndarray:
        """(items, d) rows of the decoder's output layer."""
        self._check_fitted()
        return self.net_.item_embeddings().cpu().numpy()

    # ------------------------------------------------------------------ persistence
    @classmethod
    def _config_from_dict(cls, values: dict):
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Weights, configs, id map and history in one torch file (loadable with weights_only=True)."""
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": self.save_format,
            "class": type(self).__name__,
            "config": plain(asdict(self.config)),
            "training": plain(asdict(self.training)),
            "n_items": int(self.n_items_),
            "state_dict": {k: v.detach().cpu() for k, v in self.net_.state_dict().items()},
            "item_ids": _ids_to_payload(self.item_ids_),
            "history": None if self.history_ is None else self.history_.to_dict(orient="list"),
            "best_epoch": None if self.training_ is None else self.training_.best_epoch,
            **self._extra_payload(),
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    def _extra_payload(self) -> dict:
        """Fitted state kept outside the net's weights, saved beside them (a subclass with such state gives it)."""
        return {}

    def _load_extra_payload(self, payload: dict, path) -> None:
        """Take back (and check) what :meth:`_extra_payload` saved."""

    @classmethod
    def load(cls, path: str | Path, device: str = "auto"):
        """Read a model written by :meth:`save` (no pickled objects are executed)."""
        payload = read_vae_payload(path, cls)  # CRC, no pickles, format, class, keys, shapes, finite values
        training = payload["training"]
        training["anneal"] = AnnealConfig(**training["anneal"])
        config = cls._config_from_dict(payload["config"])
        model = cls(config, replace(TrainingConfig(**training), device=device))
        model.device_ = resolve_device(device)
        model.net_ = model._net_for_payload(payload, path)
        model.net_.load_state_dict(payload["state_dict"])
        model.net_.to(model.device_).eval()
        model.n_items_ = payload["n_items"]
        model.item_ids_ = _ids_from_payload(payload["item_ids"])
        model._load_extra_payload(payload, path)
        if payload["history"] is not None:
            model.training_ = TrainingResult(
                history=pd.DataFrame(payload["history"]), best_epoch=payload["best_epoch"], best_score=None,
                best_beta=None, final_beta=float("nan"), steps=0, stopped_early=False,
            )
        return model


class MultVAE(TorchVAERecommender):
    """A VAE for collaborative filtering (Liang et al. 2018), any of four likelihoods.

    Example::

        model = MultVAE(VAEConfig(), TrainingConfig(epochs=50)).fit(split)
        recs = model.recommend_for_items([1, 50, 260], k=10)
        mu, sigma = model.embed_users(split.test.fold_in)

    Attributes set by ``fit``: ``net_`` (the torch module), ``history_`` (per-epoch
    DataFrame), ``training_`` (a :class:`TrainingResult`), ``item_ids_``, ``n_items_``.
    """

    save_format = _SAVE_FORMAT
    file_kind = "VAE"

    @staticmethod
    def default_config() -> VAEConfig:
        return VAEConfig()

    #: the config class a saved file's dict is read into (a subclass with more fields names its own).
    config_type: type[VAEConfig] = VAEConfig

    @classmethod
    def _config_from_dict(cls, values: dict) -> VAEConfig:
        decoder_dims = values.get("decoder_dims")
        return cls.config_type(**{**values, "hidden_dims": tuple(values["hidden_dims"]),
                                  "decoder_dims": None if decoder_dims is None else tuple(decoder_dims)})

    def _build_net(self, n_items: int) -> VAE:
        return VAE(n_items, self.config)

    def _memory_layout(self, config: VAEConfig) -> tuple[list[ItemMatrix], int, int]:
        """The sparse input layer (items x first width) and the output layer (last width + bias per output)."""
        code = config.latent_dim * (2 if config.variational else 1)
        first = config.hidden_dims[0] if config.hidden_dims else code
        decoder = decoder_hidden_dims(config)
        last = decoder[-1] if decoder else config.latent_dim
        outputs = make_likelihood(config.likelihood).outputs_per_item
        return [ItemMatrix("input layer", first, sparse_grad=True),
                ItemMatrix("output layer", (last + 1) * outputs, sparse_grad=config.sampled_softmax is not None)
                ], last, 0

    def _after_epochs_memory(self, config: VAEConfig, n_users: int, n_items: int) -> dict[str, float]:
        if not config.refine_steps:
            return {}
        return {"exact refinement (users x latent^2 second moments)": refinement_bytes(n_users, n_items,
                                                                                      config.latent_dim)}

    def _train(self, matrix: sp.csr_matrix, validation: HeldOut | None,
               on_epoch: EpochCallback | None = None) -> TrainingResult:
        result = train_vae(self.net_, matrix, validation, self.training, self.device_, on_epoch=on_epoch, scorer=self)
        if self.config.refine_steps:
            result.refinement = refine_linear_decoder(
                self.net_, matrix, validation, steps=self.config.refine_steps, l2=self.config.refine_l2,
                device=self.device_, scorer=self, eval_k=self.training.eval_k,
                eval_batch_size=self.training.eval_batch_size)
        return result

    def _decoder_head(self, x: SparseRows, code=None):
        """The posterior mean (or ``code(mu, log_var)``) through the decoder up to its output layer (as ``VAE.decode``)."""
        net = self.net_
        h, log_var = net.encode(x)
        if code is not None:
            h = code(h, log_var)
        return net.decode_hidden(h), net.decoder[-1].weight, net.decoder[-1].bias, None

    @torch.no_grad()
    def embed_users(self, user_rows) -> UserEmbeddings:
        """Posterior mean and standard deviation of z for each user row (``mu, sigma = ...`` unpacks).

        For Mult-DAE (deterministic) sigma is all zeros.
        """
        x = self._rows(user_rows)
        was_training = self.net_.training
        self.net_.eval()
        try:
            with full_precision(self.device_):
                mu, log_var = self.net_.encode(x)
        finally:
            self.net_.train(was_training)
        sigma = torch.zeros_like(mu) if log_var is None else torch.exp(0.5 * log_var)
        return UserEmbeddings(mu.cpu().numpy(), sigma.cpu().numpy())


class MultDAE(MultVAE):
    """Mult-DAE (Liang et al.): I-200-I, deterministic, weight decay 0.01 / batch size."""

    @staticmethod
    def default_config() -> VAEConfig:
        return VAEConfig(hidden_dims=(), latent_dim=200, variational=False)

    @staticmethod
    def default_training() -> TrainingConfig:
        return TrainingConfig(weight_decay=0.01 / 500, anneal=AnnealConfig(kind="constant", cap=0.0))

    def __init__(self, config: VAEConfig | None = None, training: TrainingConfig | None = None, **params: Any) -> None:
        super().__init__(config, training, **params)
        if self.config.variational:
            raise ValueError("MultDAE needs a deterministic encoder: VAEConfig(variational=False)")


def _ids_to_payload(ids: np.ndarray | None):
    kind, values = ids_to_array(ids)
    if kind is None:
        return None
    return {"kind": kind, "values": values.tolist() if kind == "str" else torch.from_numpy(values)}


def _ids_from_payload(payload) -> np.ndarray | None:
    if payload is None:
        return None
    values = payload["values"]
    return ids_from_array(payload["kind"], np.asarray(values, dtype=str) if payload["kind"] == "str" else values.numpy())
