"""Fault injection: damaged model files, diverging training, mismatched checkpoints, damaged logs.

Every fault must end in one exception of recvae's with a one-line message that
names the file (or the run) and the fix: never a traceback from zipfile, torch or
pandas, never torch's advice to load with ``weights_only=False``.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import warnings
import zipfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recvae.data import SyntheticConfig, load_movielens, read_interactions_file, read_movielens_file
from recvae.data import strong_generalization, synthetic_interactions
from recvae.data.files import LogFileError, sniff_file
from recvae.models import EASE, MultVAE, Popularity, load_model, make_model
from recvae.models.files import ModelFileError, check_model_file, read_vae_payload
from recvae.models.hybrid import Blend
from recvae.training import CheckpointMismatchError, RecvaeWarning, TrainingDivergedError

TINY = {"progress": False, "eval_k": 10, "batch_size": 50}
VAE_PARAMS = {**TINY, "epochs": 2, "latent_dim": 8, "hidden_dims": [16]}
RECVAE_PARAMS = {**TINY, "epochs": 2, "latent_dim": 8, "hidden_dim": 16, "n_layers": 2}


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=200, n_items=60, seed=0)), 20)


@pytest.fixture(scope="module")
def saved(split, tmp_path_factory) -> dict[str, Path]:
    """One saved file per format: baseline npz, torch VAEs, a Blend directory."""
    root = tmp_path_factory.mktemp("models")
    models = {
        "popularity": Popularity().fit(split),
        "ease": EASE(l2=50.0).fit(split),
        "mult-vae": make_model("mult-vae", VAE_PARAMS).fit(split),
        "recvae": make_model("recvae", RECVAE_PARAMS).fit(split),
    }
    paths = {name: model.save(root / name) for name, model in models.items()}
    paths["blend"] = Blend([models["popularity"], models["ease"]], weights=[0.5, 0.5]).fit(split).save(root / "blend")
    return paths


def assert_one_line(err: BaseException, *fragments: str) -> None:
    text = str(err)
    assert "\n" not in text, text
    assert "weights_only" not in text and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, text


def copy_of(path: Path, tmp_path: Path, name: str = "copy") -> Path:
    target = tmp_path / name
    shutil.copy(path, target)
    return target


# ------------------------------------------------------------------ model files
FILE_KINDS = ["popularity", "ease", "mult-vae", "recvae"]


def test_intact_files_are_recognised(saved):
    assert check_model_file(saved["ease"]) == "npz"
    assert check_model_file(saved["recvae"]) == "torch"


@pytest.mark.parametrize("name", FILE_KINDS)
def test_overwritten_bytes_are_refused(saved, tmp_path, name):
    """4 KiB of noise at seeded random offsets inside the data: a CRC mismatch, never NaN scores."""
    rng = np.random.default_rng(0)
    size = saved[name].stat().st_size
    for trial in range(3):
        path = copy_of(saved[name], tmp_path, f"c{trial}")
        data = bytearray(path.read_bytes())
        length = min(4096, size // 4)
        offset = int(rng.integers(64, size - length - 64))
        data[offset:offset + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        with pytest.raises(ModelFileError) as info:
            load_model(path)
        assert_one_line(info.value, str(path))
        assert any(w in str(info.value) for w in ("corrupted", "truncated", "not a recvae model file")), info.value
        assert str(info.value).count(str(path)) == 1, info.value  # one diagnosis, not one wrapped in another


@pytest.mark.parametrize("name", FILE_KINDS)
@pytest.mark.parametrize("keep", [0.5, 0.99, 100])
def test_truncated_files_are_refused(saved, tmp_path, name, keep):
    path = copy_of(saved[name], tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, str(path), "truncated", "re-save")


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"),
    (b"\x00\x01garbage" * 100, "not a zip archive"),
    (b'{"class": "MultVAE"}', "JSON"),
    (b"user,item\n1,2\n", "text"),
])
def test_garbage_files_are_refused(tmp_path, content, fragment):
    path = tmp_path / "model"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, str(path), fragment)


def test_foreign_zips_and_npz_are_refused(tmp_path):
    texts = tmp_path / "texts.zip"
    with zipfile.ZipFile(texts, "w") as zf:
        zf.writestr("a.txt", "hello")
        zf.writestr("b.txt", "world")
    with pytest.raises(ModelFileError) as info:
        load_model(texts)
    assert_one_line(info.value, "not a recvae model file", "a.txt")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ModelFileError) as info:
        load_model(other)
    assert_one_line(info.value, "no 'meta' entry")
    objects = tmp_path / "objects.npz"
    np.savez(objects, meta=np.asarray('{"format": "recvae.baseline/1"}'), x=np.array([{1}, {2}], dtype=object))
    with pytest.raises(ModelFileError) as info:
        load_model(objects)
    assert_one_line(info.value, "pickled Python objects")
    plain_torch = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain_torch)
    with pytest.raises(ModelFileError) as info:
        load_model(plain_torch)
    assert_one_line(info.value, "not a recvae")


class _Custom:
    pass


@pytest.mark.parametrize("obj", [{"format": "recvae.vae/1", "class": "MultVAE", "x": _Custom()},
                                 {"format": "recvae.vae/1", "class": "MultVAE", "x": Decimal("1.5")}])
def test_pickle_bearing_torch_files_are_refused_without_running_them(tmp_path, obj):
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, "contains pickled Python objects", "never loads")


def test_swapped_files_are_refused(saved, tmp_path):
    with pytest.raises(ModelFileError) as info:
        EASE.load(saved["popularity"])
    assert_one_line(info.value, "holds a Popularity model, not a EASE")
    with pytest.raises(ModelFileError) as info:
        EASE.load(saved["mult-vae"])
    assert_one_line(info.value, "not a baseline .npz")
    with pytest.raises(ModelFileError) as info:
        read_vae_payload(saved["recvae"], MultVAE)
    assert_one_line(info.value, "not a MultVAE")
    # A Blend whose component file was replaced by another model's.
    blend = tmp_path / "blend"
    shutil.copytree(saved["blend"], blend)
    components = sorted(blend.glob("component_*"))
    shutil.copy(components[0], components[1])
    with pytest.raises(ModelFileError) as info:
        load_model(blend)
    assert_one_line(info.value, "blend.json")


def test_a_torch_file_of_another_architecture_is_refused(saved, tmp_path):
    payload = torch.load(saved["mult-vae"], weights_only=True)
    payload["config"]["latent_dim"] = 4  # the weights stay those of latent_dim 8
    path = tmp_path / "arch.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, "do not fit")
    del payload["state_dict"]
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, "lacks 'state_dict'")


def test_damaged_blend_directories_are_refused(saved, tmp_path):
    blend = tmp_path / "blend"
    shutil.copytree(saved["blend"], blend)
    (blend / "blend.json").write_text('{"format": "recvae.blend/1", "comp')
    with pytest.raises(ModelFileError) as info:
        load_model(blend)
    assert_one_line(info.value, "not valid JSON")
    shutil.rmtree(blend)
    shutil.copytree(saved["blend"], blend)
    component = sorted(blend.glob("component_*"))[1]
    component.write_bytes(component.read_bytes()[:100])
    with pytest.raises(ModelFileError) as info:
        load_model(blend)
    assert_one_line(info.value, component.name, "truncated")


def test_missing_model_file_is_still_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "absent")


# ------------------------------------------------------------------ divergence
def test_a_huge_learning_rate_stops_training(split):
    model = make_model("mult-dae", {**TINY, "epochs": 3, "lr": 1e6, "latent_dim": 8})
    with pytest.warns(RecvaeWarning, match="lr=1e"), pytest.raises(TrainingDivergedError) as info:
        model.fit(split)
    assert_one_line(info.value, "training diverged at epoch", "lower lr (now 1e+06)")
    assert isinstance(info.value.result.history, pd.DataFrame)


@pytest.mark.parametrize("name,params", [("mult-vae", VAE_PARAMS), ("recvae", RECVAE_PARAMS)])
def test_divergence_restores_the_best_weights(split, monkeypatch, name, params):
    """The reported loss explodes at epoch 3: training stops there with epoch 1-2's best weights."""
    import recvae.training.loop as loop_module
    import recvae.training.rec_vae as rec_vae_module

    module = loop_module if name == "mult-vae" else rec_vae_module
    real_divergence, real_end = module.divergence, module._end_epoch
    snapshots = {}

    def end_epoch(state, epoch, *args, **kwargs):
        snapshots[epoch] = {k: v.clone() for k, v in model.net_.state_dict().items()}
        return real_end(state, epoch, *args, **kwargs)

    def divergence(loss, reference):
        epoch = len(snapshots) + 1
        return real_divergence(loss * (1e6 if epoch >= 3 else 1.0), reference)

    monkeypatch.setattr(module, "divergence", divergence)
    monkeypatch.setattr(module, "_end_epoch", end_epoch)
    model = make_model(name, {**params, "epochs": 4})
    with pytest.raises(TrainingDivergedError) as info:
        model.fit(split)
    result = info.value.result
    assert "at epoch 3" in str(info.value) and "restored" in str(info.value)
    assert len(result.history) == 2 and result.best_epoch in (1, 2)
    for key, value in model.net_.state_dict().items():
        torch.testing.assert_close(value, snapshots[result.best_epoch][key], rtol=0, atol=0)
    assert not model.net_.training


def test_degenerate_als_settings_warn(split):
    from recvae.models import ALS

    with pytest.warns(RecvaeWarning, match="factors=64 >= 60 items"):
        ALS(factors=64, iterations=1, num_threads=1).fit(split)
    with pytest.warns(RecvaeWarning, match="regularization=0"):
        ALS(factors=4, regularization=0.0, iterations=1, num_threads=1).fit(split)


# ------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module", params=["mult-vae", "recvae"])
def checkpointed(request, split, tmp_path_factory):
    """A finished 2-epoch run's checkpoint and the parameters that wrote it."""
    path = tmp_path_factory.mktemp("ck") / "run.pt"
    params = {**(VAE_PARAMS if request.param == "mult-vae" else RECVAE_PARAMS), "checkpoint": str(path)}
    model = make_model(request.param, params).fit(split)
    return request.param, params, path, model


def resume(name, params, split, **changes):
    return make_model(name, {**params, "resume": True, **changes}).fit(split)


def test_a_finished_checkpoint_trains_nothing_and_says_so(checkpointed, split, caplog):
    name, params, path, model = checkpointed
    with caplog.at_level(logging.WARNING):
        again = resume(name, params, split, epochs=1)
    assert "already reached epoch 2" in caplog.text and "nothing is trained" in caplog.text
    assert len(again.history_) == 2
    np.testing.assert_array_equal(again.score(split.test.fold_in), model.score(split.test.fold_in))


def test_a_changed_learning_rate_is_applied_with_a_warning(checkpointed, split, caplog, tmp_path):
    name, params, path, _ = checkpointed
    local = copy_of(path, tmp_path, "run.pt")
    with caplog.at_level(logging.WARNING):
        resumed = resume(name, {**params, "checkpoint": str(local)}, split, epochs=3, lr=0.02)
    assert "with lr 0.02 instead of the checkpoint's 0.001" in caplog.text or "instead of the checkpoint's 0.0005" in caplog.text
    assert len(resumed.history_) == 3
    payload = torch.load(local, weights_only=True)
    groups = [g for opt in ([payload["optimizer"]] if "optimizer" in payload else payload["optimizers"].values())
              for g in opt["param_groups"]]
    assert all(g["lr"] == 0.02 for g in groups)


@pytest.mark.parametrize("change,fragment", [
    ({"latent_dim": 4}, "model latent_dim (8 in the checkpoint, 4 now)"),
    ({"batch_size": 40}, "batch_size (50 in the checkpoint, 40 now)"),
    ({"seed": 3}, "seed"),
])
def test_a_checkpoint_of_another_run_is_refused(checkpointed, split, change, fragment):
    name, params, path, _ = checkpointed
    with pytest.raises(CheckpointMismatchError) as info:
        resume(name, params, split, epochs=3, **change)
    assert_one_line(info.value, str(path), fragment, "delete the checkpoint")


def test_a_checkpoint_of_other_data_is_refused(checkpointed):
    name, params, path, _ = checkpointed
    other = strong_generalization(synthetic_interactions(SyntheticConfig(n_users=200, n_items=60, seed=1)), 20)
    with pytest.raises(CheckpointMismatchError) as info:
        resume(name, params, other, epochs=3)
    assert_one_line(info.value, "training data")


def test_damaged_and_old_checkpoints_are_refused(checkpointed, split, tmp_path):
    name, params, path, _ = checkpointed
    local = copy_of(path, tmp_path, "run.pt")
    local.write_bytes(local.read_bytes()[:-200])
    with pytest.raises(ModelFileError) as info:
        resume(name, {**params, "checkpoint": str(local)}, split, epochs=3)
    assert_one_line(info.value, "truncated", "delete the checkpoint")
    payload = torch.load(path, weights_only=True)
    payload["format"] = 1 if name == "mult-vae" else "recvae.recvae-checkpoint/1"
    torch.save(payload, local)
    with pytest.raises(ModelFileError) as info:
        resume(name, {**params, "checkpoint": str(local)}, split, epochs=3)
    assert_one_line(info.value, "older recvae", "delete the checkpoint")


# ------------------------------------------------------------------ input logs
LOG = "user,item,rating\n" + "".join(f"{u},{i},5\n" for u in range(1, 8) for i in range(1, 7))
DAT = "".join(f"{u}::{i}::5::97830{u}{i}\n" for u in range(1, 8) for i in range(1, 7))


def test_sniff_file_tells_kinds_apart(tmp_path):
    (tmp_path / "a.csv").write_text(LOG)
    (tmp_path / "a.gz").write_bytes(gzip.compress(LOG.encode()))
    (tmp_path / "a.bin").write_bytes(b"\x00\x01\x02" * 100)
    pd.DataFrame({"user": [1], "item": [2]}).to_parquet(tmp_path / "a.pq")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("x/ratings.csv", LOG)
    kinds = {name: sniff_file(tmp_path / name) for name in ("a.csv", "a.gz", "a.bin", "a.pq", "a.zip")}
    assert kinds == {"a.csv": "text", "a.gz": "gzip", "a.bin": "binary", "a.pq": "parquet", "a.zip": "zip"}


def test_truncated_gzip_logs_are_named(tmp_path):
    data = gzip.compress((LOG * 200).encode())
    for path in (tmp_path / "log.csv.gz", tmp_path / "ratings.dat.gz"):
        content = data if path.name.startswith("log") else gzip.compress((DAT * 200).encode())
        path.write_bytes(content[: len(content) // 2])
    with pytest.raises(LogFileError) as info:
        read_interactions_file(tmp_path / "log.csv.gz")
    assert_one_line(info.value, "truncated gzip")
    with pytest.raises(LogFileError) as info:
        read_movielens_file(tmp_path / "ratings.dat.gz")
    assert_one_line(info.value, "truncated gzip")


def test_a_zip_with_one_ratings_file_is_read_and_with_several_refused(tmp_path):
    one = tmp_path / "ml.zip"
    with zipfile.ZipFile(one, "w") as zf:
        zf.writestr("ml-1m/README", "readme")
        zf.writestr("ml-1m/ratings.dat", DAT)
    frame = read_interactions_file(one)
    assert list(frame.columns[:2]) == ["user", "item"] and len(frame) == 42
    assert len(read_movielens_file(one)) == 42
    assert load_movielens(one, rating_threshold=None, min_user_interactions=1).nnz == 42
    several = tmp_path / "two.zip"
    with zipfile.ZipFile(several, "w") as zf:
        zf.writestr("a/ratings.csv", LOG)
        zf.writestr("b/u.data", "1\t2\t3\t4\n")
    with pytest.raises(LogFileError) as info:
        read_interactions_file(several)
    assert_one_line(info.value, "several ratings files", "a/ratings.csv", "b/u.data", "extract")
    with pytest.raises(LogFileError) as info:
        read_movielens_file(several)
    assert_one_line(info.value, "several ratings files")


def test_binary_non_utf8_empty_and_corrupt_parquet_logs(tmp_path):
    cases = {
        "bin.csv": (b"user,item\n\x00\x00\x01\x02" * 50, "not a text file"),
        "latin.csv": ("user,item,title\n1,2,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        "empty.csv": (b"", "empty"),
        "bad.parquet": (b"PAR1" + b"\x07" * 300, "damaged Parquet"),
        "text.parquet": (LOG.encode(), "not one"),
    }
    for name, (content, fragment) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(LogFileError) as info:
            read_interactions_file(tmp_path / name)
        assert_one_line(info.value, name, fragment)


def test_movielens_readers_refuse_archives_and_binaries(tmp_path):
    zipped = tmp_path / "ratings.dat"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("ratings.dat", DAT)
    from recvae.data.movielens import read_dat

    with pytest.raises(LogFileError) as info:
        read_dat(zipped)
    assert_one_line(info.value, "is a zip archive", "extract")
    binary = tmp_path / "u.data"
    binary.write_bytes(b"\x00\xff" * 500)
    with pytest.raises(LogFileError) as info:
        read_movielens_file(binary)
    assert_one_line(info.value, "not a text file")


def test_warnings_filter_does_not_hide_errors():
    # RecvaeWarning is a UserWarning: silenced with the usual filters, never turned into a crash by default.
    assert issubclass(RecvaeWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecvaeWarning)
        warnings.warn("x", RecvaeWarning)
