"""The training loop for recvae's VAEs: short and visible.

Each epoch: shuffle users, take batches of sparse rows on the device, minimise
the negative ELBO (NLL + beta * KL) with Adam, step the beta schedule; then
score the validation users (NDCG@100), keep the best weights, and stop early
when the score has not improved for ``patience`` epochs.

Under an initialised torch.distributed process group of several ranks
(``torchrun``, :func:`recvae.distributed.spawn`) the same loop runs data-parallel:
every rank draws the same permutation, takes its slice of each global batch of
``batch_size`` users, and DistributedDataParallel all-reduces the gradients, scaled
so that they equal the one-process gradient of the global batch. Validation is
sharded over the ranks; rank 0 alone writes the history, the checkpoint and the
progress bar.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.data.splits import HeldOut
from recvae.distributed import DistributedContext, all_reduce_sum, parallel_context, shard_batch
from recvae.evaluation import evaluate_model
from recvae.nn.annealing import AnnealConfig, BetaSchedule
from recvae.nn.item_output import set_item_counts
from recvae.storage import CHECKPOINT_FIX, ModelFileError, read_torch_payload, require_keys
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.training.host_memory import retained_host_memory

logger = logging.getLogger(__name__)

__all__ = [
    "TrainingConfig",
    "TrainingResult",
    "EpochCallback",
    "resolve_device",
    "train_step",
    "parallel_train_step",
    "train_vae",
    "sparse_rows",
    "make_optimizer",
    "ItemSparseAdam",
    "prepare_item_training",
    "resolve_precision",
    "cpu_has_native_bf16",
    "full_precision",
    "NetScorer",
    "AUTO_PRECISION_ENV",
    "PRECISIONS",
    "RecvaeWarning",
    "TrainingDivergedError",
    "CheckpointMismatchError",
    "DIVERGENCE_FACTOR",
    "divergence",
    "run_fingerprint",
    "data_fingerprint",
]

#: ``on_epoch(epoch, validation score)``: called by the loops after each validated epoch (see :func:`train_vae`).
EpochCallback = Callable[[int, float], None]

# 2: the checkpoint records the run it belongs to (see run_fingerprint); format 1 did not.
_CHECKPOINT_FORMAT = 2

#: an epoch whose mean loss exceeds the run's first batch's by this factor has diverged (see :func:`divergence`).
DIVERGENCE_FACTOR = 100.0

#: TrainingConfig fields a resumed run may change: how long and how it runs, where it
#: writes, and how often and patiently it validates; none of them alters the
#: trajectory of the weights. ``lr`` may change too, with a warning (it does).
RESUMABLE_FIELDS = frozenset({"epochs", "progress", "history_csv", "checkpoint", "resume", "device", "patience",
                              "min_epochs", "eval_every", "eval_batch_size", "retain_host_memory"})


class RecvaeWarning(UserWarning):
    """A setting recvae can run with but that is probably a mistake (e.g. a learning rate above 1)."""


class TrainingDivergedError(RuntimeError, FloatingPointError):
    """Training stopped because the loss became non-finite or exploded (see :func:`divergence`).

    ``result`` is the :class:`TrainingResult` of the epochs before the divergence;
    the network holds the best validated weights (or, when no epoch was validated,
    the last ones). Also a ``FloatingPointError``, which recvae raised before.
    """

    def __init__(self, message: str, result: TrainingResult) -> None:
        super().__init__(message)
        self.result = result


class CheckpointMismatchError(ValueError):
    """A checkpoint asked to resume belongs to another run (other data, architecture or settings)."""


@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Defaults follow Liang et al. (Adam 1e-3, batch 500, 200 epochs).

    Attributes:
        epochs, batch_size, lr: as in the paper. ``batch_size`` is the global batch:
            under data-parallel training each rank takes a slice of it.
        weight_decay: L2 weight decay on weight matrices (not biases); 0 for
            Mult-VAE, 0.01 / batch_size for Mult-DAE.
        anneal: the beta schedule (see :class:`AnnealConfig`).
        patience: stop after this many evaluations without a better validation
            score (None: train all epochs; the best weights are kept either way).
        min_epochs: patience never stops training before this epoch (a model whose
            validation score dips early, e.g. :class:`recvae.models.JointVAE` while its VAE
            half is untrained, is not cut off inside the dip).
        eval_k: validation metric is NDCG@eval_k.
        eval_every: validate every this many epochs.
        seed: seeds initialisation, shuffling, dropout and noise (data-parallel:
            every rank shuffles alike; dropout and noise streams differ per rank).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"auto"`` (the default: bf16 where the hardware computes it
            natively -- CUDA devices with bf16 and CPUs with AVX512-BF16 or AMX --
            fp32 elsewhere, see :func:`resolve_precision`), ``"fp32"`` or ``"bf16"`` (autocast of matrix products; the
            loss and log-softmax stay in fp32).
        progress: show a tqdm progress bar.
        history_csv: write the per-epoch history there after each epoch.
        checkpoint: a file written (atomically) after each epoch; with
            ``resume=True`` training continues from it when it exists.
        sparse_item_updates: give the item matrices sparse gradients and a lazy
            Adam (``torch.optim.SparseAdam``: only the rows of the batch's items
            move, and only their moments are updated), so the optimizer step
            does not scale with the catalogue: the sparse input layer always,
            the output layer too under ``sampled_softmax``. The other parameters
            keep the fused Adam. Weight decay on those matrices is applied
            lazily, to the rows a step touches. One process only (not data-parallel).
        item_moments: the storage of that lazy Adam's two moments, ``"fp32"``
            (``torch.optim.SparseAdam``) or ``"bf16"`` (:class:`LazyAdam`: half the
            memory -- 4.8 GB less for a million-item Mult-VAE -- each touched row
            updated in fp32 and stored rounded to bf16). Needs ``sparse_item_updates``.
        retain_host_memory: on the CPU, keep freed memory in the process while training
            (:func:`recvae.training.retained_host_memory`): glibc otherwise maps and unmaps
            each large block (the logits and gradients at 20k items and up) every step, and
            faulting their pages in again cost 8-21% of a step at 20k-100k items (measured).
            Process-wide while training runs; the memory is given back when it ends.
            No effect on results, on CUDA or outside glibc.
    """

    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    anneal: AnnealConfig = field(default_factory=AnnealConfig)
    patience: int | None = None
    min_epochs: int = 0
    eval_k: int = 100
    eval_every: int = 1
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True
    history_csv: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    sparse_item_updates: bool = False
    item_moments: str = "fp32"
    retain_host_memory: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.anneal, dict):
            object.__setattr__(self, "anneal", AnnealConfig(**self.anneal))
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.eval_k < 1:
            raise ValueError("epochs, batch_size, eval_every and eval_k must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 or None")
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, int) or self.min_epochs < 0:
            raise ValueError(f"min_epochs must be an integer >= 0; got {self.min_epochs!r}")
        if self.item_moments not in ITEM_MOMENTS:
            raise ValueError(f"item_moments must be one of {', '.join(ITEM_MOMENTS)}; got {self.item_moments!r}")
        if self.item_moments != "fp32" and not self.sparse_item_updates:
            raise ValueError(f"item_moments={self.item_moments!r} is the storage of the sparse item updates' "
                             "moments; set sparse_item_updates=True with it")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.resume and not self.checkpoint:
            raise ValueError("resume=True needs checkpoint=<path>")


def warn_degenerate(config: TrainingConfig) -> None:
    """Warn (:class:`RecvaeWarning`) about settings that train but almost surely diverge."""
    if config.lr > 1:
        warnings.warn(f"lr={config.lr:g} is above 1: Adam at that rate almost always diverges "
                      "(recvae's defaults are 1e-3 for Mult-VAE / Mult-DAE, 5e-4 for RecVAE)", RecvaeWarning,
                      stacklevel=3)


def divergence(loss: float, reference: float | None) -> str | None:
    """Why an epoch's mean loss means training diverged, or None when it does not.

    ``reference`` is the loss of the run's first batch: the loss at
    initialisation, which a healthy run only improves on. (The first epoch's
    mean would not do: at a huge lr the weights blow up within the first epoch,
    whose mean is then already astronomical.) The rule: a non-finite loss, or a
    loss that exceeds ``reference`` by more than ``(DIVERGENCE_FACTOR - 1) *
    |reference|``. recvae's losses are negative ELBOs, positive for the discrete
    likelihoods, and there this reads "more than 100 times the first batch's";
    written with ``|reference|`` it keeps its meaning for a negative reference (a
    Gaussian likelihood with learned variance). A reference of 0, none yet or a
    non-finite one gives no scale, so only finiteness is checked.
    """
    if not math.isfinite(loss):
        return f"loss {loss}"
    if reference is None or not math.isfinite(reference) or reference == 0:
        return None
    if loss - reference > (DIVERGENCE_FACTOR - 1) * abs(reference):
        return f"loss {loss:.3g}, over {DIVERGENCE_FACTOR:g}x the first batch's {reference:.3g}"
    return None


def first_batch_loss(first: tuple[torch.Tensor, int] | None, ctx) -> float | None:
    """The mean loss of a first batch kept as (summed (loss, nll, kl) of this rank's slice, global batch size).

    Read once, at the end of the first epoch, so that training needs no extra host
    synchronisation; under data parallelism the slices are summed (all ranks call it).
    """
    if first is None:
        return None
    sums, size = first
    return float(all_reduce_sum(sums.clone(), ctx)[0]) / size


def _diverged(epoch: int, problem: str, config: TrainingConfig, state: dict, net: torch.nn.Module, ctx,
              result) -> TrainingDivergedError:
    """Restore the best weights so far and build the error for a diverged epoch (rank-symmetric)."""
    _restore_best(net, state, ctx)
    kept = (f"the weights of the best epoch so far ({state['best_epoch']}) are restored" if state["best_state"]
            is not None else "no epoch was validated, so the net keeps the diverged weights")
    return TrainingDivergedError(
        f"training diverged at epoch {epoch} ({problem}): lower lr (now {config.lr:g}) and train again; {kept}",
        result(state),
    )


@dataclass
class TrainingResult:
    """What a training run did: per-epoch history and the selected epoch."""

    history: pd.DataFrame
    best_epoch: int | None
    best_score: float | None
    best_beta: float | None
    final_beta: float
    steps: int
    stopped_early: bool


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; checks that CUDA exists when asked for."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


def sparse_rows(matrix: sp.csr_matrix, device: torch.device) -> SparseRows:
    """All rows of a scipy CSR matrix as a device batch."""
    return DeviceCSR(matrix, device).rows(torch.arange(matrix.shape[0], device=device))


PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX flags in /proc/cpuinfo).

    Without them torch emulates bf16 matmuls, about 15x slower than fp32 (measured on AVX2).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags to read, so no claim of native bf16
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


#: The environment variable ``precision="auto"`` reads first: ``bf16`` or ``fp32`` forces that
#: choice on any device (e.g. ``RECVAE_AUTO_PRECISION=bf16`` to test on an AVX2 machine what a
#: native-bf16 CPU runs, slowly: bf16 is emulated there); unset or empty, the hardware decides.
AUTO_PRECISION_ENV = "RECVAE_AUTO_PRECISION"


def resolve_precision(precision: str, device: torch.device, *, cpuinfo: str | None = None,
                      environ: Mapping[str, str] | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: the training precision. An explicit choice is kept; ``auto``
    takes :data:`AUTO_PRECISION_ENV` when set (``environ``: ``os.environ`` by default), else
    picks bf16 on CUDA devices that support it and on CPUs with native bf16, fp32 elsewhere.

    Only training runs in it: every score that decides or reports (validation, ``evaluate``,
    recommendations) is computed in fp32 (see :func:`full_precision`).
    """
    if precision != "auto":
        return precision
    forced = (os.environ if environ is None else environ).get(AUTO_PRECISION_ENV, "").strip()
    if forced:
        if forced not in PRECISIONS[1:]:
            raise ValueError(f"{AUTO_PRECISION_ENV}={forced!r} is not a precision; set it to "
                             f"{' or '.join(PRECISIONS[1:])}, or unset it to let the hardware decide")
        return forced
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16(cpuinfo) else "fp32"
    return "fp32"


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def full_precision(device: torch.device | str) -> AbstractContextManager:
    """A context in which a net computes in its weights' dtype (fp32), autocast off on ``device``,
    even inside a caller's ``torch.autocast``: where recvae scores for a decision or a report."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


class NetScorer:
    """A trained net as the evaluation harness scores it: fp32 posterior-mean scores of CSR rows.

    What the training loops validate with when no model is handed to them (a net trained
    on its own); the models hand themselves in, so that validation ranks with the very
    scoring (and item blocks) of :func:`recvae.evaluation.evaluate`.
    """

    def __init__(self, net: torch.nn.Module, device: torch.device) -> None:
        self.net = net
        self.device = device

    def score_tensor(self, rows: sp.csr_matrix) -> torch.Tensor:
        with full_precision(self.device):
            return self.net.scores(sparse_rows(rows, self.device))

    score = score_tensor


def make_optimizer(params, config: TrainingConfig) -> torch.optim.Optimizer | ItemSparseAdam:
    """Adam with weight decay on weight matrices only (not biases or norms).

    A parameter with a ``weight_decay`` attribute gets that decay instead (e.g. the
    joint model's item-item matrix, see :class:`recvae.nn.joint.ItemItemLinear`).
    Parameters marked ``sparse_grad`` (the item matrices under
    ``sparse_item_updates``, see :func:`prepare_item_training`) get a lazy sparse
    Adam and the rest the fused Adam, together an :class:`ItemSparseAdam`.
    """
    params = list(params)
    sparse = [p for p in params if getattr(p, "sparse_grad", False)]
    params = [p for p in params if not getattr(p, "sparse_grad", False)]
    own = [p for p in params if hasattr(p, "weight_decay")]
    decay = [p for p in params if p.ndim >= 2 and not hasattr(p, "weight_decay")]
    no_decay = [p for p in params if p.ndim < 2 and not hasattr(p, "weight_decay")]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              *({"params": [p], "weight_decay": p.weight_decay} for p in own)]
    if sparse:
        return ItemSparseAdam(groups, [{"params": sparse, "weight_decay": config.weight_decay}], config.lr,
                              moments=config.item_moments)
    # The fused implementation is several times faster on the large item matrices.
    return torch.optim.Adam(groups, lr=config.lr, fused=True)


ITEM_MOMENTS = ("fp32", "bf16")
_MOMENT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LazyAdam(torch.optim.Optimizer):
    """``torch.optim.SparseAdam``'s update (lazy Adam over the rows of sparse gradients) with its
    moments stored in ``moments_dtype``.

    Each step gathers the moments of the rows in the gradient, updates them and the rows in
    float32 exactly as SparseAdam does, and stores the moments back rounded to
    ``moments_dtype``: bf16 halves the optimizer state of an items x d matrix (its
    relative rounding, 2^-9, is far below Adam's own noise). Rows absent from a step keep
    their weights and moments. A state dict loads back in ``moments_dtype`` (torch's
    default would cast it to the parameter's float32).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 moments_dtype: torch.dtype = torch.bfloat16) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}")
        self.moments_dtype = moments_dtype
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("LazyAdam takes sparse gradients (embedding_bag(sparse=True)); use Adam "
                                       "for dense ones")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param, dtype=self.moments_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(param, dtype=self.moments_dtype)
                state["step"] += 1
                grad = param.grad.coalesce()
                rows, values = grad.indices()[0], grad.values().float()
                exp_avg = state["exp_avg"].index_select(0, rows).float()
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).float()
                exp_avg.add_(values.sub(exp_avg).mul_(1 - beta1))
                exp_avg_sq.add_(values.square().sub_(exp_avg_sq).mul_(1 - beta2))
                state["exp_avg"].index_copy_(0, rows, exp_avg.to(self.moments_dtype))
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq.to(self.moments_dtype))
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                update = exp_avg.div_(exp_avg_sq.sqrt_().add_(group["eps"])).mul_(-step_size)
                param.index_add_(0, rows, update.to(param.dtype))
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(self.moments_dtype)


class ItemSparseAdam:
    """Adam for a net whose item matrices get sparse gradients: ``SparseAdam`` for those, fused Adam for the rest.

    Dense Adam reads and writes every row of an items x 600 matrix each step (~28
    bytes per parameter), whatever the batch touched; ``SparseAdam`` updates the
    rows present in the sparse gradient and their moments alone (a "lazy" Adam:
    a row's moments do not decay while its item is absent). ``SparseAdam`` has no
    weight decay, so a sparse group's ``weight_decay`` is added to the gradient
    of the rows it holds (L2 as Adam's own ``weight_decay``, but lazily). Quacks
    like an optimizer for the loops and checkpoints: ``zero_grad``, ``step``,
    ``param_groups`` (both optimizers'), ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, dense_groups: list[dict], sparse_groups: list[dict], lr: float, moments: str = "fp32") -> None:
        self.dense = torch.optim.Adam(dense_groups, lr=lr, fused=True)
        self.sparse = (torch.optim.SparseAdam(sparse_groups, lr=lr) if moments == "fp32"
                       else LazyAdam(sparse_groups, lr=lr, moments_dtype=_MOMENT_DTYPES[moments]))

    @property
    def param_groups(self) -> list[dict]:
        return self.dense.param_groups + self.sparse.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self.sparse.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.sparse.param_groups:
            decay = group.get("weight_decay", 0.0)
            for param in group["params"]:
                if decay and param.grad is not None:
                    grad = param.grad.coalesce()
                    rows = grad.indices()[0]
                    param.grad = torch.sparse_coo_tensor(grad.indices(), grad.values() + decay * param[rows],
                                                         grad.shape, is_coalesced=True, check_invariants=False)
        self.dense.step()
        self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.sparse.load_state_dict(state["sparse"])


def prepare_item_training(net: torch.nn.Module, train: sp.csr_matrix, config: TrainingConfig,
                          ctx: DistributedContext | None) -> None:
    """What a net's item layers need before its optimizer is made (the loops call it).

    A popularity negative sampler (``sampled_softmax``) gets the training matrix's
    interactions per item; under ``sparse_item_updates`` the net switches its item
    matrices to sparse gradients and marks them for :func:`make_optimizer`.
    """
    set_item_counts(net, np.bincount(train.indices, minlength=train.shape[1]))
    if not config.sparse_item_updates:
        return
    if ctx is not None:
        raise ValueError("sparse_item_updates runs in one process only (data-parallel gradients are all-reduced "
                         "dense); turn it off under torchrun")
    enable = getattr(net, "enable_sparse_item_gradients", None)
    if enable is None:
        raise ValueError(f"sparse_item_updates needs a net with sparse item layers; {type(net).__name__} has none")
    enable()


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: SparseRows,
    beta: float,
    generator: torch.Generator,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """One gradient step on the negative ELBO of a batch; returns its parts (loss, nll, kl)."""
    with _autocast(device, precision):
        parts = net.loss(x, beta, generator)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return parts


class _PerUserTerms(torch.nn.Module):
    """A VAE's loss terms per user, (NLL_u, KL_u), not their means: the module DDP wraps.

    ``VAE.loss`` is the mean of NLL_u + beta * KL_u over the batch; a data-parallel
    step needs the sums over the rank's slice instead, weighted by the slice's share
    of the global batch (which also makes an empty slice contribute zero).
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: SparseRows, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.terms(x, generator)


def parallel_train_step(
    model: torch.nn.parallel.DistributedDataParallel,
    optimizer: torch.optim.Optimizer,
    x: SparseRows,
    beta: float,
    global_batch_size: int,
    generator: torch.Generator,
    ctx: DistributedContext,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """One data-parallel step on this rank's slice ``x`` of a global batch; returns the slice's sums.

    The rank minimises world_size / global_batch_size * sum over its users of
    (NLL_u + beta * KL_u). DDP averages gradients over the ranks, so every rank
    applies the gradient of the mean over the global batch, the one-process update,
    however unevenly the batch was split. Returns (loss, nll, kl) summed over the slice.
    """
    with _autocast(device, precision):
        nll, kl = model(x, generator)
    nll_sum, kl_sum = nll.sum(), kl.sum()
    loss_sum = nll_sum + beta * kl_sum
    optimizer.zero_grad(set_to_none=True)
    (loss_sum * (ctx.world_size / global_batch_size)).backward()
    optimizer.step()
    return torch.stack([loss_sum, nll_sum, kl_sum]).detach()


def rank_noise_generator(seed: int, epoch: int, ctx: DistributedContext, device: torch.device) -> torch.Generator:
    """The dropout / noise generator of a rank for an epoch, seeded from (seed, epoch, rank).

    Data-parallel ranks shuffle with one shared generator but draw dropout masks
    and noise for their own slices from their own streams; seeding per epoch makes
    a resumed run draw what an uninterrupted one would, with no per-rank state saved.
    """
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([seed % 2**32, epoch, ctx.rank]).generate_state(1)[0]))
    return g


def check_parallel_device(ctx: DistributedContext, device: torch.device) -> None:
    """Refuses a device the process group cannot communicate from (nccl needs CUDA)."""
    if ctx.backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group uses nccl, which needs CUDA tensors, but training runs on {device}; "
                         "train on device='cuda' (each rank takes its LOCAL_RANK GPU) or use gloo for CPU")


def resume_agreed(config: TrainingConfig, ctx: DistributedContext | None) -> bool:
    """Whether to resume from ``config.checkpoint``; under data parallelism every rank must see the file."""
    found = bool(config.resume and config.checkpoint and Path(config.checkpoint).exists())
    if ctx is None:
        return found
    seen = int(all_reduce_sum(torch.tensor([int(found)], device=ctx.device), ctx).item())
    if seen not in (0, ctx.world_size):
        raise RuntimeError(f"only {seen} of {ctx.world_size} ranks see the checkpoint {config.checkpoint}: "
                           "put it on a file system every node shares")
    return found


def _active_users(train: sp.csr_matrix, validation: HeldOut | None) -> np.ndarray:
    """Rows of ``train`` with interactions; refuses inputs that cannot train or select a model."""
    active = np.flatnonzero(np.diff(train.indptr) > 0)
    if len(active) == 0:
        raise ValueError("the training matrix has no interactions")
    if validation is not None and (np.diff(validation.target.indptr) > 0).sum() == 0:
        raise ValueError(
            "no validation user has a target (all have fewer than 5 events?): model selection would "
            "compare NaNs; pass validation=None or hold out more active users"
        )
    if len(active) < train.shape[0]:
        logger.info("skipping %d training users with no interactions", train.shape[0] - len(active))
    return active


def _validate_epoch(net, scorer, validation: HeldOut, config: TrainingConfig, epoch: int,
                    state: dict, row: dict, postfix: dict) -> float:
    """Validation NDCG@k of an epoch: recorded in ``row``/``postfix``; best weights and patience in ``state``.

    ``scorer`` (the model being fitted, or a :class:`NetScorer`) is evaluated as
    :func:`recvae.evaluation.evaluate_model` evaluates any model: in fp32, whatever the
    training precision, so the selected epoch's score is the one ``evaluate`` reports.
    """
    started = time.perf_counter()
    result = evaluate_model(scorer, validation, ks=(config.eval_k,), metrics=("ndcg",),
                            batch_size=config.eval_batch_size)
    score = result[f"ndcg@{config.eval_k}"]
    row[f"val_ndcg@{config.eval_k}"] = score
    row["eval_seconds"] = time.perf_counter() - started
    postfix[f"val@{config.eval_k}"] = f"{score:.4f}"
    if state["best_score"] is None or score > state["best_score"]:
        state.update(best_score=score, best_epoch=epoch, best_beta=row["beta"], since_best=0,
                     best_state={k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()})
    else:
        state["since_best"] += 1
        if (config.patience is not None and state["since_best"] >= config.patience
                and epoch >= config.min_epochs):
            state["stopped_early"] = True
    return score


def _end_epoch(state: dict, epoch: int, row: dict, postfix: dict, bar, config: TrainingConfig, is_main: bool,
               save_checkpoint, on_epoch: EpochCallback | None = None) -> bool:
    """Record an epoch: history, progress bar, history CSV and checkpoint (rank 0 only), then
    ``on_epoch(epoch, validation score)`` when the epoch was validated.

    Returns True when early stopping ends training.
    """
    state["history"].append(row)
    state["epoch"] = epoch
    bar.set_postfix(postfix, refresh=False)
    bar.set_description(f"epoch {epoch}/{config.epochs}")
    if config.history_csv and is_main:
        pd.DataFrame(state["history"]).to_csv(config.history_csv, index=False)
    if config.checkpoint and is_main:
        save_checkpoint()
    score = row.get(f"val_ndcg@{config.eval_k}")
    if on_epoch is not None and score is not None:
        on_epoch(epoch, score)
    if state["stopped_early"]:
        logger.info("early stop at epoch %d (best epoch %s)", epoch, state["best_epoch"])
        return True
    return False


def _restore_best(net: torch.nn.Module, state: dict, ctx) -> None:
    """End of training: wait for rank 0's files, load the best validated weights, switch to eval mode.

    The last step's gradients are dropped: a fitted model would otherwise hold a second copy of
    every weight (4.8 GB for a million-item Mult-VAE) that nothing reads again.
    """
    net.zero_grad(set_to_none=True)
    if ctx is not None:
        torch.distributed.barrier()  # rank 0's files are complete when any rank returns
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    net.eval()


def train_vae(
    net: torch.nn.Module,
    train: sp.csr_matrix,
    validation: HeldOut | None,
    config: TrainingConfig,
    device: torch.device,
    *,
    on_epoch: EpochCallback | None = None,
    scorer=None,
) -> TrainingResult:
    """Train ``net`` (a :class:`recvae.nn.vae.VAE`) in place; loads the best weights at the end.

    Under a torch.distributed process group of several ranks it trains data-parallel
    (see the module docstring); every rank must call it with the same arguments, and
    every rank returns the same result and the same weights.

    ``on_epoch(epoch, score)``, when given, is called after each validated epoch
    (once the epoch is recorded in the history and the checkpoint) with its validation
    NDCG@``eval_k``. An exception it raises stops training and propagates: the
    progress bar is closed and the net keeps the weights of that epoch (a tuner
    prunes a trial this way). Under data parallelism every rank calls it and must
    decide alike.

    ``scorer``: what validation ranks with -- the model that holds ``net`` (its
    ``score_tensor`` and item blocks, as :func:`recvae.evaluation.evaluate` scores it);
    None: the net's own fp32 scores (:class:`NetScorer`). Training may run in bf16
    (``config.precision``); validation never does.
    """
    with host_memory_for(config, device):
        return _train_vae(net, train, validation, config, device, on_epoch=on_epoch,
                          scorer=NetScorer(net, device) if scorer is None else scorer)


def host_memory_for(config: TrainingConfig, device: torch.device) -> AbstractContextManager[bool]:
    """The trainers' :func:`retained_host_memory`: held on the CPU when ``config.retain_host_memory``."""
    return retained_host_memory(config.retain_host_memory and device.type == "cpu")


def _train_vae(net: torch.nn.Module, train: sp.csr_matrix, validation: HeldOut | None, config: TrainingConfig,
               device: torch.device, *, on_epoch: EpochCallback | None, scorer) -> TrainingResult:
    ctx = parallel_context()
    if ctx is not None:
        check_parallel_device(ctx, device)
    is_main = ctx is None or ctx.is_main
    active = _active_users(train, validation)
    data = DeviceCSR(train, device)
    active_t = torch.from_numpy(active).to(device)
    steps_per_epoch = math.ceil(len(active) / config.batch_size)
    schedule = BetaSchedule(config.anneal, config.epochs * steps_per_epoch)
    prepare_item_training(net, train, config, ctx)
    optimizer = make_optimizer(net.parameters(), config)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    state = {"epoch": 0, "step": 0, "history": [], "best_state": None, "best_epoch": None,
             "best_score": None, "best_beta": None, "since_best": 0, "stopped_early": False}
    warn_degenerate(config)
    precision = resolve_precision(config.precision, device)
    logger.info("precision: %s (asked: %s, device %s)", precision, config.precision, device)
    # The run's identity, stored in the checkpoint and compared on resume (hashing the data costs one pass).
    fingerprint = run_fingerprint(net, config, train, validation) if config.checkpoint else None
    if resume_agreed(config, ctx):
        _load_checkpoint(config.checkpoint, net, optimizer, schedule, generator, state, device, fingerprint, config)
        logger.info("resumed from %s at epoch %d", config.checkpoint, state["epoch"])
        warn_if_finished(config, state)
    model = None
    if ctx is not None:
        # Ranks hold identical weights (same seed; DDP also broadcasts rank 0's at construction).
        model = torch.nn.parallel.DistributedDataParallel(_PerUserTerms(net))

    bar = tqdm(total=config.epochs * steps_per_epoch, initial=state["epoch"] * steps_per_epoch,
               disable=None if (config.progress and is_main) else True, unit="batch", dynamic_ncols=True)
    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["stopped_early"]:
                break
            net.train()
            started = time.perf_counter()
            sums = torch.zeros(3, device=device, dtype=torch.float64)
            order = active_t[torch.randperm(len(active_t), generator=generator, device=device)]
            noise = None if ctx is None else rank_noise_generator(config.seed, epoch, ctx, device)
            first = None
            for batch in order.split(config.batch_size):
                beta = schedule.beta(state["step"])
                if ctx is None:
                    parts = train_step(net, optimizer, data.rows(batch), beta, generator, device, precision)
                    detached = torch.stack([parts["loss"].detach(), parts["nll"].detach(), parts["kl"].detach()])
                    batch_sums = detached.double() * len(batch)
                else:
                    batch_sums = parallel_train_step(model, optimizer, data.rows(shard_batch(batch, ctx)), beta,
                                                     len(batch), noise, ctx, device, precision).double()
                sums += batch_sums
                if first is None:
                    first = (batch_sums, len(batch))
                state["step"] += 1
                bar.update(1)
            loss, nll, kl = (all_reduce_sum(sums, ctx) / len(active)).tolist()
            if "first_loss" not in state:
                state["first_loss"] = first_batch_loss(first, ctx)
            # Before validation and the checkpoint: diverged weights are neither selected nor saved.
            problem = divergence(loss, state["first_loss"])
            if problem:
                raise _diverged(epoch, problem, config, state, net, ctx, lambda st: _vae_result(st, schedule))
            row = {"epoch": epoch, "step": state["step"], "precision": precision, "beta": schedule.beta(state["step"]),
                   "loss": loss, "nll": nll, "kl": kl, "train_seconds": time.perf_counter() - started}
            postfix = {"-elbo": f"{loss:.2f}", "nll": f"{nll:.2f}", "kl": f"{kl:.2f}", "beta": f"{row['beta']:.3f}"}
            if validation is not None and (epoch % config.eval_every == 0 or epoch == config.epochs):
                score = _validate_epoch(net, scorer, validation, config, epoch, state, row, postfix)
                schedule.observe(score, row["beta"])
            if _end_epoch(state, epoch, row, postfix, bar, config, is_main,
                          lambda: _save_checkpoint(config.checkpoint, net, optimizer, schedule, generator, state,
                                                   fingerprint), on_epoch):
                break
    finally:
        bar.close()
    _restore_best(net, state, ctx)
    return _vae_result(state, schedule)


def _vae_result(state: dict, schedule: BetaSchedule) -> TrainingResult:
    return TrainingResult(
        history=pd.DataFrame(state["history"]),
        best_epoch=state["best_epoch"],
        best_score=state["best_score"],
        best_beta=state["best_beta"],
        final_beta=schedule.beta(state["step"]),
        steps=state["step"],
        stopped_early=state["stopped_early"],
    )


# ---------------------------------------------------------------------- checkpoints
def _plain(value):
    """Configs as plain containers (tuples -> lists, dataclasses -> dicts) for files and comparison."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def data_fingerprint(*matrices: sp.spmatrix | None) -> str:
    """sha256 over the shape, indptr, indices and values of CSR matrices (order and dtype independent of storage)."""
    digest = hashlib.sha256()
    for matrix in matrices:
        if matrix is None:
            digest.update(b"none")
            continue
        m = sp.csr_matrix(matrix)
        if not m.has_sorted_indices:
            m = m.sorted_indices()
        digest.update(np.asarray(m.shape, dtype=np.int64).tobytes())
        for array, dtype in ((m.indptr, np.int64), (m.indices, np.int64), (m.data, np.float64)):
            digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()


def run_fingerprint(net: torch.nn.Module, config: TrainingConfig, train: sp.csr_matrix,
                    validation: HeldOut | None) -> dict:
    """What identifies a training run, stored in its checkpoint and compared on resume.

    The network's config and parameter shapes, the training config (all of it;
    :data:`RESUMABLE_FIELDS` and ``lr`` may differ on resume) and sha256
    fingerprints of the training matrix and of the validation users.
    """
    net_config = getattr(net, "config", None)
    return {
        "model": _plain(net_config) if dataclasses.is_dataclass(net_config) else None,
        "training": _plain(config),
        "shapes": {k: list(v.shape) for k, v in net.state_dict().items()},
        "train_data": data_fingerprint(train),
        "train_shape": list(train.shape),
        "validation_data": None if validation is None else data_fingerprint(validation.fold_in, validation.target),
    }


#: config fields added after checkpoint format 2, with the value a run recorded without them had:
#: an older checkpoint resumes when the current run keeps that value.
_ADDED_FIELDS = {
    "model": {"item_chunk": None, "sampled_softmax": None, "negative_sampler": "uniform", "negative_power": 0.75},
    "training": {"sparse_item_updates": False, "min_epochs": 0, "item_moments": "fp32"},
}


def _with_added_fields(saved: dict, current: dict, part: str) -> dict:
    return {**{k: v for k, v in _ADDED_FIELDS[part].items() if k in current}, **saved}


def _differences(saved: dict, current: dict) -> tuple[list[str], float | None]:
    """The fields that make a checkpoint another run's, and the checkpoint's lr when only that changed."""
    diffs = []
    model = current.get("model") or {}
    saved_model = _with_added_fields(saved.get("model") or {}, model, "model")
    diffs += [f"model {k} ({saved_model.get(k)!r} in the checkpoint, {model.get(k)!r} now)"
              for k in sorted(set(saved_model) | set(model)) if saved_model.get(k) != model.get(k)]
    training = current["training"]
    saved_training = _with_added_fields(saved["training"], training, "training")
    diffs += [f"{k} ({saved_training.get(k)!r} in the checkpoint, {training.get(k)!r} now)"
              for k in sorted(set(saved_training) | set(training))
              if k not in RESUMABLE_FIELDS and k != "lr" and saved_training.get(k) != training.get(k)]
    if not diffs and saved["shapes"] != current["shapes"]:
        diffs.append("network parameter shapes")
    if saved["train_shape"] != current["train_shape"]:
        diffs.append(f"training data ({saved['train_shape'][0]}x{saved['train_shape'][1]} in the checkpoint, "
                     f"{current['train_shape'][0]}x{current['train_shape'][1]} now)")
    elif saved["train_data"] != current["train_data"]:
        diffs.append("training data (same shape, other interactions)")
    if saved["validation_data"] != current["validation_data"]:
        diffs.append("validation users")
    old_lr = saved_training.get("lr")
    return diffs, (old_lr if old_lr != training.get("lr") else None)


def _read_checkpoint(path, fmt, keys: tuple[str, ...], fingerprint: dict | None) -> tuple[dict, float | None]:
    """A checked checkpoint payload and its lr when the run now asks for another one.

    Refuses a damaged file (:class:`ModelFileError`), an old format without a run
    record, and a checkpoint of another run (:class:`CheckpointMismatchError`).
    """
    payload = read_torch_payload(path, fix=CHECKPOINT_FIX, what="training checkpoint")
    found = payload.get("format")
    if found != fmt:
        older = "an older recvae's (format {found!r}, without a record of its run)".format(found=found)
        what = older if found in (1, "recvae.recvae-checkpoint/1") else f"not one this trainer writes (format {str(found)[:40]!r})"
        raise ModelFileError(f"{path}: this training checkpoint is {what}; {CHECKPOINT_FIX}")
    require_keys(payload, ("fingerprint", "model", "generator", "state", "best_state", *keys), path,
                 "training checkpoint", CHECKPOINT_FIX)
    saved = payload["fingerprint"]
    if not isinstance(saved, dict) or not {"training", "shapes", "train_data", "train_shape",
                                           "validation_data"} <= set(saved):
        raise ModelFileError(f"{path}: the checkpoint's run record is incomplete; {CHECKPOINT_FIX}")
    if fingerprint is None:
        return payload, None
    diffs, old_lr = _differences(saved, fingerprint)
    if diffs:
        raise CheckpointMismatchError(
            f"{path}: the checkpoint belongs to another run: it differs in [{'; '.join(diffs)}]; "
            "delete the checkpoint or start a new run (another checkpoint path, or resume=False)"
        )
    epochs = saved["training"].get("epochs")
    if epochs != fingerprint["training"]["epochs"]:
        logger.info("resuming %s (planned for %s epochs) to %s epochs", path, epochs,
                    fingerprint["training"]["epochs"])
    return payload, old_lr


def _apply_lr(path, optimizers, old_lr: float | None, lr: float) -> None:
    """The checkpoint's optimizer state carries its own lr: set the requested one, and say so."""
    if old_lr is None:
        return
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    logger.warning("resuming %s with lr %g instead of the checkpoint's %g: the optimizer continues at lr %g",
                   path, lr, old_lr, lr)


def warn_if_finished(config: TrainingConfig, state: dict) -> None:
    """A resumed run that has nothing left to train says so (the best weights are returned as they are)."""
    if state["epoch"] >= config.epochs:
        logger.warning("the checkpoint %s already reached epoch %d and %d epochs were asked for: nothing is trained; "
                       "returning its best weights (epoch %s); raise epochs to train further",
                       config.checkpoint, state["epoch"], config.epochs, state["best_epoch"])
    elif state["stopped_early"]:
        logger.warning("the checkpoint %s stopped early at epoch %d (patience %s): nothing is trained; returning "
                       "its best weights (epoch %s); delete the checkpoint to train again",
                       config.checkpoint, state["epoch"], config.patience, state["best_epoch"])


def _restore_state(path, payload: dict, net, generator, state) -> None:
    """Load the checkpoint's weights, generator and bookkeeping (shapes were checked by the fingerprint)."""
    try:
        net.load_state_dict(payload["model"])
        generator.set_state(payload["generator"].cpu())
        saved_state = copy.deepcopy(payload["state"])
        best = payload["best_state"]
        best = None if best is None else {k: v.to("cpu") for k, v in best.items()}
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise ModelFileError(f"{path}: the checkpoint's state does not fit this network "
                             f"({' '.join(str(err).split())[:160]}); {CHECKPOINT_FIX}") from None
    state.update(saved_state)
    state["best_state"] = best


def _save_checkpoint(path, net, optimizer, schedule, generator, state, fingerprint: dict) -> None:
    """Write the checkpoint atomically: a temp file beside it, then ``os.replace`` (``Path.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "state": {k: v for k, v in state.items() if k != "best_state"},
        "best_state": state["best_state"],
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _load_checkpoint(path, net, optimizer, schedule, generator, state, device, fingerprint: dict | None,
                     config: TrainingConfig) -> None:
    """Resume from ``path``: checked (see :func:`_read_checkpoint`), the requested lr applied."""
    payload, old_lr = _read_checkpoint(path, _CHECKPOINT_FORMAT, ("optimizer", "schedule"), fingerprint)
    _restore_state(path, payload, net, generator, state)
    try:
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelFileError(f"{path}: the checkpoint's optimizer state does not fit this network "
                             f"({' '.join(str(err).split())[:160]}); {CHECKPOINT_FIX}") from None
    _apply_lr(path, [optimizer], old_lr, config.lr)
