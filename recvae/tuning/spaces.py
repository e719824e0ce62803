"""Search spaces written as plain data (TOML, JSON or Python): a range table per numeric parameter
(:class:`Range`) or a list of choices (:class:`Choices`), validated with one-line errors that name
the key and the fix (:class:`SearchSpaceError`); read from a file (:func:`read_search_space`), and
their corners (:func:`space_corners`), which check a model's parameters before a search starts.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recvae.models.params import parse_param_value

__all__ = ["Range", "Choices", "SearchSpaceError", "search_space", "read_search_space", "parse_search_space",
           "space_corners"]


class SearchSpaceError(ValueError):
    """A malformed search space: ``key`` names the dimension (None: the space as a whole), ``problem`` the fix."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(f"search space {key!r}: {problem}" if key is not None else f"search space: {problem}")
        self.key = key
        self.problem = problem


_RANGE_KEYS = ("low", "high", "log", "step")
_SPACE_EXAMPLE = 'lr = { low = 1e-4, high = 3e-3, log = true }, input_dropout = [0.2, 0.5]'


@dataclass(frozen=True)
class Range:
    """A numeric range to sample: integers when ``low`` and ``high`` are both ints, floats otherwise.

    ``log`` samples uniformly on a log scale (needs ``low > 0``); ``step`` restricts the
    values to ``low + k * step`` (not with ``log``). Both ends are included.
    """

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None

    @property
    def is_int(self) -> bool:
        """Whether the range holds integers (``low`` and ``high`` given as ints)."""
        return isinstance(self.low, int) and isinstance(self.high, int)

    def position(self, value: float) -> float:
        """Where ``value`` lies: 0 at ``low``, 1 at ``high`` (measured on the log scale for a log range)."""
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class Choices:
    """Categorical choices, tried as given; TPE treats them as unordered."""

    options: tuple


def search_space(spec: Mapping[str, Any]) -> dict[str, Range | Choices]:
    """Validate a search space written as plain data (TOML, JSON or Python) and return its dimensions.

    Each key is a parameter name; its value is either a range table
    ``{"low": 1e-4, "high": 3e-3, "log": True}`` (ints when ``low`` and ``high`` are
    ints; optional ``step``) or a non-empty list of choices ``[0.2, 0.5, 0.7]``.
    Values already parsed (:class:`Range`, :class:`Choices`) pass through.

    Raises:
        SearchSpaceError: (a ValueError) one line naming the key, the problem and the fix.
    """
    if not isinstance(spec, Mapping):
        raise SearchSpaceError(None, f"must be a table of parameter name -> range or list of choices, e.g. "
                                     f"{{ {_SPACE_EXAMPLE} }}; got {type(spec).__name__}")
    if not spec:
        raise SearchSpaceError(None, f"is empty; give at least one parameter, e.g. {{ {_SPACE_EXAMPLE} }}")
    space: dict[str, Range | Choices] = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise SearchSpaceError(None, f"keys must be parameter names; got {key!r}")
        space[key] = _dimension(key, value)
    return space


def _dimension(key: str, value: Any) -> Range | Choices:
    if isinstance(value, (Range, Choices)):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Mapping):
        return _range(key, value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise SearchSpaceError(key, f"the list of choices is empty; give at least one value, e.g. {key} = [a, b]")
        return Choices(tuple(value))
    raise SearchSpaceError(key, f"must be a range {{ low = ..., high = ... }} (optional log = true, step = ...) or a "
                                f"list of choices [a, b, c]; got {value!r} (a fixed value goes in params)")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) \
        and math.isfinite(x)


def _range(key: str, table: Mapping[str, Any]) -> Range:
    example = f"e.g. {key} = {{ low = 1e-4, high = 3e-3, log = true }}"
    unknown = [k for k in table if k not in _RANGE_KEYS]
    if unknown:
        close = {"min": "low", "max": "high", "lower": "low", "upper": "high", "log_scale": "log", "q": "step"}
        hint = f"; did you mean {close[unknown[0]]!r}?" if unknown[0] in close else ""
        raise SearchSpaceError(key, f"unknown key {unknown[0]!r} in the range{hint} (a range takes low, high, log "
                                    f"and step); {example}")
    missing = [k for k in ("low", "high") if k not in table]
    if missing:
        raise SearchSpaceError(key, f"the range needs {' and '.join(missing)}; {example}")
    low, high, log, step = table["low"], table["high"], table.get("log", False), table.get("step")
    for name, x in (("low", low), ("high", high)):
        if not _is_number(x):
            raise SearchSpaceError(key, f"{name} must be a finite number; got {x!r}")
    if not isinstance(log, bool):
        raise SearchSpaceError(key, f"log must be true or false; got {log!r}")
    is_int = isinstance(low, (int, np.integer)) and isinstance(high, (int, np.integer))
    low, high = (int(low), int(high)) if is_int else (float(low), float(high))
    if not low < high:
        raise SearchSpaceError(key, f"low ({low}) must be below high ({high}); a single value goes in params")
    if log and low <= 0:
        raise SearchSpaceError(key, f"a log range needs low > 0; got low = {low}")
    if step is not None:
        if not _is_number(step) or step <= 0:
            raise SearchSpaceError(key, f"step must be a positive number; got {step!r}")
        if log:
            raise SearchSpaceError(key, "log and step do not combine; drop one of them")
        if is_int and not isinstance(step, (int, np.integer)):
            raise SearchSpaceError(key, f"the step of an integer range must be an integer; got {step!r} "
                                        f"(or write low and high as floats, e.g. low = {low}.0)")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            fitted = low + math.floor(steps) * step
            raise SearchSpaceError(key, f"high - low ({high - low:g}) must be a multiple of step ({step:g}); "
                                        f"e.g. high = {fitted:g}")
        step = int(step) if is_int else float(step)
    return Range(low, high, log, step)


def read_search_space(path: str | Path) -> dict[str, Any]:
    """A search space from a TOML or JSON file (``.json``: JSON, else TOML), validated.

    The file holds the space at its top level (``lr = { low = 1e-4, high = 3e-3, log = true }``)
    or under a ``[search]`` table. Returns the space as plain data.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not parse, or the space is malformed (one line, naming the file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"search space file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ValueError(f"{path} is not valid {kind}: {' '.join(str(err).split())}") from None
    if isinstance(raw, dict) and set(raw) == {"search"} and isinstance(raw["search"], dict):
        raw = raw["search"]
    try:
        search_space(raw)
    except SearchSpaceError as err:
        raise ValueError(f"{path}: {err}") from None
    return raw


def parse_search_space(text: str) -> dict[str, Any]:
    """A search space written inline, TOML or JSON (``'{lr = {low = 1e-4, high = 3e-3, log = true}}'``), validated.

    Raises ValueError (one line, with an example) when it is not a table or the space is malformed.
    """
    raw = parse_param_value(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{text!r}: expected a table of parameter -> range or list of choices, e.g. "
                         "'{lr = {low = 1e-4, high = 3e-3, log = true}, input_dropout = [0.2, 0.5]}'")
    try:
        search_space(raw)
    except SearchSpaceError as err:
        raise ValueError(f"{text!r}: {err}") from None
    return raw


def space_corners(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Two parameter sets of a space: every dimension at its low end / first choice, then at its high end / last
    choice. Building a model from each checks parameter names and types before a search starts."""
    dims = search_space(space)
    low = {k: d.low if isinstance(d, Range) else d.options[0] for k, d in dims.items()}
    high = {k: d.high if isinstance(d, Range) else d.options[-1] for k, d in dims.items()}
    return [low, high]
