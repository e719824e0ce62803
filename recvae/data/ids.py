"""Raw user and item ids: one plain numpy type per id map, and lookups that forgive the caller's type.

A log's ids may be integers (MovieLens), strings (``"u1"``, UUIDs, SKUs) or a mix
of both read from a hand-made file. recvae keeps each id map as a plain,
sortable, pickle-free numpy array:

- integers -> ``int64``; floats that are all whole numbers -> ``int64``; other floats -> ``float64``;
- strings (and mixed strings and numbers) -> unicode (``<U``), every value by ``str()``.

Mixed ids become strings so that they sort and save; two raw values with the
same text (``1`` and ``"1"``) would then be one id, so that case is refused.

:func:`lookup_ids` maps raw ids to positions and converts the query to the map's
type first (``"12"`` finds user 12 in an integer map; ``12`` finds ``"12"`` in a
string map), which is what a command line or a JSON request needs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["normalise_ids", "lookup_ids", "coerce_ids", "short_id", "UnknownIdError"]

#: How many characters of an id a message shows (a request may send a megabyte-long "id").
SHORT_ID_CHARS = 64


class UnknownIdError(KeyError):
    """Raw ids that are not in an id map; ``.unknown`` lists them (``str(err)`` is one line)."""

    def __init__(self, message: str, unknown: list) -> None:
        super().__init__(message)
        self.unknown = unknown

    def __str__(self) -> str:
        return str(self.args[0])


def short_id(value, limit: int = SHORT_ID_CHARS) -> str:
    """An id as messages show it: its ``repr``, cut to ``limit`` characters plus "..." when longer."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[:limit] + "..."


def normalise_ids(values, what: str = "id") -> np.ndarray:
    """Raw id values as one plain numpy array (int64, float64 or unicode); see the module docstring.

    Raises:
        ValueError: missing values, or mixed values whose texts collide.
    """
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        if array.size and not np.isfinite(array).all():
            raise ValueError(f"{what} ids contain NaN or infinite values; drop or fill them first")
        if array.size and np.all(array == np.round(array)) and np.abs(array).max() < 2**62:
            return array.astype(np.int64)
        return array.astype(np.float64)
    if array.dtype.kind == "U":
        return array
    if array.dtype.kind == "S":
        return array.astype(str)
    # object: strings, numbers, or a mix (pandas reads text columns as object)
    flat = array.ravel().tolist()
    if any(v is None or (isinstance(v, float) and v != v) for v in flat):
        raise ValueError(f"{what} ids contain missing values; drop or fill them first")
    kinds = {type(v) for v in flat}
    if kinds and all(issubclass(k, (int, np.integer)) and not issubclass(k, (bool, np.bool_)) for k in kinds):
        return np.asarray(flat, dtype=np.int64).reshape(array.shape)
    if kinds and all(issubclass(k, (int, float, np.integer, np.floating)) for k in kinds):
        return normalise_ids(np.asarray(flat, dtype=np.float64).reshape(array.shape), what)
    text = np.asarray([str(v) for v in flat], dtype=str).reshape(array.shape)
    if len(kinds) > 1:
        # 1 and "1" would become one id: refuse rather than merge two users silently.
        distinct_values = len(set(zip(map(type, flat), flat)))
        distinct_texts = len(set(text.ravel().tolist()))
        if distinct_texts < distinct_values:
            raise ValueError(
                f"{what} ids mix types whose texts collide (e.g. 1 and '1'); convert the column to one type"
            )
    return text


def coerce_ids(raw, reference: np.ndarray) -> np.ndarray:
    """Raw query ids converted to the type of the id map ``reference`` where they can be.

    Strings that spell integers become integers for an integer map; anything
    becomes its text for a string map. Values that cannot convert stay as they
    are (and are then reported unknown).
    """
    raw = np.atleast_1d(np.asarray(raw, dtype=object) if not isinstance(raw, np.ndarray) else raw)
    kind = np.asarray(reference).dtype.kind
    if kind == "U" or kind == "O":
        return np.asarray([str(v) for v in raw.tolist()], dtype=object)
    converted = []
    for value in raw.tolist():
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if kind in "iu" else float(text)
            except ValueError:
                try:
                    as_float = float(text)
                    value = int(as_float) if kind in "iu" and as_float.is_integer() else as_float
                except ValueError:
                    pass
        elif kind in "iu" and isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        converted.append(value)
    return np.asarray(converted, dtype=object)


def lookup_ids(index: pd.Index | np.ndarray, raw, what: str = "item") -> np.ndarray:
    """Positions of raw ids in an id map; raises :class:`UnknownIdError` naming the first few unknown ones."""
    if not isinstance(index, pd.Index):
        index = pd.Index(np.asarray(index))
    query = coerce_ids(raw, index.to_numpy())
    positions = index.get_indexer(query)
    if (positions < 0).any():
        unknown = query[positions < 0].tolist()
        shown = ", ".join(map(short_id, unknown[:5]))
        more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
        raise UnknownIdError(f"unknown {what} id(s): {shown}{more}", unknown)
    return positions.astype(np.int64)


def find_ids(index: pd.Index | np.ndarray, raw) -> tuple[np.ndarray, np.ndarray]:
    """(positions, found mask) of raw ids in an id map: -1 where unknown (no error)."""
    if not isinstance(index, pd.Index):
        index = pd.Index(np.asarray(index))
    positions = index.get_indexer(coerce_ids(raw, index.to_numpy())).astype(np.int64)
    return positions, positions >= 0
