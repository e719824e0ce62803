"""Room "storage": model-file checks (recvae/runtime/storage.py, recvae/models/files.py) and the run directory's
atomic replacement and load-time checks (recvae/runs/directory.py: write_run, read_run). Caught by
tests/test_storage_wiring.py: one flaw per file (one NaN weight, one unexpected or missing weight
name, one transposed weight, one member's CRC, a users file one user short), and a replacement
failing at each of its steps."""

STORAGE = "recvae/runtime/storage.py"
FILES = "recvae/models/files.py"
RUN_DIRECTORY = "recvae/runs/directory.py"
T_STORAGE = ("tests/test_storage_wiring.py", "tests/test_faults.py", "tests/test_run_faults.py")

MUTATIONS = [
    dict(name="storage-all-to-any-finite-weights", file=STORAGE,
         old="not bool(torch.isfinite(tensor).all())",
         new="not bool(torch.isfinite(tensor).any())",
         tests=T_STORAGE,
         why="a weight tensor is refused only when every value is NaN/inf: one NaN weight loads and scores NaN"),
    dict(name="storage-all-to-any-unexpected-weight-names", file=STORAGE,
         old="    extra = [k for k in state_dict if k not in expected]\n",
         new="    extra = []\n",
         tests=T_STORAGE,
         why="weight names are checked one way only: an unexpected weight passes the check and fails in "
             "torch's load_state_dict with a multi-line RuntimeError (a traceback from Run.load)"),
    dict(name="storage-direction-missing-and-unexpected-swapped", file=STORAGE,
         old="    missing = [k for k in expected if k not in state_dict]\n"
             "    extra = [k for k in state_dict if k not in expected]\n",
         new="    missing = [k for k in state_dict if k not in expected]\n"
             "    extra = [k for k in expected if k not in state_dict]\n",
         tests=T_STORAGE,
         why="the set differences are flipped: a missing weight is reported as unexpected and vice versa"),
    dict(name="storage-rows-transposed-weight-accepted", file=STORAGE,
         old="for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])]",
         new="for k in expected if k in state_dict and sorted(state_dict[k].shape) != sorted(expected[k])]",
         tests=T_STORAGE,
         why="shapes compared as sets of sizes: a transposed (rows for columns) weight passes the check"),
    dict(name="storage-all-to-any-crc-first-member-only", file=STORAGE,
         old="    for info in zf.infolist():",
         new="    for info in zf.infolist()[:1]:",
         tests=T_STORAGE,
         why="only the first zip member's CRC is compared: damage to any later tensor loads silently"),
    dict(name="storage-boundary-item-id-map-longer-accepted", file=FILES,
         old='or len(values) != n_items:',
         new='or len(values) < n_items:',
         tests=T_STORAGE,
         why="an item id map longer than the model's items passes: the ids past the end are silently unused "
             "and every id after a shifted entry names the wrong item"),
    dict(name="storage-wiring-failed-rename-not-rolled-back", file=RUN_DIRECTORY,
         old="                os.replace(old, path)\n",
         new="                pass\n",
         tests=T_STORAGE,
         why="when the final rename fails the old run stays moved aside: no run at the path at all"),
    dict(name="storage-stale-cache-replaced-run-left-behind", file=RUN_DIRECTORY,
         old="        shutil.rmtree(old, ignore_errors=True)\n",
         new="        pass\n",
         tests=T_STORAGE,
         why="every overwrite leaves the previous run beside the new one as .<name>.replaced-<random>"),
    dict(name="storage-wiring-run-dir-private", file="recvae/runs/workdir.py",
         old='return _new_folder(path, lambda token: f".{path.name}.{token}.staging", 0o777)',
         new='return _new_folder(path, lambda token: f".{path.name}.{token}.staging", 0o700)',
         tests=T_STORAGE,
         why="the staging folder is made 0700, not 0777 less the umask: every run directory is private, other "
             "users cannot read it"),
    dict(name="storage-all-to-any-run-shapes", file=RUN_DIRECTORY,
         old="if history.shape != (len(user_ids), model.n_items_) or seen.shape != history.shape",
         new="if history.shape != (len(user_ids), model.n_items_) and seen.shape != history.shape",
         tests=T_STORAGE,
         why="a users file one user short (or with a seen matrix of another width) loads and mislabels users"),
]
