"""What a fitted run answers by raw id: recommendations (known, new, every user), embeddings, similar items.

:class:`RunQueries` is the part of :class:`recvae.runs.Run` that reads a fitted
run and never changes it: it resolves raw user and item ids to rows and columns,
builds per-user exclusion and candidate masks, and ranks in memory-bounded batches
(:func:`recvae.models.base.rank_in_blocks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.ids import find_ids, lookup_ids
from recvae.data.tables import TableWriter, check_table_output, write_table
from recvae.models.base import UserEmbeddings, item_mask, rank_in_blocks
from recvae.models.posterior import DEFAULT_SEED, check_uncertainty, user_uncertainty
from recvae.runs.errors import RunError, first_ids as _first
from recvae.runs.id_columns import id_column_names, rename_ids

logger = logging.getLogger(__name__)

__all__ = ["RunQueries", "SkippedUsers"]


@dataclass
class SkippedUsers:
    """Requested user ids that got no recommendations, and why."""

    dropped: list
    unknown: list
    min_user_events: int | None = None

    def __bool__(self) -> bool:
        return bool(self.dropped or self.unknown)

    @property
    def count(self) -> int:
        return len(self.dropped) + len(self.unknown)

    def message(self) -> str:
        """One line: how many were skipped, the first few ids of each kind, and why."""
        parts = []
        if self.dropped:
            why = (f"fewer than {self.min_user_events} positive events, or none on the model's items"
                   if self.min_user_events is not None else "no usable events")
            parts.append(f"{len(self.dropped):,} dropped by preprocessing ({why}): {_first(self.dropped)}")
        if self.unknown:
            parts.append(f"{len(self.unknown):,} not in the log: {_first(self.unknown)}")
        return f"skipped {self.count:,} user id(s): " + "; ".join(parts)



class RunQueries:
    """Recommendations, embeddings and similar items of a fitted run, by raw id (mixed into :class:`Run`).

    Needs ``model``, ``split``, ``user_ids``, ``history``, ``seen``, ``config`` and the
    indexes ``_user_index`` / ``_dropped_index`` that :class:`Run` builds.
    """

    @property
    def n_items(self) -> int:
        return int(self.split.n_items)

    @property
    def item_ids(self) -> np.ndarray:
        return self.split.item_ids

    def id_names(self, id_columns: str = "log") -> dict[str, str]:
        """The column names of this run's outputs: ``{"user_id": "customer", "item_id": "product",
        "similar_item_id": "similar_product"}`` for a log with those columns (``id_columns="log"``, the
        default), ``user_id`` / ``item_id`` for ``"fixed"``, a MovieLens log or a run that recorded no names
        (see :mod:`recvae.runs.id_columns`)."""
        try:
            return id_column_names(self.config, id_columns)
        except ValueError as err:
            raise RunError(str(err)) from None

    # ------------------------------------------------------------------ k past the catalogue
    def k_limit(self, *, similar: bool = False) -> int:
        """The most items one answer can hold: the catalogue (every other item for :meth:`similar_items`)."""
        return max(self.n_items - 1, 1) if similar else self.n_items

    def effective_k(self, k: int, *, similar: bool = False, warn: bool = True) -> int:
        """``k`` checked (a positive integer) and cut to :meth:`k_limit`; a cut is logged as a warning naming
        the real k (``warn=False``: silently, for a heading). Every query uses it and stores the result in
        ``frame.attrs["k"]`` (and what was asked in ``frame.attrs["k_asked"]``)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RunError(f"k must be a positive integer; got {k!r}")
        limit = self.k_limit(similar=similar)
        if k > limit and warn:
            what = "similar items per item (every other item)" if similar else "items per user (the whole catalogue)"
            logger.warning("k=%s is more than the catalogue's %s items allow: returning at most %s %s",
                           f"{int(k):,}", f"{self.n_items:,}", f"{limit:,}", what)
        return min(int(k), limit)

    def k_label(self, k: int, *, similar: bool = False) -> str:
        """``k`` as a heading shows it: ``"10"``, or ``"1,682 (the whole catalogue; asked for 100,000)"`` when the
        catalogue is smaller than what was asked (``"Top " + run.k_label(k)``)."""
        real = self.effective_k(k, similar=similar, warn=False)
        if real == k:
            return f"{real:,}"
        return f"{real:,} ({'every other item' if similar else 'the whole catalogue'}; asked for {int(k):,})"

    def _with_k(self, frame: pd.DataFrame, k: int, asked: int) -> pd.DataFrame:
        frame.attrs["k"], frame.attrs["k_asked"] = k, int(asked)
        return frame

    # ------------------------------------------------------------------ users
    def resolve_users(self, user_ids: Iterable, *, strict: bool = False) -> tuple[np.ndarray, np.ndarray, SkippedUsers]:
        """(rows, raw ids found, skipped) for raw user ids; ``strict`` refuses any skipped id."""
        raw = list(np.atleast_1d(np.asarray(list(user_ids) if not isinstance(user_ids, (str, bytes)) else [user_ids],
                                            dtype=object)).tolist())
        if not raw:
            raise RunError("no user ids given")
        positions, found = find_ids(self._user_index, raw)
        missing = [r for r, f in zip(raw, found) if not f]
        if missing and len(self._dropped_index):
            _, was_dropped = find_ids(self._dropped_index, missing)
        else:
            was_dropped = np.zeros(len(missing), dtype=bool)
        skipped = SkippedUsers(dropped=[m for m, d in zip(missing, was_dropped) if d],
                               unknown=[m for m, d in zip(missing, was_dropped) if not d],
                               min_user_events=self.config.get("data", {}).get("min_user_events"))
        if skipped and strict:
            raise RunError(f"{skipped.message()}; drop them or run without --strict (strict=False) to skip them")
        return positions[found], self.user_ids[positions[found]], skipped

    def _item_filter(self, spec, rows: np.ndarray, what: str, strict: bool) -> tuple[sp.csr_matrix | None, np.ndarray | None]:
        """Raw-id exclusion/candidate lists as (mask over (len(rows), items), rows it applies to).

        ``spec``: one list of raw item ids for every user, a ``{user_id: [item ids]}``
        dict, or a DataFrame with ``item_id`` (and ``user_id`` for per-user lists).
        Per-user lists apply to the users they name only.
        """
        if spec is None:
            return None, None
        n = len(rows)
        if isinstance(spec, pd.DataFrame):
            spec = spec.rename(columns={alias: name for alias, name in self.id_aliases.items()
                                        if alias in spec.columns and name not in spec.columns})  # the log's names
            if "item_id" not in spec.columns:
                raise RunError(f"{what}: a table needs an item_id column (and user_id for per-user lists)")
            spec = list(spec["item_id"]) if "user_id" not in spec.columns else \
                spec.groupby("user_id", sort=False)["item_id"].apply(list).to_dict()
        if not isinstance(spec, Mapping):
            return item_mask(self._item_columns(spec, what, strict), n, self.n_items, what), None
        user_positions, found = find_ids(self._user_index, list(spec))
        order = np.argsort(rows, kind="stable")  # a user asked for twice holds two rows: each gets the list
        ordered = np.asarray(rows)[order]
        ri, ci = [], []
        applies = np.zeros(n, dtype=bool)
        for position, items in zip(user_positions[found], [v for v, f in zip(spec.values(), found) if f]):
            at = order[np.searchsorted(ordered, position, "left"):np.searchsorted(ordered, position, "right")]
            if len(at):
                cols = self._item_columns(items, what, strict)
                applies[at] = True
                ri.extend(np.repeat(at, len(cols)).tolist())
                ci.extend(np.tile(cols, len(at)).tolist())
        mask = sp.csr_matrix((np.ones(len(ri), np.float32), (ri, ci)), shape=(n, self.n_items))
        mask.sum_duplicates()
        return mask, applies

    def _item_columns(self, items, what: str, strict: bool) -> np.ndarray:
        items = [items] if isinstance(items, (str, bytes)) or np.isscalar(items) else list(items)
        positions, found = find_ids(pd.Index(np.asarray(self.item_ids)), items)
        if not found.all():
            unknown = [i for i, f in zip(items, found) if not f]
            message = f"{what}: {len(unknown):,} item id(s) not in the model's catalogue: {_first(unknown)}"
            if strict:
                raise RunError(message)
            logger.warning("%s; ignored", message)
        return positions[found]

    # ------------------------------------------------------------------ recommend
    def recommend(
        self,
        user_ids: Iterable,
        k: int = 10,
        *,
        filter_seen: bool = True,
        exclude=None,
        candidates=None,
        strict: bool = False,
        batch_size: int = 1000,
        max_memory: int | None = None,
        id_columns: str = "log",
        explore: float = 0.0,
        seed: int = DEFAULT_SEED,
        uncertainty: bool = False,
        uncertainty_samples: int = 0,
    ) -> pd.DataFrame:
        """Top-k items for known users by raw id: columns ``user_id, rank, item_id, score`` (the ids under the
        log's own column names, e.g. ``customer, rank, product, score``, unless ``id_columns="fixed"``).

        Args:
            user_ids: raw user ids of the log (strings or numbers as in the log; text that
                spells a number finds a numeric id).
            k: items per user.
            filter_seen: never recommend what the user already interacted with in the
                log (any rating, duplicates included); False keeps them.
            exclude: raw item ids never to recommend: one list for everyone, or a
                ``{user_id: [item ids]}`` dict / a ``user_id, item_id`` DataFrame per user.
            candidates: the only raw item ids that may be recommended (same forms).
            strict: refuse unknown or dropped user ids (and unknown item ids) instead of
                skipping them.
            max_memory: bytes the ranking of a batch may take (None: 1 GiB); see
                :meth:`recommend_all`.
            id_columns: ``"log"`` (default): the id columns carry the log's own names (:meth:`id_names`);
                ``"fixed"``: ``user_id`` and ``item_id``.
            explore: t >= 0 (VAE family): rank each user's list from a posterior sample
                ``z = mu + t * sigma * eps`` instead of mu; 0 (default) is the usual ranking, exactly.
            seed: the draw of ``explore``: the same seed, the same lists (each user's draw depends on the
                seed and their history only, not on the batch).
            uncertainty: add a per-user ``uncertainty`` column, the mean posterior sigma (VAE family).
            uncertainty_samples: 0, or S >= 2: add ``rank_spread``, 1 - the mean pairwise overlap of S
                posterior samples' top-k (see :mod:`recvae.models.posterior`).

        Skipped ids are logged as a warning and listed in ``frame.attrs["skipped"]``
        (a :class:`SkippedUsers`). A ``k`` past the catalogue returns the whole catalogue, with a
        warning; ``frame.attrs["k"]`` holds the k used (``"k_asked"`` the one asked, see :meth:`k_label`).
        """
        asked, k = k, self.effective_k(k)
        names = self.id_names(id_columns)
        posterior = self._posterior(explore, seed, uncertainty, uncertainty_samples)
        rows, found_ids, skipped = self.resolve_users(user_ids, strict=strict)
        if skipped:
            logger.warning("%s", skipped.message())
        frames = [self._recommend_rows(rows[s:s + batch_size], k, filter_seen, exclude, candidates, strict,
                                       max_memory, posterior) for s in range(0, len(rows), batch_size)]
        frames = frames or [self._empty_recommendations(posterior)]
        frame = rename_ids(pd.concat(frames, ignore_index=True), names)
        frame.attrs["skipped"] = skipped
        return self._with_k(frame, k, asked)

    def _empty_recommendations(self, posterior: dict | None = None) -> pd.DataFrame:
        frame = pd.DataFrame({"user_id": self.user_ids[:0], "rank": np.zeros(0, np.int64),
                              "item_id": self.item_ids[:0], "score": np.zeros(0, np.float32)})
        for name in _posterior_columns(posterior):
            frame[name] = np.zeros(0, np.float32)
        return frame

    def _posterior(self, explore: float, seed: int, uncertainty: bool, samples: int) -> dict | None:
        """The posterior options of a recommendation, checked (a model without a posterior refuses t > 0
        or uncertainty); None for the usual ranking."""
        ranked = self.model.explorer(explore, seed)  # checks explore and seed
        samples = check_uncertainty(self.model, uncertainty, samples)
        if ranked is self.model and not uncertainty and not samples:
            return None
        return {"ranked": ranked, "seed": int(seed), "uncertainty": bool(uncertainty or samples), "samples": samples}

    def _recommend_rows(self, rows: np.ndarray, k: int, filter_seen: bool, exclude, candidates,
                        strict: bool, max_memory: int | None = None, posterior: dict | None = None) -> pd.DataFrame:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise RunError(f"k must be a positive integer; got {k!r}")
        history = self.history[rows]
        excluded = [self.seen[rows] if filter_seen else None, self._item_filter(exclude, rows, "exclude", strict)[0]]
        allowed, restricted = self._item_filter(candidates, rows, "candidates", strict)
        ranked = self.model if posterior is None else posterior["ranked"]
        items, top = rank_in_blocks(ranked, history, min(int(k), self.n_items), exclude=excluded,
                                    candidates=allowed, restricted=restricted, max_memory=max_memory)
        n, kk = items.shape
        valid = (items >= 0).ravel()
        frame = pd.DataFrame({
            "user_id": np.repeat(self.user_ids[rows], kk)[valid],
            "rank": np.tile(np.arange(1, kk + 1), n)[valid],
            "item_id": self.item_ids[np.maximum(items, 0)].ravel()[valid],
            "score": top.ravel()[valid],
        })
        if posterior is not None and posterior["uncertainty"]:
            found = user_uncertainty(self.model, history, samples=posterior["samples"], k=kk, seed=posterior["seed"],
                                     exclude=excluded, candidates=allowed, restricted=restricted,
                                     max_memory=max_memory)
            for name, values in found.columns().items():
                frame[name] = np.repeat(values, kk)[valid]
        return frame

    def recommend_for_items(self, item_ids: Iterable, k: int = 10, *, exclude=None, candidates=None,
                            strict: bool = False, id_columns: str = "log", explore: float = 0.0,
                            seed: int = DEFAULT_SEED, uncertainty: bool = False,
                            uncertainty_samples: int = 0) -> pd.DataFrame:
        """Top-k for a new user from the raw ids of their items (fold-in, no retraining): ``rank, item_id, score``
        (the item column under the log's own name unless ``id_columns="fixed"``, as in :meth:`recommend`;
        ``explore``, ``seed``, ``uncertainty`` and ``uncertainty_samples`` as there, the columns too).

        ``k`` past the catalogue: as :meth:`recommend` (a warning, ``frame.attrs["k"]``). Unknown ids are
        skipped with a warning (``strict``: refused); ``frame.attrs["items_used"]`` counts the distinct
        known items the fold-in used."""
        asked, k = k, self.effective_k(k)
        names = self.id_names(id_columns)
        posterior = self._posterior(explore, seed, uncertainty, uncertainty_samples)  # refused before any work
        items = self._item_columns(list(item_ids), "items", strict)
        if len(items) == 0:
            raise RunError(f"items (--items) {_first(list(item_ids))}: none is in the model's catalogue of "
                           f"{self.n_items:,} items (ids look like {_first(self.item_ids[:3].tolist(), 3)}); "
                           "nothing to fold in")
        items = np.unique(items)
        row = sp.csr_matrix((np.ones(len(items), np.float32), items, [0, len(items)]), shape=(1, self.n_items))
        recs = self.model.recommend(
            row, k=k,
            exclude=None if exclude is None else self._item_columns(exclude, "exclude", strict),
            candidates=None if candidates is None else self._item_columns(candidates, "candidates", strict),
            explore=explore, seed=seed, uncertainty=uncertainty, uncertainty_samples=uncertainty_samples)
        columns = ["rank", "item_id", "score", *_posterior_columns(posterior)]
        frame = self._with_k(rename_ids(recs.to_frame()[columns], names), k, asked)
        frame.attrs["items_used"] = len(items)  # known and distinct: what the fold-in saw
        return frame

    @property
    def id_aliases(self) -> dict[str, str]:
        """The log's own names of its id columns -> ``user_id`` / ``item_id`` (e.g. ``{"customer": "user_id"}``),
        so that id files may use either."""
        columns = ((self.config or {}).get("data") or {}).get("columns") or {}
        return {str(columns[role]): name for role, name in (("user", "user_id"), ("item", "item_id")) if columns.get(role)}

    def _note_dropped_users(self, listed: Path | None = None) -> None:
        """Users preprocessing dropped are not among "every user": say how many, where they are listed, and how
        to include them."""
        dropped = len(getattr(self, "dropped_user_ids", ()))
        if dropped:
            minimum = ((self.config.get("data") or {}).get("min_user_events") if self.config else None) or "the minimum"
            logger.warning("%s users of the log are not in this run%s: preprocessing dropped them (fewer than %s "
                           "positive events, or none above the rating threshold); train with a lower "
                           "min_user_events (--min-user-events 1) or rating threshold (--min-rating) to include "
                           "them, or recommend for them from their items (recommend_for_items, --items)",
                           f"{dropped:,}", f" (listed in {listed})" if listed else "", minimum)

    @staticmethod
    def dropped_users_path(path: str | os.PathLike) -> Path:
        """Where :meth:`recommend_all` lists the users it left out: ``recs.parquet`` -> ``recs.dropped-users.csv``."""
        path = Path(path)
        return path.with_name(f"{path.stem}.dropped-users.csv")

    def write_dropped_users(self, path: str | os.PathLike, *, id_columns: str = "log") -> Path | None:
        """List the raw ids of the users preprocessing dropped (one column, the user id's name of
        :meth:`id_names`) in the CSV ``path``, atomically; the path, or None when no user was dropped (a list
        left there by an earlier output is emptied, so that it never names another run's users)."""
        path = Path(path)
        dropped = np.asarray(getattr(self, "dropped_user_ids", ()))
        if not len(dropped) and not path.exists():
            return None
        write_table(pd.DataFrame({self.id_names(id_columns)["user_id"]: dropped}), path)
        return path if len(dropped) else None

    def recommend_all(
        self,
        path: str | os.PathLike | None = None,
        k: int = 100,
        *,
        filter_seen: bool = True,
        exclude=None,
        candidates=None,
        batch_size: int = 1000,
        progress: bool | None = None,
        max_memory: int | None = None,
        id_columns: str = "log",
        explore: float = 0.0,
        seed: int = DEFAULT_SEED,
        uncertainty: bool = False,
        uncertainty_samples: int = 0,
    ) -> Path | pd.DataFrame:
        """Top-k for every known user, streamed in user batches.

        With ``path`` (``.parquet``, ``.csv``, ``.json``, ``.jsonl``) the rows
        ``user_id, rank, item_id, score`` are written there atomically and the
        path is returned; without it, one DataFrame (fine for small logs). The id columns
        carry the log's own names unless ``id_columns="fixed"`` (see :meth:`recommend`).

        Users that preprocessing dropped (fewer than ``min_user_events`` positives, e.g. in a
        production fit with ``heldout_users=0``) have no row: a warning counts them, and with
        ``path`` their ids are listed in :meth:`dropped_users_path` (``recs.dropped-users.csv``
        beside ``recs.parquet``; :meth:`write_dropped_users`) to act on: refit with a lower
        ``min_user_events`` (``--min-user-events 1``) or fold in their items (:meth:`recommend_for_items`).

        Memory: each batch of ``batch_size`` users is ranked within ``max_memory`` bytes
        (None: 1 GiB). When a batch's users x items scores would not fit, a model with
        block scoring (``Recommender.block_scoring``) scores the catalogue a block of
        items at a time and merges a running top-k; others are ranked in smaller user
        batches (see :func:`recvae.models.base.rank_in_blocks`). The output does not
        depend on it: e.g. ``run.recommend_all("recs.parquet", max_memory=256 * 2**20)``.

        ``k`` past the catalogue: the whole catalogue, with one warning (a returned frame
        holds ``attrs["k"]``; with ``path``, :meth:`effective_k` tells the k used). ``explore``, ``seed``,
        ``uncertainty`` and ``uncertainty_samples`` as in :meth:`recommend` (a user's list does not depend on
        ``batch_size``).
        """
        from tqdm.auto import tqdm

        asked, k = k, self.effective_k(k)
        names = self.id_names(id_columns)
        posterior = self._posterior(explore, seed, uncertainty, uncertainty_samples)
        if path is not None:
            check_table_output(path)
        starts = range(0, len(self.user_ids), batch_size)
        bar = tqdm(starts, desc="recommend", unit="batch", disable=None if progress is None else not progress)
        if path is None:
            self._note_dropped_users()
            frames = [self._recommend_rows(np.arange(s, min(s + batch_size, len(self.user_ids))), k, filter_seen,
                                           exclude, candidates, False, max_memory, posterior) for s in bar]
            frame = pd.concat(frames, ignore_index=True) if frames else self._empty_recommendations(posterior)
            return self._with_k(rename_ids(frame, names), k, asked)
        with TableWriter(path) as writer:
            for s in bar:
                rows = np.arange(s, min(s + batch_size, len(self.user_ids)))
                writer.write(rename_ids(self._recommend_rows(rows, k, filter_seen, exclude, candidates, False,
                                                             max_memory, posterior), names))
            if writer.rows == 0 and not len(self.user_ids):
                writer.write(rename_ids(self._empty_recommendations(posterior), names))
        self._note_dropped_users(self.write_dropped_users(self.dropped_users_path(path), id_columns=id_columns))
        return Path(path)

    # ------------------------------------------------------------------ embeddings, similar items
    def embed_users(self, user_ids: Iterable | None = None, *, strict: bool = False,
                    batch_size: int = 10_000, id_columns: str = "log", uncertainty: bool = False) -> pd.DataFrame:
        """User embeddings by raw id (all known users by default): ``user_id, mu_0.., sigma_0..`` (the id
        column under the log's own name unless ``id_columns="fixed"``, as in :meth:`recommend`); with
        ``uncertainty`` a last column ``uncertainty``, each user's mean sigma (VAE family; see
        :mod:`recvae.models.posterior`).

        Each user's embedding comes from their positive history (for held-out
        users of a strong split: fold-in and target together). See
        :class:`recvae.models.UserEmbeddings` for what ``mu``/``sigma`` are per model.
        """
        names = self.id_names(id_columns)
        check_uncertainty(self.model, uncertainty, 0)
        if user_ids is None:
            rows, ids = np.arange(len(self.user_ids)), self.user_ids
        else:
            rows, ids, skipped = self.resolve_users(user_ids, strict=strict)
            if skipped:
                logger.warning("%s", skipped.message())
        parts = [self.model.embed_users(self.history[rows[s:s + batch_size]]) for s in range(0, len(rows), batch_size)]
        if not parts:
            raise RunError("no users to embed")
        sigma = None if parts[0].sigma is None else np.concatenate([p.sigma for p in parts])
        frame = UserEmbeddings(np.concatenate([p.mu for p in parts]), sigma).to_frame(ids)
        if uncertainty:
            frame["uncertainty"] = sigma.astype(np.float64).mean(axis=1).astype(np.float32)
        return rename_ids(frame, names)

    def item_embeddings(self, *, id_columns: str = "log") -> pd.DataFrame:
        """Item embeddings: ``item_id, emb_0..`` (decoder rows of a VAE, factors of ALS/BPR; the id column
        under the log's own name unless ``id_columns="fixed"``)."""
        names = self.id_names(id_columns)
        values = np.asarray(self.model.item_embeddings())
        frame = pd.DataFrame({f"emb_{j}": values[:, j] for j in range(values.shape[1])})
        frame.insert(0, names["item_id"], self.item_ids)
        return frame

    def similar_items(self, item_ids: Iterable, k: int = 10, *, id_columns: str = "log") -> pd.DataFrame:
        """The ``k`` items most similar to each raw item id: ``item_id, rank, similar_item_id, score``
        (``product, rank, similar_product, score`` for a log whose item column was ``product``, unless
        ``id_columns="fixed"``).

        The similarity is the model's own (see :meth:`Recommender.item_similarities`):
        EASE's weights B[i, j], item-KNN's neighbour similarities, the cosine of
        ALS/BPR item factors or of the VAE decoder's item rows. A ``k`` past the catalogue
        returns every other item, with a warning; ``frame.attrs["k"]`` holds the k used.
        """
        asked, k = k, self.effective_k(k, similar=True)
        names = self.id_names(id_columns)
        ids = [item_ids] if isinstance(item_ids, (str, bytes)) or np.isscalar(item_ids) else list(item_ids)
        columns = lookup_ids(pd.Index(np.asarray(self.item_ids)), ids, "item")
        recs = self.model.similar_items(columns, k=k, by_column=True)
        n, kk = recs.items.shape
        valid = recs.valid.ravel()
        return self._with_k(rename_ids(pd.DataFrame({
            "item_id": np.repeat(self.item_ids[columns], kk)[valid],
            "rank": np.tile(np.arange(1, kk + 1), n)[valid],
            "similar_item_id": self.item_ids[np.maximum(recs.items, 0)].ravel()[valid],
            "score": recs.scores.ravel()[valid],
        }), names), k, asked)


def _posterior_columns(posterior: dict | None) -> list[str]:
    """The per-user columns a recommendation with these posterior options adds (see :meth:`RunQueries._posterior`)."""
    if posterior is None or not posterior["uncertainty"]:
        return []
    return ["uncertainty", "rank_spread"] if posterior["samples"] else ["uncertainty"]
