"""Model parameters from text: ``KEY=VALUE`` pairs as the command line and config tools write them.

Light on purpose (no torch): the command line parses ``--param`` before it imports any model.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

__all__ = ["parse_param_value", "parse_param_pairs"]


def parse_param_value(text: str) -> Any:
    """A parameter value from text: a TOML literal, else JSON, else a number, else the string itself.

    ``100`` -> int, ``5e-4`` -> float, ``true`` -> bool, ``[600, 200]`` -> list,
    ``{kind = "constant", cap = 0.1}`` (TOML) or ``{"kind": "constant"}`` (JSON)
    -> dict, ``none``/``null`` -> None, ``multinomial`` -> ``"multinomial"``.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if "\n" not in stripped:
        try:
            value = tomllib.loads(f"v = {stripped}")["v"]
        except tomllib.TOMLDecodeError:
            pass
        else:
            if isinstance(value, (bool, int, float, str, list, dict)):  # not TOML dates
                return value
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    try:
        return float(stripped)
    except ValueError:
        return text


def parse_param_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``["latent_dim=100", "lr=5e-4"]`` -> ``{"latent_dim": 100, "lr": 0.0005}`` (see :func:`parse_param_value`).

    Raises ValueError naming the pair for a pair without ``=``, an empty or non-identifier
    key, or a key given twice.
    """
    params: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{pair!r}: expected KEY=VALUE with a parameter name as KEY, e.g. latent_dim=100")
        if key in params:
            raise ValueError(f"{key} is given twice; give each parameter once")
        params[key] = parse_param_value(raw)
    return params
