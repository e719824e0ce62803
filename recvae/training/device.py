"""Where a run computes and in which precision: the device (:func:`resolve_device`), rows of a CSR
matrix on it (:func:`sparse_rows`), the precision training runs in (:func:`resolve_precision`: bf16
where the hardware computes it natively, or as :data:`AUTO_PRECISION_ENV` forces) and the contexts
that apply it: autocast for training steps, :func:`full_precision` for every score that decides or
reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import scipy.sparse as sp
import torch

from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.training.config import PRECISIONS

__all__ = [
    "resolve_device",
    "sparse_rows",
    "cpu_has_native_bf16",
    "AUTO_PRECISION_ENV",
    "resolve_precision",
    "full_precision",
]


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
