"""The memory a VAE fit will take, planned before its first allocation, and the knob that fits.

The OOM killer ends a process with no message, so a fit is checked first
(:func:`recvae.runtime.memory.require_memory`) against the peak of what it allocates:

- the catalogue-sized matrices (:class:`ItemMatrix`: the input layer, the output layer,
  RecVAE's frozen prior encoder), float32, each with its gradient and Adam's two moments when
  trained (a sparse-gradient matrix under ``sparse_item_updates`` has a gradient of the
  batch's rows only; its moments are catalogue-sized all the same, half under ``item_moments='bf16'``);
- the output layer's batch x items logits with the softmax, its gradient and their
  temporaries (:data:`LOGIT_BUFFERS` float32 buffers per cell); batch x ``item_chunk``
  under ``item_chunk``, batch x (positives + S) under ``sampled_softmax``;
- the training matrix on the device (float32 values, int64 columns) and per-user state
  (RecVAE's cached prior posteriors);
- validation: a batch of ``eval_batch_size`` users ranked within the harness's budget
  (:data:`recvae.evaluation.DEFAULT_MAX_MEMORY`); it runs between epochs, so the plan counts
  the larger of it and the batch's logits, and the copy of the best epoch's weights it keeps.

The figures were measured against the real peak RSS (``experiments/bench_catalogue_limits.py``
and ``tests/test_fit_memory.py``): the plan is an upper bound of a fit's growth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from recvae.nn.chunked import CHUNKED_LIKELIHOODS
from recvae.evaluation.ranking import DEFAULT_MAX_MEMORY, SCORE_CELL_BYTES, TOP_K_CELL_BYTES
from recvae.runtime import memory
from recvae.runtime.memory import describe_bytes, require_memory
from recvae.training.config import TrainingConfig

__all__ = ["ItemMatrix", "LOGIT_BUFFERS", "RUNTIME_SCRATCH", "fit_memory_parts", "check_fit_memory", "FitOption",
           "fit_options"]

#: float32 buffers per (user, item) cell of a training batch's output: the logits, the
#: log-softmax, the gradient with respect to the logits and the temporaries of the softmax's
#: backward (measured: 4-5 live at once on the CPU).
LOGIT_BUFFERS = 6
_BYTES = 4
#: What a fit allocates besides its planned buffers, whatever the catalogue: the allocator's per-thread
#: arenas and the kernels' scratch (measured 60-110 MiB above the parts on the CPU).
RUNTIME_SCRATCH = 128 * 2**20


@dataclass(frozen=True)
class ItemMatrix:
    """A catalogue-sized parameter: ``width`` float32 values per item (columns and bias).

    ``trained``: it gets a gradient and Adam's moments. ``sparse_grad``: under
    ``sparse_item_updates`` its gradient holds the batch's rows only.
    """

    name: str
    width: int
    trained: bool = True
    sparse_grad: bool = False


def fit_memory_parts(n_users: int, n_items: int, nnz: int, matrices: list[ItemMatrix], training: TrainingConfig,
                     *, n_validation: int = 0, output_width: int, item_chunk: int | None = None,
                     sampled_softmax: int | None = None, outputs_per_item: int = 1,
                     user_floats: int = 0) -> dict[str, float]:
    """The planned peak of a VAE fit, by part (bytes), for :func:`check_fit_memory`.

    Args:
        n_users, n_items, nnz: the training matrix's shape and nonzeros.
        matrices: the net's catalogue-sized parameters.
        training: the training config (batch size, sparse item updates, eval batch size).
        n_validation: validation users (0: no validation, no best-weights copy).
        output_width: the output layer's input width (its activations feed the logits).
        item_chunk, sampled_softmax: the output layer's NLL, as in the configs.
        outputs_per_item: decoder outputs per item (2 for ``gaussian_learned``).
        user_floats: float32 values kept per training user (RecVAE's prior posteriors).
    """
    items, batch = int(n_items), int(training.batch_size)
    sparse = training.sparse_item_updates
    moment_bytes = 2 if training.item_moments == "bf16" else 4
    weights = sum(_BYTES * items * m.width for m in matrices)
    grads = moments = 0
    for m in matrices:
        if not m.trained:
            continue
        lazy = sparse and m.sparse_grad
        moments += 2 * items * m.width * (moment_bytes if lazy else _BYTES)
        # A sparse gradient holds the batch's items' rows: at most every nonzero of the batch.
        rows = min(items, batch * max(1, nnz // max(1, n_users)) * 4) if lazy else items
        grads += _BYTES * rows * m.width
    if sampled_softmax is not None:
        positives = min(items, batch * max(1, 2 * nnz // max(1, n_users)))
        width = min(items, positives + int(sampled_softmax))
        logits = LOGIT_BUFFERS * _BYTES * batch * width + 3 * _BYTES * width * output_width
    else:
        width = min(items * outputs_per_item, int(item_chunk) if item_chunk is not None else items * outputs_per_item)
        logits = LOGIT_BUFFERS * _BYTES * batch * width
    kind = "item_chunk" if item_chunk else "sampled items" if sampled_softmax else "items"
    parts = {"item weights": weights, "gradients": grads, "Adam moments": moments,
             "training matrix": 12 * nnz + 8 * (n_users + 1) + _BYTES * user_floats * n_users}
    # Validation runs between epochs, once the batch's buffers are free: the larger of the two counts;
    # the best epoch's weights it copies stay through the epochs after it.
    scores = 0
    if n_validation:
        parts["best weights copy"] = weights
        users = min(int(n_validation), int(training.eval_batch_size))
        scores = min(DEFAULT_MAX_MEMORY, users * (items * SCORE_CELL_BYTES + training.eval_k * TOP_K_CELL_BYTES))
    if logits >= scores:
        parts[f"batch x {kind} logits"] = logits
    else:
        parts["validation scores"] = scores
    parts["runtime scratch"] = RUNTIME_SCRATCH
    return parts


@dataclass(frozen=True)
class FitOption:
    """A change that may make a fit fit: ``advice`` (e.g. ``"--param item_chunk=4096"``) and its plan."""

    advice: str
    parts: Mapping[str, float]


def check_fit_memory(what: str, parts: Mapping[str, float], options: list[FitOption],
                     fallback: str = "use --model sparse-ease (sparse item-item weights)",
                     available: int | None = None) -> int:
    """Refuse a fit whose planned peak does not fit, naming the first option that does and its need.

    ``options`` are tried in order; the first whose plan fits is named with its need
    (``"--param item_chunk=4096 would need 3.10 GiB"``), then ``fallback``. Returns the planned peak.

    Raises:
        recvae.runtime.memory.InsufficientMemoryError: one line (see :func:`require_memory`).
    """
    have = memory.available_memory_bytes() if available is None else int(available)
    need = sum(max(0.0, float(v)) for v in parts.values())
    fix = fallback
    if need > have:
        for option in options:
            cost = sum(max(0.0, float(v)) for v in option.parts.values())
            if cost <= have:
                fix = f"{option.advice} would need {describe_bytes(cost)}; or {fallback}"
                break
    return require_memory(what, parts, fix, available=have)


def fit_options(plan: Callable[[dict], Mapping[str, float]], *, n_items: int, likelihood: str,
                item_chunk: int | None, sampled_softmax: int | None, batch_size: int,
                available: int | None = None) -> list[FitOption]:
    """The knobs that shrink a VAE fit, each at the largest setting whose plan fits (in this order):
    ``item_chunk`` (exact), a smaller ``batch_size``, ``sampled_softmax`` with sparse item updates.

    ``plan(changes)`` is the fit's plan with flat parameter ``changes`` (e.g. ``{"item_chunk": 4096}``).
    """
    have = memory.available_memory_bytes() if available is None else int(available)
    tries: list[Callable[[], FitOption]] = []
    if item_chunk is None and sampled_softmax is None and likelihood in CHUNKED_LIKELIHOODS and n_items > _MIN_CHUNK:
        def chunked() -> FitOption:
            chunk, parts = _largest_fitting(1 << (int(n_items) // 2).bit_length() - 1, _MIN_CHUNK,
                                            lambda c: plan({"item_chunk": c}), have)
            return FitOption(f"--param item_chunk={chunk}", parts)
        tries.append(chunked)
    if batch_size > _MIN_BATCH:
        def smaller_batch() -> FitOption:
            size, parts = _largest_fitting(int(batch_size) // 2, _MIN_BATCH, lambda b: plan({"batch_size": b}), have)
            return FitOption(f"--param batch_size={size}", parts)
        tries.append(smaller_batch)
    if sampled_softmax is None and likelihood == "multinomial":
        tries.append(lambda: FitOption(
            f"--param sampled_softmax={_SAMPLED} --param sparse_item_updates=true",
            plan({"sampled_softmax": _SAMPLED, "item_chunk": None, "sparse_item_updates": True})))
    options = []
    for make in tries:
        try:
            options.append(make())
        except (ValueError, TypeError):
            continue  # a setting this model does not take (e.g. data-parallel sparse updates)
    return options


_MIN_CHUNK, _MIN_BATCH, _SAMPLED = 1024, 32, 1000


def _largest_fitting(value: int, floor: int, plan: Callable[[int], Mapping[str, float]],
                     have: int) -> tuple[int, Mapping[str, float]]:
    """The largest of ``value, value / 2, ...`` (not below ``floor``) whose plan fits in ``have``
    (``floor`` when none does), with its plan."""
    v = max(floor, int(value))
    while True:
        parts = plan(v)
        if sum(parts.values()) <= have or v <= floor:
            return v, parts
        v = max(floor, v // 2)
