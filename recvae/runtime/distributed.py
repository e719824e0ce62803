"""Data-parallel helpers: process group set-up, sharding of rows, gathering of results.

recvae trains data-parallel: every process (rank) holds the whole model, takes its
slice of each global batch, and the gradients are all-reduced (by
:class:`torch.nn.parallel.DistributedDataParallel` in :func:`recvae.training.train_vae`).
Evaluation shards the held-out users over the ranks and gathers the per-user metrics.

Launch with torchrun (one process per GPU, or a few per CPU machine)::

    torchrun --standalone --nproc-per-node 4 -m recvae ...          # one machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint host0:29400 --rdzv-id job42 -m recvae ...  # on each of 2 machines

or from Python with :func:`spawn` (local processes, used by the tests) or
:func:`launch_torchrun`. Inside each process :func:`setup_from_env` reads torchrun's
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
and initialises the process group: gloo on CPU, nccl on CUDA. Every function that
communicates is a collective: all ranks must call it, in the same order.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistributedContext",
    "setup_from_env",
    "teardown",
    "current_context",
    "parallel_context",
    "backend_for",
    "rank_device",
    "shard_range",
    "shard_batch",
    "batch_aligned_range",
    "gather_rows",
    "all_reduce_sum",
    "spawn",
    "torchrun_command",
    "launch_torchrun",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the process group.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: the device this rank computes on (``cuda:<local_rank>`` or ``cpu``).
        backend: ``gloo`` or ``nccl``.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes files and shows progress."""
        return self.rank == 0


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for a CUDA device, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _resolve(device: str | torch.device, local_rank: int) -> torch.device:
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
    return dev


def setup_from_env(device: str = "auto", *, timeout: datetime.timedelta | None = None) -> DistributedContext | None:
    """Initialise the process group from torchrun's environment; None for a single process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, through torch's ``env://``
    init, ``MASTER_ADDR`` / ``MASTER_PORT``). With ``WORLD_SIZE`` unset or 1 nothing
    is initialised and None is returned. ``device``: ``auto`` (CUDA when available),
    ``cpu`` or ``cuda``; on CUDA the rank uses GPU ``LOCAL_RANK`` and nccl, on CPU gloo.
    If a process group already exists its context is returned.
    """
    if dist.is_available() and dist.is_initialized():
        return current_context()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = _resolve(device, local_rank)
    backend = backend_for(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size, **kwargs)
    return DistributedContext(rank, world_size, local_rank, dev, backend)


def teardown() -> None:
    """Destroy the process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current_context() -> DistributedContext | None:
    """The context of the initialised process group, else None (also for world size 1)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = str(dist.get_backend())
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    return DistributedContext(rank, world_size, local_rank, device, backend)


def parallel_context() -> DistributedContext | None:
    """:func:`current_context` when there is more than one rank, else None."""
    ctx = current_context()
    return ctx if ctx is not None and ctx.world_size > 1 else None


def rank_device(device: torch.device) -> torch.device:
    """Under a multi-rank group, a CUDA device becomes this rank's GPU; otherwise unchanged."""
    ctx = parallel_context()
    if ctx is None or device.type != "cuda":
        return device
    return ctx.device if ctx.device.type == "cuda" else torch.device("cuda", ctx.local_rank)


# ---------------------------------------------------------------------- sharding
def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n rows; shares differ by at most one row."""
    return n * rank // world_size, n * (rank + 1) // world_size


def shard_batch(batch: torch.Tensor, ctx: DistributedContext | None) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (the whole batch without a context).

    Every rank must hold the same global batch (drawn from the same seeded generator);
    the slices are disjoint and cover it. A slice may be empty when the batch has
    fewer rows than there are ranks.
    """
    if ctx is None:
        return batch
    start, stop = shard_range(len(batch), ctx.rank, ctx.world_size)
    return batch[start:stop]


def batch_aligned_range(n: int, batch_size: int, ctx: DistributedContext | None) -> tuple[int, int]:
    """[start, stop) of this rank's rows when n rows are processed in batches of ``batch_size``.

    Each rank gets a contiguous run of whole batches, the very batches one process
    would form, so per-row results do not depend on the number of ranks (kernels
    may round differently for other batch shapes). With fewer batches than ranks
    some ranks get none.
    """
    if ctx is None:
        return 0, n
    n_batches = -(-n // batch_size)
    first, last = shard_range(n_batches, ctx.rank, ctx.world_size)
    return min(first * batch_size, n), min(last * batch_size, n)


# ---------------------------------------------------------------------- collectives
def gather_rows(array: np.ndarray, ctx: DistributedContext | None) -> np.ndarray:
    """Concatenate every rank's rows in rank order (a collective); the array itself without a context.

    Ranks may hold different numbers of rows (zero included) but the same trailing
    shape and dtype. Every rank receives the full array.
    """
    if ctx is None:
        return array
    local = torch.from_numpy(np.ascontiguousarray(array)).to(ctx.device)
    size = torch.tensor([local.shape[0]], dtype=torch.int64, device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).cpu().numpy()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext | None) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (in place, a collective); unchanged without a context."""
    if ctx is not None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# ---------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, fn, nproc: int, port: int, device: str, threads: int | None,
             timeout_s: float, out_dir: str, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads is not None:
        torch.set_num_threads(threads)
    ctx = setup_from_env(device, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        result = fn(ctx, *args)
        with open(Path(out_dir) / f"rank{local_rank}.pkl", "wb") as f:
            pickle.dump(result, f)
    finally:
        teardown()


def spawn(fn: Callable, nproc: int, *args, device: str = "cpu", threads: int | None = None,
          timeout_s: float = 300.0) -> list:
    """Run ``fn(ctx, *args)`` in ``nproc`` local processes on localhost; their return values by rank.

    Each process gets torchrun-style environment variables (a free port on
    127.0.0.1), :func:`setup_from_env` initialises the group (gloo on CPU, nccl on
    CUDA) and ``ctx`` is its :class:`DistributedContext`. ``fn``, its arguments and
    results must be picklable (a module-level function). ``threads`` sets torch's
    intra-op threads per process; ``timeout_s`` bounds each collective. An exception
    in any process is raised here.
    """
    if nproc < 2:
        raise ValueError(f"spawn needs nproc >= 2; got {nproc} (call fn directly for one process)")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="recvae-spawn-") as out_dir:
        mp.spawn(_spawned, args=(fn, nproc, _free_port(), device, threads, timeout_s, out_dir, args),
                 nprocs=nproc, join=True)
        results = []
        for rank in range(nproc):
            with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
    return results


def torchrun_command(argv: list[str], nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m recvae <argv>``, with ``argv``'s own
    ``--nproc N`` / ``--nproc=N`` dropped: the workers must not launch again."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1; got {nproc}")
    workers, skip = [], False
    for arg in argv:
        if not skip and arg != "--nproc" and not arg.startswith("--nproc="):
            workers.append(arg)
        skip = arg == "--nproc" and not skip
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "recvae", *workers]


def launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run ``python -m recvae <argv>`` as ``nproc`` processes under torchrun on this machine
    (:func:`torchrun_command`; the CLI's ``--nproc N``). Returns torchrun's exit status.
    """
    return subprocess.run(torchrun_command(argv, nproc), check=False).returncode
