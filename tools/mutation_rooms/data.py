"""Bugs planted in preprocessing (recvae/data/interactions.py, recvae/data/logs.py) and the splits
(recvae/data/splits.py); tests/test_data_wiring.py is meant to catch each (thresholds and limits on both
sides, weights and times per event, held-out counts that need rounding). tools/mutate.py's own list has
further split-* mutations; none of their snippets is repeated here."""

INTERACTIONS = "recvae/data/interactions.py"
SPLITS = "recvae/data/splits.py"
T = ("tests/test_data_wiring.py", "tests/test_interactions.py", "tests/test_splits.py", "tests/test_runs.py")

MUTATIONS = [
    dict(name="data-boundary-rating-threshold-inclusive", file=INTERACTIONS,
         old="keep = valid if rating_threshold is None else valid & (ratings > rating_threshold)",
         new="keep = valid if rating_threshold is None else valid & (ratings >= rating_threshold)",
         tests=T, why="a rating exactly at the threshold (3.5 on MovieLens) becomes a positive"),
    dict(name="data-boundary-rating-scale-lowest", file=INTERACTIONS,
         old="valid &= (ratings >= low) & (ratings <= high)",
         new="valid &= (ratings > low) & (ratings <= high)",
         tests=T, why="the lowest rating of the scale (0.5 stars) is counted invalid"),
    dict(name="data-rows-times-not-filtered-with-ratings", file=INTERACTIONS,
         old="            events = events.take(keep)\n",
         new="            events = replace(events.take(keep), times=events.times)\n",
         tests=T, why="the rating filter leaves the times unfiltered: later events take earlier rows' times"),
    dict(name="data-all-to-any-weight-check", file=INTERACTIONS,
         old="    if bad.any():\n",
         new="    if bad.all():\n",
         tests=T, why="a weight column is refused only when every weight is bad"),
    dict(name="data-wiring-log-min-item-events", file="recvae/data/logs.py",
         old="min_item_interactions=min_item_interactions,",
         new="min_item_interactions=0,",
         tests=T, why="InteractionLog.interactions drops its min_item_interactions"),
    dict(name="data-boundary-heldout-fraction-truncated", file=SPLITS,
         old="n = int(round(n_heldout_users * n_users))",
         new="n = int(n_heldout_users * n_users)",
         tests=T, why="a held-out fraction of users is truncated (0.1 of 37 users: 3, not 4)"),
    dict(name="data-rows-heldout-weights-in-column-order", file=SPLITS,
         old="values = m.data[event_pos]",
         new="values = m.data[np.repeat(starts, lengths) + offset_in_user]",
         tests=T, why="held-out users' weights are taken in column order while their items are in log order"),
    dict(name="data-wiring-weak-parts-binarised", file=SPLITS,
         old="out.data = np.where(mask, out.data, 0).astype(np.float32)",
         new="out.data = np.where(mask, 1.0, 0).astype(np.float32)",
         tests=T, why="weak and temporal splits drop the interaction weights"),
    dict(name="data-direction-temporal-ties-late-log-first", file=SPLITS,
         old="rank = np.lexsort((order, data.timestamps))",
         new="rank = np.lexsort((-order, data.timestamps))",
         tests=T, why="events at the same time: the earliest in the log are held out first"),
    dict(name="data-all-to-any-holdout-fractions", file=SPLITS,
         old='for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):',
         new='for name, f in (("validation_fraction", validation_fraction),):',
         tests=T, why="only the validation fraction is checked: a negative test fraction passes"),
]
