"""The run's one error type, and the helpers that keep its messages on one line."""

from __future__ import annotations

__all__ = ["RunError"]


class RunError(ValueError):
    """A run cannot be written, read or used as asked; the message names the cause and the fix."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a KeyError's quotes removed)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(text.split())


def first_ids(ids: list, n: int = 5) -> str:
    """The first ``n`` ids, and how many more there are."""
    shown = ", ".join(map(repr, ids[:n]))
    return shown + (f" and {len(ids) - n:,} more" if len(ids) > n else "")
