"""A run's bookkeeping between epochs, alike in both loops: the state a run starts from (and a
checkpoint saves), and the end of an epoch: its row in the history, the progress bar, the history
CSV and the checkpoint (rank 0 only), the ``on_epoch`` callback, and the early stop.
"""

from __future__ import annotations

import json
import logging
import math

import pandas as pd

from recvae.training.config import EpochCallback, TrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["epoch_line"]


def new_state() -> dict:
    """A run's bookkeeping before its first epoch (a resumed run then loads the checkpoint's)."""
    return {"epoch": 0, "step": 0, "history": [], "best_state": None, "best_epoch": None,
            "best_score": None, "best_beta": None, "since_best": 0, "stopped_early": False}


def epoch_line(row: dict, epochs: int, eval_k: int) -> str:
    """One epoch as a log line for unattended jobs: loss, beta, the validation metric, seconds and an ETA
    (this epoch's seconds times the epochs left; early stopping may end sooner)."""
    seconds = row.get("train_seconds", 0.0) + row.get("eval_seconds", 0.0)
    score = row.get(f"val_ndcg@{eval_k}")
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['loss']:.4f}", f"beta {row['beta']:.3f}",
             f"val ndcg@{eval_k} {score:.4f}" if score is not None else None, f"{seconds:.1f} s",
             f"eta {_duration(seconds * (epochs - row['epoch']))}" if row["epoch"] < epochs else None]
    return ", ".join(p for p in parts if p)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _append_line(path: str, row: dict) -> None:
    """One epoch as a JSON line, appended and flushed so a reader sees it at once (numbers as plain floats)."""
    record = {k: _json_number(v.item() if hasattr(v, "item") else v) for k, v in row.items()}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _end_epoch(state: dict, epoch: int, row: dict, postfix: dict, bar, config: TrainingConfig, is_main: bool,
               save_checkpoint, on_epoch: EpochCallback | None = None) -> bool:
    """Record an epoch: history, progress bar, history CSV and checkpoint (rank 0 only), then
    ``on_epoch(epoch, validation score)`` when the epoch was validated.

    Returns True when early stopping ends training.
    """
    # wall time to this epoch, training and validation, summed over the epochs (a resumed run's too):
    # the time-to-quality curve of the history and the report
    before = state["history"][-1].get("elapsed_seconds", 0.0) if state["history"] else 0.0
    row["elapsed_seconds"] = before + row.get("train_seconds", 0.0) + row.get("eval_seconds", 0.0)
    state["history"].append(row)
    state["epoch"] = epoch
    bar.set_postfix(postfix, refresh=False)
    bar.set_description(f"epoch {epoch}/{config.epochs}")
    if is_main and bar.disable and config.progress:
        logger.info("%s", epoch_line(row, config.epochs, config.eval_k))  # no bar (not a terminal): one line instead
    if config.history_csv and is_main:
        pd.DataFrame(state["history"]).to_csv(config.history_csv, index=False)
    if config.history_jsonl and is_main:
        _append_line(config.history_jsonl, row)
    if config.checkpoint and is_main:
        save_checkpoint()
    score = row.get(f"val_ndcg@{config.eval_k}")
    if on_epoch is not None and score is not None:
        on_epoch(epoch, score)
    if state["stopped_early"]:
        logger.info("early stop at epoch %d (best epoch %s)", epoch, state["best_epoch"])
        return True
    return False
