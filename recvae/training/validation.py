"""Model selection on the validation users, shared by both loops: an epoch is scored the one way
:func:`recvae.evaluation.evaluate_model` scores any model (fp32, the model's own scoring or a
:class:`NetScorer`); the best epoch's weights are kept, patience counts the evaluations since it
(early stopping), and the best weights are loaded back when training ends.
"""

from __future__ import annotations

import time

import scipy.sparse as sp
import torch

from recvae.data.splits import HeldOut
from recvae.evaluation import evaluate_model
from recvae.training.config import TrainingConfig
from recvae.training.device import full_precision, sparse_rows

__all__ = ["NetScorer"]


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
