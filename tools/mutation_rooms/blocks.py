"""Bugs planted in the blocked algorithms: sparse EASE's fit in chunks, the models' item block scorers,
the block planner and the ranking's user batches and item blocks; tests/test_blocks_wiring.py is meant
to catch each (at sizes with several blocks, on weighted rows, against numpy oracles)."""

SPARSE = "recvae/models/sparse_ease.py"
T = ("tests/test_blocks_wiring.py", "tests/test_sparse_ease.py", "tests/test_ranking.py")

MUTATIONS = [
    dict(name="blocks-stale-cache-sparse-ease-columns", file=SPARSE,
         old="        self.weights_ = _fit_weights(matrix, self.l2, self.neighbours)\n        self._by_column = None\n",
         new="        self.weights_ = _fit_weights(matrix, self.l2, self.neighbours)\n",
         tests=T, why="a refit of the same shape keeps the old B by columns: blocks (recommend) score the old model"),
    dict(name="blocks-stale-cache-als-fold-in-gram", file="recvae/models/implicit_models.py",
         old="        gram = y.T @ y\n        gram[np.diag_indices_from(gram)] += self.regularization\n",
         new="        if getattr(self, '_fold_in_gram', None) is None:\n"
             "            self._fold_in_gram = y.T @ y\n"
             "            self._fold_in_gram[np.diag_indices_from(self._fold_in_gram)] += self.regularization\n"
             "        gram = self._fold_in_gram\n",
         tests=T, why="ALS caches YᵀY + λI for the fold-in and keeps it across a refit or set_params"),
    dict(name="blocks-rows-sparse-gram-keys-of-the-first-chunk", file=SPARSE,
         old="rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(gram.indptr[start:stop + 1]))",
         new="rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(gram.indptr[start:stop + 1]))",
         tests=T, why="the Gram lookup keys of every chunk after the first name the first chunk's rows"),
    dict(name="blocks-rows-neighbourhood-diagonal-local", file=SPARSE,
         old="candidate = (columns != rows + row_start) & (values > 0)",
         new="candidate = (columns != rows) & (values > 0)",
         tests=T, why="past the first run of rows an item is its own neighbour (and another item is left out)"),
    dict(name="blocks-all-to-any-gram-head-lookup", file=SPARSE,
         old="dense = (a >= 0) & (b >= 0)",
         new="dense = (a >= 0) | (b >= 0)",
         tests=T, why="a cell is read from the dense head when either item (not both) is in it"),
    dict(name="blocks-wiring-ease-block-drops-weights", file="recvae/models/ease.py",
         old="compact = sp.csr_matrix((rows.data, np.searchsorted(used, rows.indices), rows.indptr),",
         new="compact = sp.csr_matrix((np.ones_like(rows.data), np.searchsorted(used, rows.indices), rows.indptr),",
         tests=T, why="EASE's blocks (not the whole catalogue) score binarised rows: weights lost under max_memory"),
    dict(name="blocks-wiring-joint-block-drops-weights", file="recvae/nn/joint.py",
         old='return F.embedding_bag(entries, rows, x.crow_indices[:-1], mode="sum",\n'
             '                               per_sample_weights=values.to(rows.dtype))',
         new='return F.embedding_bag(entries, rows, x.crow_indices[:-1], mode="sum")',
         tests=T, why="the joint model's item-item path sums W's rows unweighted in blocks (score weighs them)"),
    dict(name="blocks-rows-restricted-rows-of-the-first-batch", file="recvae/models/ranking.py",
         old="restricted=None if restricted is None else np.asarray(restricted, dtype=bool)[part])",
         new="restricted=None if restricted is None else np.asarray(restricted, dtype=bool)[: stop - start])",
         tests=T, why="every user batch takes the first batch's restricted flags"),
    dict(name="blocks-boundary-solve-padding-slot", file=SPARSE,
         old="valid = slots[None, :] < sizes[items][:, None]",
         new="valid = slots[None, :] <= sizes[items][:, None]",
         tests=T, why="in a batch of unequal neighbourhoods a shorter one takes the next item's first neighbour"),
    dict(name="blocks-direction-merge-later-block-first", file="recvae/evaluation/ranking.py",
         old="values, items = torch.cat([best_values, values], dim=1), torch.cat([best_items, items], dim=1)",
         new="values, items = torch.cat([values, best_values], dim=1), torch.cat([items, best_items], dim=1)",
         tests=T, why="ties across blocks go to the later block's (higher) items"),
]
