"""Hyper-parameter values checked when a config or a model is made, before any data is read.

Every check returns the value in its canonical type or raises :class:`HyperParameterError`,
one line naming the parameter, the value given and what is allowed::

    latent_dim='abc': expected an integer >= 1
    hidden_dims=600: expected a list of integers >= 1, e.g. [600, 200]
    anneal_cap=inf: expected a finite number >= 0

The rules, the same for every model:

- integers: Python and numpy integers, and floats with an integral value (``3.0`` -> ``3``:
  TOML, JSON and search spaces write numbers that way); ``2.5``, strings and bools are refused.
- numbers: finite ints and floats (numpy's too), never bools or strings; returned as float.
- flags: ``True`` or ``False`` only (not ``1``, not ``"yes"``).
- choices: a string from a known set.
- lists: a list or tuple (not a bare number or a string), each element checked.

A config dataclass lists its rules as ``{field: check}`` and applies them in ``__post_init__``
with :func:`apply_rules`; :func:`recvae.models.base.Recommender.set_params` builds a fresh
model, so the same checks guard it.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "HyperParameterError",
    "integer",
    "number",
    "flag",
    "choice",
    "integer_list",
    "number_list",
    "path_or_none",
    "device_name",
    "optional",
    "apply_rules",
    "rule",
    "DROPOUT",
    "shown",
]

Check = Callable[[str, Any], Any]


class HyperParameterError(ValueError, TypeError):
    """A hyper-parameter's value is not allowed (wrong type, range or shape).

    Both a ``ValueError`` and a ``TypeError``, so callers that caught either before keep working.
    """


def shown(value: Any) -> str:
    """``repr`` of a value for a message, numpy scalars as plain Python ones, cut at 60 characters."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(name: str, value: Any, allowed: str) -> HyperParameterError:
    return HyperParameterError(f"{name}={shown(value)}: expected {allowed}")


def _bounds(minimum: float | None, maximum: float | None, low_open: bool, high_open: bool) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if low_open else '['}{minimum:g}, {maximum:g}{')' if high_open else ']'}"
    if minimum is not None:
        return f" {'>' if low_open else '>='} {minimum:g}"
    if maximum is not None:
        return f" {'<' if high_open else '<='} {maximum:g}"
    return ""


def _in_bounds(value: float, minimum: float | None, maximum: float | None, low_open: bool, high_open: bool) -> bool:
    if minimum is not None and (value < minimum or (low_open and value == minimum)):
        return False
    return maximum is None or not (value > maximum or (high_open and value == maximum))


def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]`` (integral floats accepted, ``2.5`` and bools not)."""
    allowed = f"an integer{_bounds(minimum, maximum, False, False)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, value, allowed)
    if not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise _fail(name, value, allowed)
    result = int(value)
    if not _in_bounds(result, minimum, maximum, False, False):
        raise _fail(name, value, allowed)
    return result


def number(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
           low_open: bool = False, high_open: bool = False, finite: bool = True) -> float:
    """``value`` as a float within the bounds (``low_open``/``high_open``: the bound itself excluded).

    Not a bool, not a string; NaN never, infinities only with ``finite=False``.
    """
    bounded = minimum is not None and maximum is not None
    allowed = f"a {'finite ' if finite and not bounded else ''}number{_bounds(minimum, maximum, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(name, value, allowed)
    result = float(value)
    if math.isnan(result) or (finite and math.isinf(result)) or \
            not _in_bounds(result, minimum, maximum, low_open, high_open):
        raise _fail(name, value, allowed)
    return result


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (numpy bools too); nothing else, not even 0 and 1."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise _fail(name, value, "True or False")


def choice(name: str, value: Any, options: Iterable[str]) -> str:
    """One of ``options`` (strings, compared exactly)."""
    options = tuple(options)
    if isinstance(value, str) and value in options:
        return value
    raise _fail(name, value, "one of " + ", ".join(repr(o) for o in options))


def integer_list(name: str, value: Any, *, minimum: int | None = None, example: str = "[600, 200]") -> tuple[int, ...]:
    """A list or tuple of integers (each as :func:`integer`), returned as a tuple; never a bare number."""
    allowed = f"a list of integers{_bounds(minimum, None, False, False)}, e.g. {example}"
    if not isinstance(value, (list, tuple)):
        raise _fail(name, value, allowed)
    try:
        return tuple(integer(name, v, minimum=minimum) for v in value)
    except HyperParameterError:
        raise _fail(name, value, allowed) from None


def number_list(name: str, value: Any, *, length: int | None = None, minimum: float | None = None,
                low_open: bool = False, rule: str = "") -> tuple[float, ...]:
    """A list or tuple of finite numbers (``length`` of them when given), returned as a tuple of floats."""
    allowed = rule or (f"a list of {length or ''} finite numbers".replace("  ", " ") +
                       _bounds(minimum, None, low_open, False))
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        raise _fail(name, value, allowed)
    try:
        return tuple(number(name, v, minimum=minimum, low_open=low_open) for v in value)
    except HyperParameterError:
        raise _fail(name, value, allowed) from None


def path_or_none(name: str, value: Any) -> str | None:
    """None, or a non-empty file path (a string or an ``os.PathLike``), returned as a string."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if isinstance(text, str) and text.strip():
            return text
    raise _fail(name, value, "a file path or None")


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:\d+)?")


def device_name(name: str, value: Any) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu`` or ``xpu:N`` (whether it exists is
    checked when training starts)."""
    if isinstance(value, str) and _DEVICE.fullmatch(value):
        return value
    raise _fail(name, value, "'auto', 'cpu', 'cuda', 'cuda:N' (a GPU index) or 'mps'")


def optional(check: Check) -> Check:
    """``check`` that also lets None through (the message then says ``or None``)."""

    def checked(name: str, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(name, value)
        except HyperParameterError as err:
            raise HyperParameterError(f"{err} or None") from None

    return checked


def apply_rules(config: Any, rules: Mapping[str, Check], prefix: str = "") -> None:
    """Check each field of a (frozen) dataclass by its rule and store the canonical value.

    ``prefix`` is prepended to the field's name in messages (``anneal_`` for the schedule's
    fields, as the flat parameters spell them).
    """
    for field, check in rules.items():
        object.__setattr__(config, field, check(prefix + field, getattr(config, field)))


def rule(check: Callable[..., Any], **bounds: Any) -> Check:
    """A ``(name, value)`` check from one of the checks above and its keyword arguments."""
    return lambda name, value: check(name, value, **bounds)


#: a dropout probability: a number in [0, 1).
DROPOUT: Check = rule(number, minimum=0.0, maximum=1.0, high_open=True)
