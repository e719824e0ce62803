"""Room "security": a run's writes touch nothing outside it, full disks and failed renames end cleanly
(issue 35: recvae/runs/workdir.py, recvae/data/writing.py, recvae/data/tables.py, recvae/runs/fitting.py).
Caught by tests/test_run_security.py: planted links at the work folder and its lock, leftovers of killed
writes, a full disk at each writer, modes under two umasks, an output refused before the log is read."""

WORKDIR = "recvae/runs/workdir.py"
WRITING = "recvae/data/writing.py"
FITTING = "recvae/runs/fitting.py"
T_SECURITY = ("tests/test_run_security.py",)

MUTATIONS = [
    dict(name="security-all-to-any-work-link-accepted", file=WORKDIR,
         old='    if stat.S_ISLNK(st.st_mode):\n        raise _refuse(path, "is a symbolic link',
         new='    if False:\n        raise _refuse(path, "is a symbolic link',
         tests=T_SECURITY,
         why="a link planted at the work folder or its lock is not named as one: the refusal no longer says what "
             "to remove"),
    dict(name="security-wiring-lock-opened-through-a-link", file=WORKDIR,
         old="_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK",
         new="_OPEN_FLAGS = os.O_NONBLOCK",
         tests=T_SECURITY,
         why="a lock link planted in a killed run's work folder is followed: --resume truncates its target"),
    dict(name="security-errors-killed-overwrite-not-moved-back", file=WORKDIR,
         old='if _leftover_kind(path.name, entry.name) == "replaced" and empty_target and _holds_run(folder):',
         new="if False:",
         tests=T_SECURITY,
         why="a run moved aside by a killed overwrite is deleted as a leftover instead of moved back"),
    dict(name="security-errors-leftovers-kept", file=WORKDIR,
         old="        shutil.rmtree(folder, ignore_errors=True)\n        logger.info(",
         new="        pass\n        logger.info(",
         tests=T_SECURITY,
         why="staging folders and moved-aside runs of killed writes pile up beside the run"),
    dict(name="security-all-to-any-torch-write-failure-on-a-full-disk-not-told", file=WRITING,
         old="    if full or (free is not None and free < _NEARLY_FULL):\n",
         new="    if full:\n",
         tests=T_SECURITY,
         why="torch's errno-less 'unexpected pos' on a nearly full disk is not told as a full disk"),
    dict(name="security-errors-temporary-file-kept", file=WRITING,
         old="        tmp.unlink(missing_ok=True)\n        needed =",
         new="        pass\n        needed =",
         tests=T_SECURITY,
         why="a write that fails (a full disk) leaves its temporary file filling the disk"),
    dict(name="security-wiring-files-private", file=WRITING,
         old="return tmp, os.open(tmp, _CREATE_FLAGS, 0o666)",
         new="return tmp, os.open(tmp, _CREATE_FLAGS, 0o600)",
         tests=T_SECURITY,
         why="every table, embedding and checkpoint is 0600 whatever the umask (mkstemp's mode)"),
    dict(name="security-all-to-any-output-probe-skipped", file="recvae/data/tables.py",
         old='        raise ValueError(f"{path}: cannot be written, {probe} refuses new files',
         new='        return path\n        raise ValueError(f"{path}: cannot be written, {probe} refuses new files',
         tests=T_SECURITY,
         why="-o /proc/x passes the output check and fails later with a raw [Errno 2]"),
    dict(name="security-direction-log-read-before-the-output-is-claimed", file=FITTING,
         old="        work = _claim_work_dir(stack, estimator, out, out_path, say) if writes else None\n"
             "        raw_log, data, the_split = read_and_split(log_spec, split_spec, say)\n",
         new="        raw_log, data, the_split = read_and_split(log_spec, split_spec, say)\n"
             "        work = _claim_work_dir(stack, estimator, out, out_path, say) if writes else None\n",
         tests=T_SECURITY,
         why="the log is read and split before the output is claimed: a refusal comes after the work"),
    dict(name="security-all-to-any-target-not-checked-under-the-lock", file=FITTING,
         old="    check_run_target(out_path, overwrite=out.overwrite, resume=True)\n",
         new="",
         tests=T_SECURITY,
         why="a run moved back under the lock is found only at the final rename, after the whole fit"),
    dict(name="security-errors-empty-work-folder-kept", file=FITTING,
         old="    stack.callback(discard_work_dir, work)\n",
         new="",
         tests=T_SECURITY,
         why="a fit that fails before its first checkpoint leaves an empty .NAME.partial folder behind"),
]
