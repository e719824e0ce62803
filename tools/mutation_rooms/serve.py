"""Bugs planted in the HTTP server (recvae/serving/server.py, service.py, batching.py); tests/test_serve_wiring.py is meant to catch each."""

F = "recvae/serving/server.py"
SVC = "recvae/serving/service.py"
BATCH = "recvae/serving/batching.py"
T = ("tests/test_serve_wiring.py", "tests/test_serve.py")

MUTATIONS = [
    dict(name="serve-wiring-new-user-exclude", file=F,
         old="run.recommend_for_items, list(items), k, exclude=None if exclude is None else list(exclude),",
         new="run.recommend_for_items, list(items), k, exclude=None,",
         tests=T, why="/recommend/new-user checks its exclude list, then never hands it to the library"),
    dict(name="serve-wiring-new-user-candidates", file=F,
         old='candidates=None if candidates is None else list(candidates), strict=True, id_columns="fixed",',
         new='candidates=None, strict=True, id_columns="fixed",',
         tests=T, why="/recommend/new-user ignores candidates: any item may come back"),
    dict(name="serve-wiring-worker-max-list", file=F,
         old='casts = {"max_batch": int, "max_list": int,',
         new='casts = {"max_batch": int,',
         tests=T, why="serve(workers=N): the worker processes drop max_list (decoded options filter unknown keys)"),
    dict(name="serve-direction-worker-batching", file=F,
         old='"micro_batching": lambda v: v == "True",',
         new='"micro_batching": bool,',
         tests=T, why="serve(workers=N, micro_batching=False): bool('False') is True, the workers batch anyway"),
    dict(name="serve-boundary-k-catalogue", file=SVC,
         old="if not 1 <= k <= self.run.n_items:",
         new="if not 1 <= k < self.run.n_items:",
         tests=T, why="k equal to the number of items is refused (422) though documented as allowed"),
    dict(name="serve-boundary-max-list", file=SVC,
         old="if len(items) > self.max_list:",
         new="if len(items) >= self.max_list:",
         tests=T, why="a list of exactly max_list ids is refused"),
    dict(name="serve-rows-batch-split-by-position", file=SVC,
         old='for user, positions in frame.groupby("user_id", sort=False).indices.items():',
         new="for user, positions in zip(user_ids, np.array_split(np.arange(len(frame)), len(user_ids))):",
         tests=T, why="a batch's rows are cut into equal parts per user: wrong once a user has fewer than k items"),
    dict(name="serve-all-to-any-item-lookup", file=SVC,
         old='lookup_ids(self.item_index, list(items), f"{what} item")',
         new='lookup_ids(self.item_index, list(items)[:1], f"{what} item")',
         tests=T, why="only the first id of a list is checked; later unknown ids pass (200, silently ignored)"),
    dict(name="serve-all-to-any-app-options", file=F,
         old="if max_batch < 1 or max_wait_ms < 0 or max_list < 1:",
         new="if max_batch < 1 and max_wait_ms < 0 and max_list < 1:",
         tests=T, why="create_app refuses bad options only when all of them are bad"),
    dict(name="serve-stale-cache-batch-results", file=BATCH,
         old="        results: dict[tuple, Any] = {}\n        for key, members in groups.items():\n",
         new="        results: dict[tuple, Any] = self.__dict__.setdefault('_results', {})\n"
             "        for key, members in groups.items():\n            if key in results:\n                continue\n",
         tests=T, why="the batcher keeps an earlier batch's answers per option key: later users get stale rows"),
]
