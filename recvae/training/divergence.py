"""When training has diverged, and the stop it makes: an epoch whose mean loss is not finite, or
exceeds the run's first batch's by :data:`DIVERGENCE_FACTOR`, ends training with a
:class:`TrainingDivergedError` and the best weights so far restored. Both loops check each epoch
before it is validated or checkpointed.
"""

from __future__ import annotations

import math

import torch

from recvae.runtime.distributed import all_reduce_sum
from recvae.training.config import TrainingConfig, TrainingResult
from recvae.training.validation import _restore_best

__all__ = ["DIVERGENCE_FACTOR", "TrainingDivergedError", "divergence", "first_batch_loss"]

#: an epoch whose mean loss exceeds the run's first batch's by this factor has diverged (see :func:`divergence`).
DIVERGENCE_FACTOR = 100.0


class TrainingDivergedError(RuntimeError, FloatingPointError):
    """Training stopped because the loss became non-finite or exploded (see :func:`divergence`).

    ``result`` is the :class:`TrainingResult` of the epochs before the divergence;
    the network holds the best validated weights (or, when no epoch was validated,
    the last ones). Also a ``FloatingPointError``, which recvae raised before.
    """

    def __init__(self, message: str, result: TrainingResult) -> None:
        super().__init__(message)
        self.result = result


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
        f"training diverged at epoch {epoch} ({problem}): {_advice(config)} and train again; {kept}",
        result(state),
    )


def _advice(config: TrainingConfig) -> str:
    """What to lower: the learning rate, and the KL weight's cap too when it is above the ELBO's 1
    (a beta that large can be what exploded). RecVAE's per-user beta does not use the schedule."""
    anneal = config.anneal
    if anneal.kind != "auto" and anneal.cap > 1:
        return (f"lower lr (now {config.lr:g}) or the KL weight's cap anneal_cap (--beta-cap, now {anneal.cap:g}; "
                "the ELBO's is 1, Mult-VAE's 0.2)")
    return f"lower lr (now {config.lr:g})"
