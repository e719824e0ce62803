"""What a training run is asked and what it returns: :class:`TrainingConfig` (checked when it is made,
against the precisions and item-moment storages below), :class:`TrainingResult`, the type of the
loops' ``on_epoch`` callback, and :class:`RecvaeWarning` for settings that train but are probably
mistakes (:func:`warn_degenerate`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from recvae.nn.annealing import AnnealConfig, anneal_config
from recvae.nn.hyperparams import (apply_rules, choice, device_name, flag, integer, number, optional, path_or_none,
                                   rule)

__all__ = [
    "EpochCallback",
    "RecvaeWarning",
    "TrainingConfig",
    "TrainingResult",
    "PRECISIONS",
    "ITEM_MOMENTS",
    "warn_degenerate",
]

#: ``on_epoch(epoch, validation score)``: called by the loops after each validated epoch
#: (see :func:`recvae.training.train_vae`).
EpochCallback = Callable[[int, float], None]

PRECISIONS = ("auto", "fp32", "bf16")
ITEM_MOMENTS = ("fp32", "bf16")


class RecvaeWarning(UserWarning):
    """A setting recvae can run with but that is probably a mistake (e.g. a learning rate above 1)."""


@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Defaults follow Liang et al. (Adam 1e-3, batch 500, 200 epochs).

    Every field is checked when the config is made (:mod:`recvae.nn.hyperparams`: integers
    refuse 2.5 and bools, numbers are finite, ``lr`` > 0, flags are bools, strings come from
    their known sets); a bad one raises ``HyperParameterError`` (a ``ValueError``) naming it.

    Attributes:
        epochs, batch_size, lr: as in the paper. ``batch_size`` is the global batch:
            under data-parallel training each rank takes a slice of it.
        weight_decay: L2 weight decay on weight matrices (not biases); 0 for
            Mult-VAE, 0.01 / batch_size for Mult-DAE.
        anneal: the beta schedule (see :class:`AnnealConfig`).
        patience: stop after this many evaluations without a better validation
            score (default 20: a run whose best epoch is 9 stops at epoch 29 instead of
            training all 200; runs of 20 epochs or fewer never stop early). None trains
            every epoch (Liang et al.'s protocol); the best weights are kept either way.
        min_epochs: patience never stops training before this epoch (a model whose
            validation score dips early, e.g. :class:`recvae.models.JointVAE` while its VAE
            half is untrained, is not cut off inside the dip).
        eval_k: validation metric is NDCG@eval_k.
        eval_every: validate every this many epochs.
        eval_batch_size: validation users scored at once (memory: eval_batch_size x items scores).
        seed: seeds initialisation, shuffling, dropout and noise (data-parallel:
            every rank shuffles alike; dropout and noise streams differ per rank).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"auto"`` (the default: bf16 where the hardware computes it
            natively -- CUDA devices with bf16 and CPUs with AVX512-BF16 or AMX --
            fp32 elsewhere, see :func:`resolve_precision`), ``"fp32"`` or ``"bf16"`` (autocast of matrix products; the
            loss and log-softmax stay in fp32).
        progress: show a tqdm progress bar.
        history_csv: write the per-epoch history there after each epoch.
        history_jsonl: append each epoch's history row there as one JSON line as training goes
            (``recvae train --log-file``: a job's progress for a scheduler, ``tail -f`` or a dashboard).
        checkpoint: a file written (atomically) after each epoch; with
            ``resume=True`` training continues from it when it exists.
        resume: continue from ``checkpoint`` when it exists (a killed run picks up where it stopped).
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
    patience: int | None = 20
    min_epochs: int = 0
    eval_k: int = 100
    eval_every: int = 1
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True
    history_csv: str | None = None
    history_jsonl: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    sparse_item_updates: bool = False
    item_moments: str = "fp32"
    retain_host_memory: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "anneal", anneal_config(self.anneal))
        apply_rules(self, _TRAINING_RULES)
        if self.item_moments != "fp32" and not self.sparse_item_updates:
            raise ValueError(f"item_moments={self.item_moments!r} is the storage of the sparse item updates' "
                             "moments; set sparse_item_updates=True with it")
        if self.resume and not self.checkpoint:
            raise ValueError("resume=True needs checkpoint=<path>")


#: each field's type and range (see :mod:`recvae.nn.hyperparams`); ``anneal`` is an :class:`AnnealConfig`.
_TRAINING_RULES = {
    "epochs": rule(integer, minimum=1),
    "batch_size": rule(integer, minimum=1),
    "lr": rule(number, minimum=0.0, low_open=True),
    "weight_decay": rule(number, minimum=0.0),
    "patience": optional(rule(integer, minimum=1)),
    "min_epochs": rule(integer, minimum=0),
    "eval_k": rule(integer, minimum=1),
    "eval_every": rule(integer, minimum=1),
    "eval_batch_size": rule(integer, minimum=1),
    "seed": rule(integer, minimum=0),
    "device": device_name,
    "precision": rule(choice, options=PRECISIONS),
    "progress": flag,
    "history_csv": path_or_none,
    "history_jsonl": path_or_none,
    "checkpoint": path_or_none,
    "resume": flag,
    "sparse_item_updates": flag,
    "item_moments": rule(choice, options=ITEM_MOMENTS),
    "retain_host_memory": flag,
}


def warn_degenerate(config: TrainingConfig) -> None:
    """Warn (:class:`RecvaeWarning`) about settings that train but almost surely diverge."""
    if config.lr > 1:
        warnings.warn(f"lr={config.lr:g} is above 1: Adam at that rate almost always diverges "
                      "(recvae's defaults are 1e-3 for Mult-VAE / Mult-DAE, 5e-4 for RecVAE)", RecvaeWarning,
                      stacklevel=3)


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
    #: after the epochs, each exact refinement step (``recvae.training.refine``); None when there were none.
    refinement: pd.DataFrame | None = None
