"""Room "sizing": defaults from the log's shape, the history's wall time, the joint model's scale
calibration and its memory plan (issue 30, parts 1-4). Caught by tests/test_sizing.py,
tests/test_joint_sparse.py, tests/test_joint_wiring.py and tests/test_experiment.py."""

SIZING = "recvae/models/sizing.py"
JOINT = "recvae/models/joint.py"
T_SIZING = ("tests/test_sizing.py",)
T_JOINT = ("tests/test_joint_sparse.py", "tests/test_joint_wiring.py")

MUTATIONS = [
    dict(name="sizing-wiring-given-params-overridden", file="recvae/runs/fitting.py",
         old="apply_sizing(estimator, LogShape.of(the_split.train), given=params, say=say)",
         new="apply_sizing(estimator, LogShape.of(the_split.train), given=(), say=say)",
         tests=T_SIZING, why="--param patience=50 is silently replaced by the sparse-log default"),
    dict(name="sizing-boundary-sampled-from-items", file=SIZING,
         old="    if shape.n_items >= SAMPLED_FROM_ITEMS and",
         new="    if shape.n_items > SAMPLED_FROM_ITEMS * 4 and",
         tests=T_SIZING, why="an 80k-item log keeps the full softmax: epochs of minutes, a fit past 15 minutes"),
    dict(name="sizing-all-to-any-groups-refused-together", file=SIZING,
         old="    return [choice for group in groups if group and _accepted(model, group) for choice in group]",
         new="    every = [c for group in groups for c in group]\n    return every if every and _accepted(model, every) else []",
         tests=T_SIZING, why="a model that refuses the sampled softmax also loses the sparse log's patience"),
    dict(name="sizing-stale-cache-elapsed-restarts-each-epoch", file="recvae/training/history.py",
         old='    row["elapsed_seconds"] = before + row.get("train_seconds", 0.0) + row.get("eval_seconds", 0.0)',
         new='    row["elapsed_seconds"] = row.get("train_seconds", 0.0) + row.get("eval_seconds", 0.0)',
         tests=T_SIZING, why="the time-to-quality column shows each epoch's own seconds, not the wall time so far"),
    dict(name="sizing-wiring-calibration-skipped", file=JOINT,
         old="        if weights is not None and config.calibrate_scale and config.linear_init == \"edlae\":",
         new="        if weights is not None and config.calibrate_scale and config.linear_init == \"zeros\":",
         tests=T_JOINT, why="on a 10-events-per-user log the linear path is drowned: validation NDCG@100 0.004"),
    dict(name="sizing-direction-calibration-ratio", file=JOINT,
         old="        ratio = float(np.clip(REFERENCE_SPREAD / spread, 1e-2, 1e4))",
         new="        ratio = float(np.clip(spread / REFERENCE_SPREAD, 1e-2, 1e4))",
         tests=T_JOINT, why="a sparse log's scale shrinks instead of growing"),
    dict(name="sizing-all-to-any-linear-path-left-out-of-the-plan", file=JOINT,
         old="        return {**parts, **linear_path_parts(n_items, self.config)}",
         new="        return parts",
         tests=T_JOINT, why="a catalogue whose W does not fit builds the net first: the OOM killer, no message"),
]
