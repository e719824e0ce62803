"""Bugs planted in the HTTP server (recvae/serving/server.py, service.py, batching.py); tests/test_serve_wiring.py is meant to catch each."""

F = "recvae/serving/server.py"
SVC = "recvae/serving/service.py"
BATCH = "recvae/serving/batching.py"
T = ("tests/test_serve_wiring.py", "tests/test_serve.py")
T_LOAD = ("tests/test_serve_load.py",)

MUTATIONS = [
    dict(name="serve-wiring-new-user-exclude", file=F,
         old='key = (True, service.check_items(body.exclude, "exclude"), service.check_items(body.candidates, "candidates"),',
         new='key = (True, service.check_items(body.exclude, "exclude") and None, service.check_items(body.candidates, "candidates"),',
         tests=T, why="/recommend/new-user checks its exclude list, then never hands it to the library"),
    dict(name="serve-wiring-new-user-candidates", file=F,
         old='key = (True, service.check_items(body.exclude, "exclude"), service.check_items(body.candidates, "candidates"),',
         new='key = (True, service.check_items(body.exclude, "exclude"), service.check_items(body.candidates, "candidates") and None,',
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
         old="if not 1 <= k <= self.n_items:",
         new="if not 1 <= k < self.n_items:",
         tests=T, why="k equal to the number of items is refused (422) though documented as allowed"),
    dict(name="serve-boundary-max-list", file=SVC,
         old="if len(items) > self.max_list:",
         new="if len(items) >= self.max_list:",
         tests=T, why="a list of exactly max_list ids is refused"),
    dict(name="serve-rows-batch-split-by-position", file=SVC,
         old="            kept = row_items >= 0\n",
         new="            kept = slice(None)\n",
         tests=T, why="a ranking's padding (-1, fewer eligible items than k) is answered as items: wrong once a user has fewer than k items"),
    dict(name="serve-all-to-any-item-lookup", file=SVC,
         old="        if None in found:\n",
         new="        if found[:1] == [None]:\n",
         tests=T, why="only the first id of a list is checked; a later unknown id is not named (a 500, not a 404 listing it)"),
    dict(name="serve-all-to-any-app-options", file=F,
         old="if max_batch < 1 or max_wait_ms < 0 or max_list < 1 or max_queue < 1:",
         new="if max_batch < 1 and max_wait_ms < 0 and max_list < 1 and max_queue < 1:",
         tests=T, why="create_app refuses bad options only when all of them are bad"),
    dict(name="serve-stale-cache-batch-results", file=BATCH,
         old="        results: dict[tuple, Any] = {}\n        for group, members in groups.items():\n",
         new="        results: dict[tuple, Any] = Batcher._score_groups.__dict__.setdefault('_results', {})\n"
             "        for group, members in groups.items():\n            if group in results:\n                continue\n",
         tests=T, why="the batcher keeps an earlier batch's answers per option key: later users get stale rows"),
    dict(name="serve-boundary-queue-bound", file=BATCH,
         old="if len(self._waiting) >= self.max_queue:",
         new="if len(self._waiting) > self.max_queue:",
         tests=T_LOAD, why="one request more than max_queue waits: the bound the 503 promises is off by one"),
    dict(name="serve-wiring-fold-in-weights-dropped", file=SVC,
         old="values = [np.ones(len(c), np.float32) if w is None else np.asarray(w, np.float32) for c, w in users]",
         new="values = [np.ones(len(c), np.float32) for c, w in users]",
         tests=T_LOAD, why="/recommend/new-user checks its weights, then folds every item in at weight 1"),
]
