"""Keeping freed host memory in the process while a model trains on the CPU.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB, a bound
``mallopt`` cannot raise) with a fresh ``mmap`` and unmaps it on ``free``. A training
step at ML-20M's 20k items allocates and frees several such blocks -- the B x I logits
and their softmax (40 MB each at a batch of 500), the items x 600 gradients (48 MB
each) -- so every step faults their pages in again, and the kernel zeroes each 4 KiB
page on the way. That cost 8-21% of a step at 20k-100k items, measured against
glibc's default side by side in ``experiments/results/catalogue.md``.

:func:`retained_host_memory` switches glibc's use of ``mmap`` off and raises its trim
threshold while training runs, so a freed block goes back to the heap and the next
step reuses its pages; on leaving, ``mmap`` is back on, its threshold and the trim
threshold are those glibc's dynamic adjustment reaches for large blocks (32 and 64
MiB: setting any of them ends that adjustment for the process), and ``malloc_trim(0)``
gives the free pages back to the system. The allocator is one per
process, so the settings are process-wide while any training holds them (nested and
concurrent trainings share one count). Elsewhere (another C library, another
platform) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

__all__ = ["retained_host_memory"]

# mallopt parameters (malloc.h); glibc's default mmap count, and the largest mmap threshold its dynamic
# adjustment reaches on 64-bit systems, with the trim threshold it pairs with it (malloc.c)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536
_RELEASED_MMAP_THRESHOLD = 32 * 2**20
_RELEASED_TRIM_THRESHOLD = 64 * 2**20
# Only a free top of the heap larger than this goes back to the system during training: C int's maximum.
_TRAINING_TRIM_THRESHOLD = 2**31 - 1

_lock = threading.Lock()
_holders = 0


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _set(libc: ctypes.CDLL, retained: bool) -> bool:
    if retained:
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRAINING_TRIM_THRESHOLD))
    return (bool(libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX))
            and bool(libc.mallopt(_M_MMAP_THRESHOLD, _RELEASED_MMAP_THRESHOLD))
            and bool(libc.mallopt(_M_TRIM_THRESHOLD, _RELEASED_TRIM_THRESHOLD)))


@contextmanager
def retained_host_memory(enabled: bool = True) -> Iterator[bool]:
    """While inside, freed host memory stays in the process for reuse (glibc only; see the module docstring).

    Yields whether the setting is in force (False when ``enabled`` is False or the C
    library is not glibc). Peak memory is unchanged in kind -- blocks are reused, not
    added -- but the process does not shrink until the last holder leaves.
    """
    global _holders
    libc = _glibc() if enabled else None
    if libc is not None:
        with _lock:
            if _holders == 0 and not _set(libc, retained=True):
                _set(libc, retained=False)
                logger.debug("mallopt refused; host memory is released as usual")
                libc = None
            else:
                _holders += 1
    if libc is None:
        yield False
        return
    try:
        yield True
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _set(libc, retained=False)
                libc.malloc_trim(0)

