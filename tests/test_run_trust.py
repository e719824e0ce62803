"""Reading a run trusts only its manifest, and a failed run is never used by accident (issue 35, parts 2 and 3).

- Every file the loader opens is listed in ``manifest.json`` with its size and sha256: an empty or
  missing listing, or a missing manifest, is refused in one line ("train it again").
- No link inside the run (a file or a folder, listed or not), no listed name outside it; the
  linked-to file is never opened (an ``open`` spy). An unlisted extra file is never opened.
- ``verify=False`` skips the hashes only: the listing, links, sizes and each file's own checks
  (zip CRCs, JSON) still end in one line.
- A run whose training diverged (status 'failed') is refused by every command that uses it and by
  the Python API, with the recorded reason and the fix; ``--allow-failed`` / ``allow_failed=True``
  uses it anyway (and reaches the library); ``info`` shows it.
- The property: for a tiny EASE and a tiny Mult-VAE run, each file in turn truncated, with a byte
  flipped in the middle, or replaced by a link to an intact copy, ends every run-reading command in
  ``recvae: error: <one line>`` (no traceback) and ``Run.load`` in a one-line ValueError.
"""

import builtins
import contextlib
import importlib.util
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from recvae.cli import main
from recvae.data import SyntheticConfig, synthetic_log
from recvae.runs import Run, RunError
from recvae.runs import directory as run_directory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_VAE = {"latent_dim": 8, "hidden_dims": [16], "epochs": 2, "progress": False}
USER = "2"  # a user of the log kept by preprocessing (user 1 is dropped)
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


# ============================================================================ fixtures and helpers
@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("trust_log") / "log.csv"
    synthetic_log(SyntheticConfig(n_users=200, n_items=60, seed=5)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(log_csv, tmp_path_factory) -> dict:
    """A tiny EASE run, a tiny Mult-VAE run (2 epochs) and a Mult-DAE run that diverged (status 'failed')."""
    tmp = tmp_path_factory.mktemp("trust_runs")
    quiet = lambda _: None  # noqa: E731
    Run.fit(log_csv, "ease", params={"l2": 20.0}, output=tmp / "ease", report=quiet)
    Run.fit(log_csv, "mult-vae", params=TINY_VAE, output=tmp / "vae", report=quiet)
    with warnings.catch_warnings(), pytest.raises(SystemExit, match="diverged"):
        warnings.simplefilter("ignore")  # the lr warning
        main(["-q", "train", str(log_csv), "-o", str(tmp / "failed"), "--model", "mult-dae", "--epochs", "3",
              "--no-progress", "--param", "lr=1e6", "--param", "latent_dim=8", "--param", "hidden_dims=[16]"])
    assert json.loads((tmp / "failed" / "metrics.json").read_text())["status"] == "failed"
    return {name: tmp / name for name in ("ease", "vae", "failed")}


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target, symlinks=True)
    return target


def rehash(run: Path, *names: str) -> None:
    """Make the manifest match the files as they are now (what someone who altered the run would do)."""
    manifest = json.loads((run / "manifest.json").read_text())
    for name in names:
        manifest["files"][name] = {"sha256": run_directory._sha256(run / name),
                                   "bytes": os.stat(run / name).st_size}
    (run / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(run: Path, change) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    change(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def opened(monkeypatch) -> list[Path]:
    """Every file opened by ``open``/``io.open`` (numpy, zipfile, torch, pathlib), as a resolved path
    (``opened.clear()`` after a test's own setup)."""
    paths: list[Path] = []
    real = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            paths.append(Path(os.path.realpath(file)))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return paths


def assert_one_line_error(err: BaseException, *fragments: str) -> str:
    text = str(err)
    assert isinstance(err, ValueError), type(err)
    assert "\n" not in text and text.strip() == text and text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def cli_error(argv, capsys) -> str:
    """``main(argv)`` must end in ``SystemExit('recvae: error: <one line>')`` with no traceback printed."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    code = info.value.code
    assert isinstance(code, str) and code.startswith("recvae: error: ") and "\n" not in code, code
    assert "Traceback" not in capsys.readouterr().err
    return code


def cli_ok(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def reading_commands(run: Path, tmp_path: Path, *, vae: bool) -> list[list]:
    """Every command that reads a run, with arguments that would succeed on an intact run."""
    user = USER
    commands = [["info", run], ["recommend", run, "--user", user, "--device", "cpu"],
                ["evaluate", run, "--device", "cpu"], ["similar", run, "--item", "1", "--device", "cpu"]]
    if vae:
        commands.append(["embed", run, "-o", tmp_path / "emb.csv", "--device", "cpu"])
    if HAS_ONNX:
        commands.append(["export", run, "-o", tmp_path / "model.onnx"])
    return commands


# ============================================================================ the manifest is what is trusted
def test_an_empty_manifest_listing_is_refused_and_nothing_is_opened(runs, tmp_path, opened, capsys):
    run = copy_run(runs["ease"], tmp_path)
    edit_manifest(run, lambda m: m.update(files={}))
    opened.clear()
    for verify in (True, False):
        with pytest.raises(RunError) as info:
            Run.load(run, verify=verify)
        assert_one_line_error(info.value, str(run), "lists no files", "train it again")
    assert {p.name for p in opened if run.resolve() in p.parents} == {"manifest.json"}
    assert "lists no files" in cli_error(["recommend", run, "--user", USER], capsys)


def test_a_missing_manifest_or_listing_is_refused(runs, tmp_path, capsys):
    run = copy_run(runs["ease"], tmp_path)
    (run / "manifest.json").unlink()
    with pytest.raises(RunError) as info:
        Run.load(run, verify=False)
    assert_one_line_error(info.value, str(run), "no manifest.json", "train it again")
    assert "no manifest.json" in cli_error(["info", run], capsys)
    run = copy_run(runs["ease"], tmp_path, "no-files-key")
    edit_manifest(run, lambda m: m.pop("files"))
    with pytest.raises(RunError) as info:
        Run.load(run, verify=False)
    assert_one_line_error(info.value, "manifest.json", "train it again")


@pytest.mark.parametrize("name", ["users.npz", "split/matrices.npz", "split/split.json", "config.json",
                                  "metrics.json", "model"])
def test_a_file_the_loader_needs_but_the_manifest_omits_is_refused_unopened(runs, tmp_path, opened, name):
    run = copy_run(runs["ease"], tmp_path)
    edit_manifest(run, lambda m: m["files"].pop(name))
    opened.clear()
    for verify in (True, False):
        with pytest.raises(RunError) as info:
            Run.load(run, verify=verify)
        assert_one_line_error(info.value, f"does not list {name}", "train it again")
    assert (run / name).resolve() not in opened


def test_a_listed_name_outside_the_run_is_refused(runs, tmp_path, opened):
    run = copy_run(runs["ease"], tmp_path)
    shutil.copy(run / "users.npz", tmp_path / "users.npz")
    opened.clear()
    for name in ("../users.npz", str(tmp_path / "users.npz"), "split/../users.npz"):
        edit_manifest(run, lambda m: m["files"].update({name: m["files"]["users.npz"]}))
        with pytest.raises(RunError) as info:
            Run.load(run, verify=True)
        assert_one_line_error(info.value, "not a path inside the run", "train it again")
        edit_manifest(run, lambda m: m["files"].pop(name))
    assert (tmp_path / "users.npz").resolve() not in opened


@pytest.mark.parametrize("member", ["model", "users.npz", "split"])
def test_a_link_to_a_file_outside_the_run_is_refused_even_rehashed_and_never_opened(runs, tmp_path, member,
                                                                                      monkeypatch, capsys):
    run = copy_run(runs["ease"], tmp_path)
    outside = tmp_path / f"outside-{member}"
    (shutil.copytree if member == "split" else shutil.copy)(run / member, outside)
    shutil.rmtree(run / member) if member == "split" else (run / member).unlink()
    (run / member).symlink_to(outside)
    rehash(run, *([f"split/{n}" for n in ("split.json", "matrices.npz")] if member == "split" else [member]))
    real = builtins.open
    touched = []

    def guard(file, *args, **kwargs):  # the linked-to file must never be opened: fail at once if it is
        if isinstance(file, (str, os.PathLike)) and outside.resolve() in (Path(os.path.realpath(file)),
                                                                          *Path(os.path.realpath(file)).parents):
            touched.append(file)
            raise AssertionError(f"opened {file} through a link")
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guard)
    monkeypatch.setattr(io, "open", guard)
    for verify in (True, False):
        with pytest.raises(RunError) as info:
            Run.load(run, verify=verify)
        assert_one_line_error(info.value, str(run / member), "symbolic link", "train it again")
    assert "symbolic link" in cli_error(["recommend", run, "--user", USER], capsys)
    assert touched == []


def test_the_run_directory_itself_may_be_a_link(runs, tmp_path):
    (tmp_path / "latest").symlink_to(runs["ease"])
    assert Run.load(tmp_path / "latest").n_items == Run.load(runs["ease"]).n_items


def test_an_unlisted_extra_file_is_ignored_and_never_opened(runs, tmp_path, opened, caplog):
    run = copy_run(runs["ease"], tmp_path)
    (run / "notes.txt").write_text("mine")
    (run / "split" / "old.npz").write_bytes(b"not read")
    os.mkfifo(run / "pipe")  # opening it would block: the test would hang
    opened.clear()
    for verify in (True, False):
        loaded = Run.load(run, verify=verify)
        assert len(loaded.user_ids) > 0
    names = {p for p in opened}
    assert not names & {(run / n).resolve() for n in ("notes.txt", "split/old.npz", "pipe")}
    assert "notes.txt" in caplog.text  # the warning names it, once verified


def test_a_listed_file_that_is_not_a_regular_file_is_refused_unopened(runs, tmp_path):
    run = copy_run(runs["ease"], tmp_path)
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")
    for verify in (True, False):
        with pytest.raises(RunError) as info:
            Run.load(run, verify=verify)  # a hang here means the FIFO was opened
        assert_one_line_error(info.value, "config.json", "not a regular file")


def test_a_blend_folder_may_hold_no_unlisted_file(runs, tmp_path, opened):
    from recvae.models import EASE, Popularity
    from recvae.models.hybrid import Blend

    ease = Run.load(runs["ease"])
    ease.model = Blend([Popularity(), EASE(l2=20.0)], weights=[0.5, 0.5]).fit(ease.split)
    ease.config = dict(ease.config, model_class="Blend")
    ease.save(tmp_path / "blend")
    assert isinstance(Run.load(tmp_path / "blend", verify=False).model, Blend)  # whole: accepted
    run = copy_run(tmp_path / "blend", tmp_path, "extra")
    shutil.copy(run / "model" / "component_1_ease", run / "model" / "component_9_ease")
    opened.clear()
    with pytest.raises(RunError) as info:
        Run.load(run, verify=False)
    assert_one_line_error(info.value, "component_9_ease", "not listed")
    assert (run / "model" / "component_9_ease").resolve() not in opened


@pytest.mark.parametrize("member", ["split/matrices.npz", "users.npz"])
def test_a_damaged_npz_is_one_line_without_verification(runs, tmp_path, member):
    """The tester's traceback (zipfile.BadZipFile) through Run.load(verify=False), with the size rehashed."""
    run = copy_run(runs["ease"], tmp_path)
    data = (run / member).read_bytes()
    (run / member).write_bytes(data[: len(data) // 2])
    rehash(run, member)  # the sizes match: only the file's own checks can tell
    for verify in (True, False):
        with pytest.raises(RunError) as info:
            Run.load(run, verify=verify)
        assert_one_line_error(info.value, str(run / member), "truncated", "train the run again")


def test_a_damaged_json_is_one_line_without_verification(runs, tmp_path):
    run = copy_run(runs["ease"], tmp_path)
    (run / "metrics.json").write_text('{"status": ')
    rehash(run, "metrics.json")
    with pytest.raises(RunError) as info:
        Run.load(run, verify=False)
    assert_one_line_error(info.value, "metrics.json", "not valid JSON", "train the run again")


# ============================================================================ a failed run
def test_a_failed_run_is_refused_by_every_command_that_uses_it(runs, tmp_path, capsys, monkeypatch):
    import recvae.serving.server as server

    run = runs["failed"]
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **k: pytest.fail("served a failed run"))
    commands = [cmd for cmd in reading_commands(run, tmp_path, vae=True) if cmd[0] != "info"]
    commands += [["recommend", run, "--items", "1", "2"], ["recommend", run, "--all-users", "-o", tmp_path / "a.csv"],
                 ["embed", run, "--items", "-o", tmp_path / "items.csv"], ["serve", run],
                 ["serve", run, "--workers", "2"], ["export", run, "-o", tmp_path / "m.onnx"]]
    for argv in commands:
        message = cli_error(argv, capsys)
        assert "training failed" in message and "diverged" in message and "--allow-failed" in message, argv
        assert "lower lr" in message and str(run) in message
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "m.onnx").exists()
    assert "status:     failed" in cli_ok(["info", run])  # info still shows it
    assert json.loads(cli_ok(["info", run, "--json"]))["status"] == "failed"


def test_a_failed_run_is_refused_by_the_python_api(runs, tmp_path):
    from recvae.serving.onnx_export import export_onnx
    from recvae.serving.server import create_app, serve

    with pytest.raises(RunError) as info:
        Run.load(runs["failed"])
    assert_one_line_error(info.value, "training failed", "diverged", "allow_failed=True")
    for verify in (True, False):
        with pytest.raises(RunError, match="training failed"):
            Run.load(runs["failed"], verify=verify)
    with pytest.raises(RunError, match="training failed"):
        create_app(runs["failed"], device="cpu")
    with pytest.raises(RunError, match="training failed"):
        serve(runs["failed"], workers=2)
    failed = Run.load(runs["failed"], allow_failed=True)  # loaded on purpose: the status is still enforced
    assert failed.info()["status"] == "failed"
    with pytest.raises(RunError, match="training failed"):
        failed.check_status()
    with pytest.raises(RunError, match="training failed"):
        create_app(failed)
    with pytest.raises(RunError, match="training failed"):
        export_onnx(failed, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    # allowed: every query answers
    user = failed.user_ids[0]
    assert len(failed.recommend([user], k=3)) == 3
    assert len(failed.recommend_for_items(list(failed.item_ids[:2]), k=3)) == 3
    assert len(failed.embed_users([user])) == 1 and len(failed.item_embeddings()) == failed.n_items
    assert len(failed.similar_items([failed.item_ids[0]], k=2)) == 2
    assert failed.evaluate(ks=[5]).per_user is not None
    create_app(failed, allow_failed=True)
    create_app(runs["failed"], device="cpu", allow_failed=True)
    if HAS_ONNX:
        assert export_onnx(failed, tmp_path / "m.onnx", allow_failed=True).exists()


def test_allow_failed_reaches_the_library_from_every_command(runs, tmp_path, monkeypatch):
    import recvae.serving.onnx_export as onnx_export
    import recvae.serving.server as server

    loads, served, exported = [], [], []
    real_load = Run.load.__func__

    def load_spy(cls, path, **kwargs):
        loads.append(kwargs.get("allow_failed"))
        return real_load(cls, path, **kwargs)

    monkeypatch.setattr(Run, "load", classmethod(load_spy))
    monkeypatch.setattr(server, "serve", lambda run_dir, **kwargs: served.append(kwargs["allow_failed"]))
    monkeypatch.setattr(onnx_export, "export_onnx",
                        lambda run, path, **kwargs: exported.append(kwargs["allow_failed"]) or path)
    run = runs["failed"]
    commands = [["recommend", run, "--user", USER], ["recommend", run, "--items", "1", "2"],
                ["recommend", run, "--all-users", "-o", tmp_path / "all.csv"], ["evaluate", run, "--k", "5"],
                ["embed", run, "-o", tmp_path / "e.csv"], ["embed", run, "--items", "-o", tmp_path / "i.csv"],
                ["similar", run, "--item", "1"], ["export", run, "-o", tmp_path / "m.onnx"]]
    for argv in commands:
        cli_ok([*argv, "--allow-failed"])
    assert loads == [True] * len(commands) and exported == [True]
    cli_ok(["serve", run, "--allow-failed"])
    cli_ok(["serve", runs["ease"]])
    assert served == [True, False]
    loads.clear()
    cli_ok(["info", runs["ease"]])  # info always loads with allow_failed=True, and has no such option
    assert loads == [True]
    with pytest.raises(SystemExit):
        main(["info", str(run), "--allow-failed"])


def test_serve_worker_processes_keep_allow_failed(runs, monkeypatch):
    import recvae.serving.server as server

    calls = []
    monkeypatch.setattr(server.uvicorn, "run", lambda *a, **k: calls.append(a))
    for name in (server.ENV_RUN, server.ENV_OPTIONS):
        monkeypatch.setenv(name, "unset")
    server.serve(runs["failed"], workers=2, device="cpu", allow_failed=True)
    assert calls and server._app_from_environment().state.run.info()["status"] == "failed"


# ============================================================================ the property: damage anywhere, one line
def _damage(file: Path, how: str, spare: Path) -> None:
    if how == "truncate":
        file.write_bytes(file.read_bytes()[: os.stat(file).st_size // 2])
    elif how == "flip":
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
    else:  # a link to an intact copy outside the run: same content, same hash
        shutil.copy(file, spare)
        file.unlink()
        file.symlink_to(spare)


@pytest.mark.parametrize("kind", ["ease", "vae"])
@pytest.mark.parametrize("how", ["truncate", "flip", "link"])
def test_every_damaged_file_ends_every_reading_command_in_one_line(runs, tmp_path, capsys, kind, how):
    source = runs[kind]
    names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert {"model", "users.npz", "split/matrices.npz", "split/split.json", "manifest.json"} <= set(names)
    for i, name in enumerate(names):
        run = copy_run(source, tmp_path, f"run{i}")
        _damage(run / name, how, tmp_path / f"spare{i}")
        for argv in reading_commands(run, tmp_path, vae=kind == "vae"):
            cli_error(argv, capsys)
        with pytest.raises(ValueError) as info:
            Run.load(run, device="cpu")
        assert_one_line_error(info.value)
        try:
            Run.load(run, device="cpu", verify=False)
        except ValueError as err:
            assert_one_line_error(err)
        else:  # without hashes only a flipped byte no reader checks may pass (history.csv is never read)
            assert how == "flip" and name in ("history.csv",), (how, name)


@pytest.mark.parametrize("kind", ["ease", "vae"])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_every_damaged_file_with_a_rehashed_manifest_is_one_line_from_its_own_reader(runs, tmp_path, capsys,
                                                                                    kind, how):
    """The manifest made to match the damage (sizes and hashes pass): each file's own reader must refuse it."""
    source = runs[kind]
    names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    for i, name in enumerate(n for n in names if n not in ("manifest.json", "history.csv")):  # history: never read
        run = copy_run(source, tmp_path, f"run{i}")
        _damage(run / name, how, tmp_path / f"spare{i}")
        rehash(run, name)
        cli_error(["recommend", run, "--user", USER, "--device", "cpu"], capsys)
        for verify in (True, False):
            with pytest.raises(ValueError) as info:
                Run.load(run, device="cpu", verify=verify)
            assert_one_line_error(info.value, name.split("/")[-1])
