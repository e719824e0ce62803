"""Checkpoints and resume: what identifies a run (:func:`run_fingerprint`, stored in its
checkpoint), the checks a checkpoint passes before a run resumes from it (its format, its run
record, the fields that may change: :data:`RESUMABLE_FIELDS` and ``lr``), restoring its weights,
generator and bookkeeping, and the Mult-VAE loop's own checkpoint (one optimizer and the beta
schedule; RecVAE's, with two optimizers, is written by :mod:`recvae.training.rec_vae` through the
same checks).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recvae.data.splits import HeldOut
from recvae.data.writing import atomic_file
from recvae.runtime.distributed import DistributedContext, all_reduce_sum
from recvae.runtime.storage import CHECKPOINT_FIX, ModelFileError, read_torch_payload, require_keys
from recvae.training.config import TrainingConfig

logger = logging.getLogger(__name__)

__all__ = ["CheckpointMismatchError", "RESUMABLE_FIELDS", "run_fingerprint", "data_fingerprint"]

# 2: the checkpoint records the run it belongs to (see run_fingerprint); format 1 did not.
_CHECKPOINT_FORMAT = 2

#: TrainingConfig fields a resumed run may change: how long and how it runs, where it
#: writes, and how often and patiently it validates; none of them alters the
#: trajectory of the weights. ``lr`` may change too, with a warning (it does).
RESUMABLE_FIELDS = frozenset({"epochs", "progress", "history_csv", "history_jsonl", "checkpoint", "resume", "device", "patience",
                              "min_epochs", "eval_every", "eval_batch_size", "retain_host_memory"})


class CheckpointMismatchError(ValueError):
    """A checkpoint asked to resume belongs to another run (other data, architecture or settings)."""


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


def _write_atomically(path, payload: dict) -> None:
    """Write a checkpoint atomically: a fresh temporary sibling (``O_EXCL | O_NOFOLLOW``, an
    unpredictable name: a link planted beside it is never followed), fsynced, then ``os.replace``.

    A failed write leaves the previous checkpoint as it was and no temporary file; a full disk
    is one line (:class:`recvae.data.writing.DiskFullError`, also when torch words it
    ``unexpected pos``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        torch.save(payload, handle)


def _save_checkpoint(path, net, optimizer, schedule, generator, state, fingerprint: dict) -> None:
    """Write the Mult-VAE loop's checkpoint (atomically, see :func:`_write_atomically`)."""
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
    _write_atomically(path, payload)


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
