"""What an earlier run or a tuning carries into a refit: the model, its parameters, the chosen epoch and the KL
schedule that epoch had reached.

A refit on every user (``SplitSpec(heldout_users=0)``) has no validation users to choose its epoch, so
it trains for the earlier run's best epoch. Its KL weight must follow the same curve over epochs and
end where the chosen epoch was: the annealing ramp follows the *planned* updates, and a refit plans
fewer epochs (the best one, not the budget) over more users, so left alone its beta would reach the
cap far sooner than the chosen model's did. :func:`carried_anneal` rewrites the schedule so that it
does not.

:func:`tuned_params` reads the model and parameters of a tuning directory (``recvae tune -o DIR``),
its ``best.json`` or a run directory, for ``Run.fit(model, params=...)``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from recvae.data.tables import TABLE_SUFFIXES
from recvae.runs.errors import RunError

__all__ = ["BEST_FILE", "TUNE_FORMAT", "earlier_record", "tuned_params", "carried_anneal", "best_record",
           "tuning_outputs", "write_best"]

#: The file of a tuning directory with the chosen parameters (keys as in a run's config.json).
BEST_FILE = "best.json"
TUNE_FORMAT = "recvae-tune/1"
_BOOKKEEPING = ("checkpoint", "resume", "history_csv", "history_jsonl", "progress")


def earlier_record(path: str | os.PathLike) -> dict:
    """The record of an earlier fit: a run's ``config.json``, a tuning directory's ``best.json``, or that file.

    Raises RunError (one line) when ``path`` is none of them or cannot be read.
    """
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "config.json", path / BEST_FILE]
    for candidate in candidates:
        if candidate.is_file():
            try:
                record = json.loads(candidate.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise RunError(f"{candidate}: cannot be read ({' '.join(str(err).split())}); "
                               "tune or train again") from None
            if not isinstance(record, dict) or "model" not in record:
                raise RunError(f"{candidate}: not a run's config.json or a tuning's {BEST_FILE}")
            _refuse_failed(candidate.parent)
            return record
    raise RunError(f"{path}: not a run directory ('recvae train -o') or a tuning directory ('recvae tune -o')")


def _refuse_failed(run_dir: Path) -> None:
    """A run whose training failed (diverged) has no epoch or parameters worth carrying."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # a tuning directory has none; a damaged run is refused when it is loaded
    if isinstance(metrics, dict) and metrics.get("status", "success") != "success":
        reason = " ".join(str(metrics.get("error", "")).split())[:200]
        raise RunError(f"{run_dir}: that run failed ({reason or metrics.get('status')}); nothing to carry from it: "
                       "train it again, or give the epochs and parameters yourself")


def tuned_params(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(model name, parameters) of a tuning directory, its ``best.json`` or a run directory.

    The parameters are every fixed and tuned one, without the epoch count (a refit on every user
    takes the chosen epoch with ``epochs_from``) and without bookkeeping (checkpoint, progress).
    """
    record = earlier_record(path)
    params = {k: v for k, v in (record.get("params") or {}).items() if k not in ("epochs", *_BOOKKEEPING)}
    return str(record["model"]), params


def best_record(model_name: str, params: dict, estimator, *, metric: str, score: float) -> dict:
    """A tuning's ``best.json``: the chosen model and parameters, and the epoch, beta and steps it reached."""
    training = getattr(estimator, "training_", None)
    history = getattr(training, "history", None)
    epochs_trained = 0 if history is None else len(history)
    return {
        "format": TUNE_FORMAT,
        "command": "tune",
        "model": model_name,
        "params": {k: v for k, v in params.items() if k not in _BOOKKEEPING},
        "model_params": _model_params(estimator),
        "metric": metric,
        "score": score,
        "best_epoch": getattr(training, "best_epoch", None),
        "best_beta": getattr(training, "best_beta", None),
        "steps_per_epoch": training.steps / epochs_trained if epochs_trained else None,
    }


def tuning_outputs(output: str | os.PathLike) -> tuple[Path, Path]:
    """Where a tuning writes (trials table, best.json): ``DIR/trials.csv`` and ``DIR/best.json`` for a
    directory, or (the older form) a table path and ``STEM.best.json`` beside it."""
    path = Path(output)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return path, path.with_name(f"{path.stem}.{BEST_FILE}")
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: is a file; give a directory for the tuning (or a .csv/.parquet trials table)")
    return path / "trials.csv", path / BEST_FILE


def write_best(path: Path, record: dict) -> None:
    """Write ``best.json`` whole or not at all (a temporary sibling renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(clean, handle, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _model_params(estimator) -> dict:
    try:
        params = estimator.get_params()
    except NotImplementedError:
        return {}
    return {k: v for k, v in params.items() if k not in _BOOKKEEPING}


def carried_anneal(record: dict, refit_epochs: int) -> tuple[dict | None, str]:
    """The refit's ``anneal`` parameter (None: keep the model's) and a sentence saying what was carried.

    ``record`` holds the earlier fit's ``model_params`` (its ``anneal`` and planned ``epochs``),
    ``best_epoch`` e*, ``best_beta`` and ``steps_per_epoch``. A linear ramp scaled to the run
    (``total_steps`` None) reaching ``cap`` after a fraction r of E planned epochs gives beta(e) =
    cap * min(1, e / (r E)); the refit plans e* epochs, so it keeps that curve with cap' = beta(e*)
    and r' = 1 while e* was inside the ramp, else cap and r' = r E / e*. A ramp in absolute steps
    is turned into the same curve over epochs with the earlier steps per epoch; an ``auto``
    schedule (beta frozen at the best evaluation) becomes a linear ramp to that beta.
    Constant schedules need nothing; cyclical ones are kept as they are (said so).
    """
    earlier = record.get("model_params") or {}
    anneal, planned, best = earlier.get("anneal"), earlier.get("epochs"), record.get("best_epoch")
    if not isinstance(anneal, dict) or not planned or not best or refit_epochs != best:
        return None, ""
    kind, cap, ramp = anneal.get("kind"), float(anneal.get("cap", 0.0)), float(anneal.get("ramp_fraction", 0.85))
    best_beta = record.get("best_beta")
    if kind == "constant":
        return None, ""
    if kind == "cyclical":
        return None, "anneal: the cyclical schedule restarts over the refit's epochs (not carried)"
    if kind == "auto":
        if best_beta is None:
            return None, ""
        new = {**anneal, "kind": "linear", "cap": float(best_beta), "total_steps": None}
        return new, f"anneal: linear to beta {best_beta:.3f} (the auto schedule's beta at epoch {best})"
    ramp_epochs = ramp * planned
    if anneal.get("total_steps") is not None:
        steps_per_epoch = record.get("steps_per_epoch")
        if not steps_per_epoch:
            return None, ""
        ramp_epochs = cap * float(anneal["total_steps"]) / float(steps_per_epoch)
    if best <= ramp_epochs:
        new_cap, new_ramp = cap * best / ramp_epochs, 1.0
    else:
        new_cap, new_ramp = cap, ramp_epochs / best
    new = {**anneal, "kind": "linear", "cap": new_cap, "ramp_fraction": new_ramp, "total_steps": None}
    return new, (f"anneal: beta ramps to {new_cap:.3f} over {new_ramp:.0%} of the {best} epochs, as the chosen "
                 f"epoch {best} of {planned} planned had it")
