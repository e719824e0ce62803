"""Room "runs": the Run API's wiring (recvae/runs/) -- recommend by raw id in batches, per-user
exclusion and candidate lists, new users by item list, k at the catalogue, strict ids, the fit's
checkpoint settings. Caught by tests/test_runs_wiring.py, whose oracle is numpy over the raw log
and the model's weights, never Run.recommend itself."""

QUERIES = "recvae/runs/queries.py"
FITTING = "recvae/runs/fitting.py"
T_RUNS = ("tests/test_runs_wiring.py", "tests/test_runs.py")

MUTATIONS = [
    dict(name="runs-wiring-all-users-dropped-list", file=QUERIES,
         old="self._note_dropped_users(self.write_dropped_users(self.dropped_users_path(path), id_columns=id_columns))",
         new="self._note_dropped_users()",
         tests=("tests/test_output_names.py",),
         why="recommend_all(path) warns about the users preprocessing dropped but never lists them beside the file"),
    dict(name="runs-wiring-all-users-id-columns", file=QUERIES,
         old="        names = self.id_names(id_columns)\n        posterior = self._posterior(explore, seed, uncertainty, "
             "uncertainty_samples)\n        if path is not None:",
         new="        names = self.id_names(\"log\")\n        posterior = self._posterior(explore, seed, uncertainty, "
             "uncertainty_samples)\n        if path is not None:",
         tests=("tests/test_output_names.py",),
         why="recommend_all(id_columns='fixed') / --all-users --id-columns fixed still writes the log's names"),
    dict(name="runs-rows-user-labels-in-sorted-order", file=QUERIES,
         old='"user_id": np.repeat(self.user_ids[rows], kk)[valid],',
         new='"user_id": np.repeat(self.user_ids[np.sort(rows)], kk)[valid],',
         tests=T_RUNS,
         why="rows are labelled with the users in id order, not the order asked: right for in-order requests "
             "(the first 3 users), every user's rows mislabelled in a shuffled batch"),
    dict(name="runs-rows-per-user-lists-shift-past-unknown-users", file=QUERIES,
         old="[v for v, f in zip(spec.values(), found) if f]",
         new="list(spec.values())",
         tests=T_RUNS,
         why="a {user: items} dict naming an unknown user pairs each later user with the previous user's list"),
    dict(name="runs-rows-heldout-history-lacks-target", file=FITTING,
         old="rows += [held.fold_in, held.target]",
         new="rows += [held.fold_in, held.fold_in]",
         tests=T_RUNS,
         why="held-out users are served from their fold-in half only: their recommendations ignore half "
             "their history (the target items are still masked as seen, so nothing looks wrong)"),
    dict(name="runs-wiring-per-user-candidates-restrict-everyone", file=QUERIES,
         old="candidates=allowed, restricted=restricted, max_memory=max_memory)",
         new="candidates=allowed, restricted=None, max_memory=max_memory)",
         tests=T_RUNS,
         why="per-user candidate lists stop saying which users they apply to: users without a list get nothing"),
    dict(name="runs-direction-per-user-candidates-apply-to-the-others", file=QUERIES,
         old="        return mask, applies\n",
         new="        return mask, ~applies\n",
         tests=T_RUNS,
         why="per-user candidate lists restrict the users they do not name, and leave the named ones free"),
    dict(name="runs-wiring-new-user-candidates-dropped", file=QUERIES,
         old='candidates=None if candidates is None else self._item_columns(candidates, "candidates", strict),\n'
             '            explore=explore',
         new="candidates=None,\n            explore=explore",
         tests=T_RUNS,
         why="recommend_for_items accepts candidates and never passes them on"),
    dict(name="runs-boundary-k-at-the-catalogue-loses-an-item", file=QUERIES,
         old="history, min(int(k), self.n_items)",
         new="history, min(int(k), self.n_items - 1)",
         tests=T_RUNS,
         why="k is clamped one short of the catalogue: k = n_items returns n_items - 1 items"),
    dict(name="runs-boundary-item-column-zero-never-served", file=QUERIES,
         old="valid = (items >= 0).ravel()",
         new="valid = (items > 0).ravel()",
         tests=T_RUNS,
         why="the padding test is off by one: the catalogue's first item is dropped whenever it is recommended"),
    dict(name="runs-all-to-any-strict-item-ids", file=QUERIES,
         old="        if not found.all():\n            unknown = [i for i, f in zip(items, found) if not f]",
         new="        if not found.any():\n            unknown = [i for i, f in zip(items, found) if not f]",
         tests=T_RUNS,
         why="strict refuses a list only when none of its items is known: one typo among known ids passes"),
    dict(name="runs-stale-cache-fit-checkpoint-kept", file=FITTING,
         old="            estimator.set_params(checkpoint=None, resume=False)",
         new="                    pass",
         tests=T_RUNS,
         why="the fitted (and saved) model keeps checkpoint=<the deleted work folder>, resume=True: its next "
             "fit resumes from whatever checkpoint lies there then"),
]
