"""How much memory a fit may take, and one refusal for every model that would take more.

Every model checks its large allocations here before making them (dense item x item
matrices, Gram matrices, batch x items logits, optimizer moments, score blocks): the
kernel's OOM killer ends a process with no message and no run directory, so a refusal
has to come first, as one line that names what needs how much, what is available and
the option or model that fits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

try:  # looked for once: a failed import inside available_memory_bytes searched sys.path on every call
    import psutil
except ImportError:
    psutil = None

logger = logging.getLogger(__name__)

__all__ = ["GIB", "InsufficientMemoryError", "available_memory_bytes", "describe_bytes", "require_memory"]

GIB = 2**30

#: Share of the available memory a planned peak may use before a warning: the estimate is
#: of the largest allocations, and the interpreter, the log and other buffers come on top.
WARN_FRACTION = 0.5


class InsufficientMemoryError(MemoryError):
    """A planned allocation does not fit in available memory; the message is one line with the fix.

    Attributes:
        needed: the planned peak in bytes.
        available: the bytes available when it was checked.
    """

    def __init__(self, message: str, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed, self.available = int(needed), int(available)


def available_memory_bytes() -> int:
    """Bytes of RAM this process can still allocate, as best it can tell.

    ``psutil``'s available memory if psutil is installed, else ``MemAvailable``
    from /proc/meminfo, else the total physical memory (``os.sysconf``); capped
    by a cgroup (container) memory limit and by an address-space limit
    (``ulimit -v``) when one is set.
    """
    available = None
    if psutil is not None:
        available = int(psutil.virtual_memory().available)
    else:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        current = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(current))
    except (OSError, ValueError):
        pass
    address_space = _address_space_left()
    if address_space is not None:
        available = min(available, address_space)
    return int(available)


def _address_space_left() -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``, ``RLIMIT_AS``), None without one.

    A capped process fails its allocations at the cap whatever the machine has free, so a check
    that ignored the cap would let numpy's bare allocation error through instead of the refusal.
    """
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, int(soft) - int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return int(soft)


def describe_bytes(n: float) -> str:
    """``n`` bytes for a person: ``'1.25 GiB'``, ``'300 MiB'``."""
    n = float(n)
    if n >= GIB:
        return f"{n / GIB:,.2f} GiB"
    return f"{n / 2**20:,.0f} MiB"


def require_memory(what: str, parts: Mapping[str, float], fix: str, *, available: int | None = None,
                   warn_fraction: float = WARN_FRACTION) -> int:
    """Refuse, before allocating, a plan whose peak does not fit; warn when it takes most of what is left.

    Args:
        what: what would be allocated, e.g. ``"EASE on 36,073 items"``.
        parts: the peak's components in bytes, named for the message (e.g. ``{"Gram matrix": ...}``);
            their sum is the planned peak.
        fix: the option or model that fits, e.g. ``"use --model sparse-ease"``.
        available: the bytes available (default: :func:`available_memory_bytes` now).
        warn_fraction: above this share of the available memory, log a warning.

    Returns:
        The planned peak in bytes.

    Raises:
        InsufficientMemoryError: one line: ``"<what> needs about X (a: .., b: ..) but only Y is
            available; <fix>"``.
    """
    needed = int(sum(max(0.0, float(v)) for v in parts.values()))
    have = available_memory_bytes() if available is None else int(available)
    shown = ", ".join(f"{name}: {describe_bytes(v)}" for name, v in parts.items() if v > 0)
    if needed > have:
        raise InsufficientMemoryError(
            f"{what} needs about {describe_bytes(needed)} ({shown}) but only {describe_bytes(have)} "
            f"is available; {fix}", needed, have)
    if needed > warn_fraction * have:
        logger.warning("%s needs about %s (%s), more than %.0f%% of the %s available; if it is killed, %s",
                       what, describe_bytes(needed), shown, 100 * warn_fraction, describe_bytes(have), fix)
    return needed
