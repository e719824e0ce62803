"""The names a run's outputs give the user and item ids: the log's own (``customer``, ``product``) or the fixed ones.

A run fit on a log whose id columns were ``customer`` and ``product`` writes its
recommendations, embeddings and similar items with those column names by default
(``id_columns="log"``, ``--id-columns log``); ``id_columns="fixed"`` (``--id-columns
fixed``) gives ``user_id`` / ``item_id`` whatever the log. A column named with a mere
spelling of the role (``user``, ``userId``, ``uid``, ``item``, ``item_id`` ...), a
MovieLens log or an older run that did not record its names keeps ``user_id`` /
``item_id``. The names are recorded at fit time in ``config.json`` under
``data.id_columns`` (:func:`log_id_columns`).
"""

from __future__ import annotations

import logging
import re

import pandas as pd

logger = logging.getLogger(__name__)

__all__ = ["ID_COLUMN_CHOICES", "FIXED_ID_COLUMNS", "log_id_columns", "id_column_names", "rename_ids"]

#: ``id_columns`` values: the log's own names, or ``user_id`` / ``item_id``
ID_COLUMN_CHOICES = ("log", "fixed")
FIXED_ID_COLUMNS = {"user_id": "user_id", "item_id": "item_id"}
_ROLE_SPELLINGS = {"user_id": ("user", "userid", "uid", "users"), "item_id": ("item", "itemid", "iid", "items")}
#: output columns beside the ids, which an id column may not be named
_OTHER_COLUMNS = re.compile(r"^(rank|score|mu|sigma|embedding|(mu|sigma|emb)_\d+)$")


def _key(name: object) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def log_id_columns(columns: dict | None) -> tuple[dict[str, str], str | None]:
    """The output names of a log's id columns, from its roles (``{"user": "customer", "item": "product"}``):
    ``({"user_id": "customer", "item_id": "product"}, note)``.

    A role spelled as the role itself (``user``, ``user_id``, ``userId``, ``item`` ...) keeps the fixed
    name. Names that would clash with each other or with another output column (``rank``, ``score``,
    ``mu_0`` ...) give the fixed names for both, and ``note`` says why (None otherwise).
    """
    names = dict(FIXED_ID_COLUMNS)
    for fixed, role in (("user_id", "user"), ("item_id", "item")):
        column = (columns or {}).get(role)
        if column is not None and _key(column) not in _ROLE_SPELLINGS[fixed]:
            names[fixed] = str(column)
    taken = list(names.values()) + [f"similar_{names['item_id']}"]
    clash = [n for n in names.values() if _OTHER_COLUMNS.match(n)]
    if clash or len(set(taken)) < len(taken):
        return dict(FIXED_ID_COLUMNS), (f"outputs name the ids user_id and item_id: the log's own names "
                                        f"{list(names.values())} would clash with the outputs' other columns")
    return names, None


def id_column_names(config: dict | None, id_columns: str = "log") -> dict[str, str]:
    """``{"user_id": ..., "item_id": ..., "similar_item_id": ...}``: the columns an output of a run with
    ``config`` uses. ``id_columns``: ``"log"`` (the names recorded at fit time; none recorded: the fixed
    ones) or ``"fixed"``. Raises ValueError for another value."""
    if id_columns not in ID_COLUMN_CHOICES:
        raise ValueError(f"id_columns {id_columns!r}: choose 'log' (the log's own column names, e.g. customer/"
                         "product) or 'fixed' (user_id/item_id); --id-columns log|fixed")
    recorded = ((config or {}).get("data") or {}).get("id_columns") if id_columns == "log" else None
    names = {**FIXED_ID_COLUMNS, **{k: str(v) for k, v in (recorded or {}).items() if k in FIXED_ID_COLUMNS}}
    item = names["item_id"]
    names["similar_item_id"] = "similar_item_id" if item == "item_id" else f"similar_{item}"
    return names


def rename_ids(frame: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """``frame`` with its ``user_id`` / ``item_id`` / ``similar_item_id`` columns given ``names``
    (:func:`id_column_names`); its ``attrs`` are kept."""
    renames = {k: v for k, v in names.items() if k in frame.columns and k != v}
    if not renames:
        return frame
    attrs = dict(frame.attrs)
    out = frame.rename(columns=renames)
    out.attrs = attrs
    return out
