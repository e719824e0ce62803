"""Room "living": a run updated with new events (recvae/runs/update.py) and warm starts
(recvae/models/warm_start.py, ALS's warm factors). Caught by tests/test_living_model.py, whose
oracle for a fold-in is the old model scoring a row built from the raw logs."""

UPDATE = "recvae/runs/update.py"
WARM = "recvae/models/warm_start.py"
ALS = "recvae/models/implicit_models.py"
T_LIVING = ("tests/test_living_model.py",)

MUTATIONS = [
    dict(name="living-rows-new-positives-not-merged", file=UPDATE,
         old="history = _binary(_grown(run.history, *shape) + _pairs(events.users, events.items, user_index, item_index))",
         new="history = _binary(_grown(run.history, *shape))",
         tests=T_LIVING,
         why="the updated run holds the old rows: new events change nothing for known users, new users have empty rows"),
    dict(name="living-wiring-seen-ignores-new-events", file=UPDATE,
         old="seen = _binary(_grown(run.seen, *shape) + events.log.seen_rows(user_ids, item_ids) + history)",
         new="seen = _binary(_grown(run.seen, *shape) + history)",
         tests=T_LIVING,
         why="new events under the rating threshold are not 'already seen': the update recommends them back"),
    dict(name="living-rows-warm-rows-not-remapped", file=WARM,
         old="value.index_copy_(axes[0], new_at, old.index_select(axes[0], old_at))",
         new="value.index_copy_(axes[0], new_at, old.index_select(axes[0], new_at))",
         tests=T_LIVING,
         why="a warm start copies the old rows by column, not by item id: every item whose column moved starts "
             "from another item's weights"),
    dict(name="living-errors-output-may-be-the-old-run", file=UPDATE,
         old="if out is not None and run.path is not None and _same_place(Path(out.path), run.path):",
         new="if False:",
         tests=T_LIVING,
         why="Run.update(output=RunOutput(run.path, overwrite=True)) replaces the run being updated"),
    dict(name="living-wiring-als-warm-start-ignored", file=ALS,
         old="y = grown_rows(warm.previous.item_factors_, warm.positions, fresh)",
         new="y = fresh",
         tests=T_LIVING,
         why="an ALS warm start starts from random item factors: the earlier run is read and then ignored"),
]
