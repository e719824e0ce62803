"""Room "trust": what reading a run trusts (recvae/runs/trust.py, read_run) and the failed-run refusal
(issue 35, parts 2 and 3). Caught by tests/test_run_trust.py: links inside the run, names the manifest
omits, an empty listing, a damaged npz without verification, a failed run used by a command, and
--allow-failed on its way to Run.load and the server."""

TRUST = "recvae/runs/trust.py"
T_TRUST = ("tests/test_run_trust.py",)

MUTATIONS = [
    dict(name="trust-all-to-any-links-inside-the-run", file=TRUST,
         old="            if os.path.islink(os.path.join(folder, name)):\n",
         new="            if os.path.islink(os.path.join(folder, name)) and name.startswith('.'):\n",
         tests=T_TRUST, why="a model file replaced by a link to a file outside the run is loaded silently"),
    dict(name="trust-all-to-any-needed-file-unlisted", file=TRUST,
         old="    unlisted = [name for name in names if name not in listed]\n",
         new="    unlisted = []\n",
         tests=T_TRUST, why="users.npz or config.json is opened although the manifest does not list it"),
    dict(name="trust-all-to-any-empty-listing", file=TRUST,
         old="    if not listed:\n        raise RunError(",
         new="    if listed is None:\n        raise RunError(",
         tests=T_TRUST, why='"files": {} in manifest.json: the tester\'s case, the run\'s files loaded unchecked'),
    dict(name="trust-errors-npz-damage-escapes", file="recvae/runs/directory.py",
         old="    arrays = trust.read_run_npz(path / USERS_FILE)\n",
         new="    arrays = dict(np.load(path / USERS_FILE))\n",
         tests=T_TRUST, why="a truncated users.npz ends in zipfile.BadZipFile's traceback through verify=False"),
    dict(name="trust-all-to-any-failed-status-accepted", file=TRUST,
         old='    if allow_failed or status in (None, "success"):\n',
         new='    if allow_failed or status in (None, "success", "failed"):\n',
         tests=T_TRUST, why="recvae recommend/evaluate/serve/export use a diverged run and exit 0"),
    dict(name="trust-wiring-allow-failed-dropped-by-the-cli", file="recvae/cli/common.py",
         old='        allow_failed = getattr(args, "allow_failed", False)\n',
         new="        allow_failed = False\n",
         tests=T_TRUST, why="--allow-failed never reaches Run.load: a failed run cannot be used at all"),
    dict(name="trust-wiring-allow-failed-lost-by-workers", file="recvae/serving/server.py",
         old='"max_body_bytes": int, "allow_failed": lambda v: v == "True",',
         new='"max_body_bytes": int, "allow_failed": lambda v: False,',
         tests=T_TRUST, why="serve --workers N --allow-failed: each worker process refuses the run it was told to serve"),
]
