"""Independent oracles for the wiring tests: rankings computed from the raw log and a model's raw
scores alone, never through the Run / recommend path they check."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Run.fit's default rating threshold (--min-rating): the model's input is the events rated above it.
POSITIVE = 3.5


class ScoreOracle:
    """Rankings from the log and the model's raw scores; nothing of Run's recommend path."""

    def __init__(self, run, log) -> None:
        self.run = run
        self.ids = run.item_ids.tolist()
        self.col = {item: j for j, item in enumerate(self.ids)}
        self.seen, self.positive = {}, {}
        for user, events in log.groupby("user"):
            self.seen[user] = {self.col[i] for i in events["item"] if i in self.col}
            self.positive[user] = {self.col[i] for i in events.loc[events["rating"] > POSITIVE, "item"] if i in self.col}

    def cols(self, items) -> set:
        return {self.col[i] for i in items}

    def _rank(self, history: set, k: int, banned: set, allowed: set | None) -> list[tuple]:
        n = self.run.n_items
        cols = sorted(history)
        row = sp.csr_matrix((np.ones(len(cols), np.float32), (np.zeros(len(cols), np.int64), cols)), shape=(1, n))
        scores = np.asarray(self.run.model.score(row), dtype=np.float32)[0]
        return self._top(scores, k, banned, allowed)

    def _top(self, scores: np.ndarray, k: int, banned: set, allowed: set | None) -> list[tuple]:
        order = np.lexsort((np.arange(len(scores)), -scores))  # best score first, ties: the lower column
        kept = [j for j in order.tolist() if j not in banned and (allowed is None or j in allowed)][:k]
        return [(rank, self.ids[j], float(scores[j])) for rank, j in enumerate(kept, start=1)]

    def user(self, user, k, *, filter_seen=True, exclude=(), candidates=None) -> list[tuple]:
        banned = (self.seen[user] if filter_seen else set()) | self.cols(exclude)
        return self._rank(self.positive[user], k, banned, None if candidates is None else self.cols(candidates))

    def new_user(self, items, k, *, exclude=(), candidates=None) -> list[tuple]:
        history = self.cols(items)
        return self._rank(history, k, history | self.cols(exclude),
                          None if candidates is None else self.cols(candidates))

    def similar(self, item, k) -> list[tuple]:
        j = self.col[item]
        return self._top(np.asarray(self.run.model.weights_[j], dtype=np.float32), k, {j}, None)
