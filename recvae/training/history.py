"""A run's bookkeeping between epochs, alike in both loops: the state a run starts from (and a
checkpoint saves), and the end of an epoch: its row in the history, the progress bar, the history
CSV and the checkpoint (rank 0 only), the ``on_epoch`` callback, and the early stop.
"""

from __future__ import annotations

import logging

import pandas as pd

from recvae.training.config import EpochCallback, TrainingConfig

logger = logging.getLogger(__name__)

__all__: list[str] = []


def new_state() -> dict:
    """A run's bookkeeping before its first epoch (a resumed run then loads the checkpoint's)."""
    return {"epoch": 0, "step": 0, "history": [], "best_state": None, "best_epoch": None,
            "best_score": None, "best_beta": None, "since_best": 0, "stopped_early": False}


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
