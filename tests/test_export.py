"""ONNX export of the fold-in scorer: onnxruntime reproduces ``model.score`` for any batch shape.

Mult-VAE, Mult-DAE, RecVAE and EASE are trained briefly on tiny synthetic data, exported, and
scored by onnxruntime on batches of users with different numbers of items, binary and weighted.
"""

import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.cli import main
from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions, synthetic_log
from recvae.serving.onnx_export import ONNX_FORMAT, export_onnx
from recvae.models import EASE, MultDAE, MultVAE, Popularity, RecVAE
from recvae.runs import Run

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

TOL = {"atol": 1e-5, "rtol": 1e-5}
SMALL = {"epochs": 2, "progress": False, "eval_k": 20}
MODELS = {
    "mult-vae": lambda: MultVAE(latent_dim=8, hidden_dims=[16], **SMALL),
    "mult-dae": lambda: MultDAE(latent_dim=8, **SMALL),
    "recvae": lambda: RecVAE(latent_dim=8, hidden_dim=16, n_layers=3, **SMALL),
    "ease": lambda: EASE(l2=10.0),
}


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=200, n_items=60, seed=0)), 30)


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, split, tmp_path_factory):
    """(model, path of its ONNX file)."""
    model = MODELS[request.param]().fit(split)
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_scores(sess, rows: sp.csr_matrix, weighted: bool = True) -> np.ndarray:
    feed = {"indices": rows.indices.astype(np.int64), "offsets": rows.indptr.astype(np.int64)}
    if weighted:
        feed["values"] = rows.data.astype(np.float32)
    (scores,) = sess.run(["scores"], feed)
    return scores


def batches(split) -> dict[str, sp.csr_matrix]:
    """Binary and weighted batches of 7 users with different numbers of items, and of one user."""
    rows = sp.csr_matrix(split.test.fold_in[:7], dtype=np.float32)
    assert len(set(np.diff(rows.indptr))) > 1  # the users differ in length
    weighted = rows.copy()
    weighted.data = np.random.default_rng(0).uniform(0.25, 4.0, weighted.nnz).astype(np.float32)
    one_item = sp.csr_matrix((np.array([2.5], np.float32), ([0], [5])), shape=(1, rows.shape[1]))
    return {"binary": rows, "weighted": weighted, "one user": weighted[3], "one item": one_item}


def test_onnxruntime_matches_model_score(exported, split):
    model, path = exported
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["indices", "offsets", "values"]
    assert [o.name for o in sess.get_outputs()] == ["scores"]
    for name, rows in batches(split).items():
        got = onnx_scores(sess, rows)
        assert got.dtype == np.float32 and got.shape == (rows.shape[0], model.n_items_), name
        np.testing.assert_allclose(got, model.score(rows), **TOL, err_msg=name)


def test_an_empty_user_leaves_the_others_untouched(exported, split):
    model, path = exported
    rows = batches(split)["weighted"]
    with_gaps = sp.vstack([rows[:2], sp.csr_matrix((1, rows.shape[1])), rows[2:], sp.csr_matrix((1, rows.shape[1]))])
    got = onnx_scores(session(path), sp.csr_matrix(with_gaps))
    assert got.shape == (rows.shape[0] + 2, model.n_items_) and np.isfinite(got).all()
    np.testing.assert_allclose(np.delete(got, [2, rows.shape[0] + 1], axis=0), model.score(rows), **TOL)


def test_the_file_describes_itself(exported):
    model, path = exported
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["recvae.format"] == ONNX_FORMAT and meta["recvae.model"] == type(model).__name__
    assert meta["recvae.n_items"] == str(model.n_items_)
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == \
        ["users", model.n_items_]
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18


def test_an_unweighted_graph_counts_every_item_once(split, tmp_path):
    model = MODELS["mult-vae"]().fit(split)
    path = export_onnx(model, tmp_path / "binary.onnx", weighted=False)
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["indices", "offsets"]
    rows = batches(split)["binary"]
    np.testing.assert_allclose(onnx_scores(sess, rows, weighted=False), model.score(rows), **TOL)


def test_the_file_is_replaced_whole_and_no_temporary_is_left(split, tmp_path):
    model = MODELS["ease"]().fit(split)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    assert export_onnx(model, path) == path
    assert path.read_bytes() != b"old" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, path, opset=9)
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx(model, tmp_path)


@pytest.mark.parametrize("model", [Popularity(), MultVAE()], ids=["popularity", "unfitted"])
def test_models_that_cannot_export_are_refused_in_one_line(model, split, tmp_path):
    if isinstance(model, Popularity):
        model.fit(split)
    with pytest.raises(ValueError) as info:
        export_onnx(model, tmp_path / "x.onnx")
    message = str(info.value)
    assert "\n" not in message and type(model).__name__ in message
    assert ("Mult-VAE, Mult-DAE, RecVAE, EASE" in message) if isinstance(model, Popularity) else "not fitted" in message
    assert not list(tmp_path.iterdir())


def test_importing_recvae_export_needs_no_onnx():
    """Without onnx installed the module imports, and the export names the extra to install."""
    code = (
        "import sys; sys.modules['onnx'] = None; sys.modules['onnxscript'] = None\n"
        "import recvae.serving.onnx_export as e\n"
        "from recvae.models import EASE\n"
        "import numpy as np, scipy.sparse as sp\n"
        "m = EASE(l2=1.0).fit(sp.csr_matrix(np.eye(4, dtype=np.float32) + np.eye(4, k=1, dtype=np.float32)))\n"
        "try:\n    e.export_onnx(m, 'never.onnx')\nexcept ImportError as err:\n    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install recvae[onnx]" in result.stdout


# ----------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def log_frame():
    return synthetic_log(SyntheticConfig(n_users=200, n_items=60, seed=0))


def test_cli_exports_a_run_that_onnxruntime_scores(log_frame, tmp_path):
    run = Run.fit(log_frame, "mult-vae", params={"latent_dim": 8, "hidden_dims": [16], **SMALL},
                  output=tmp_path / "run", report=lambda line: None)
    target = tmp_path / "vae.onnx"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(run.path), "--format", "onnx", "-o", str(target), "-q"]) == 0
    assert str(target) in out.getvalue() and out.getvalue().count("\n") == 1
    loaded = Run.load(run.path, device="cpu")
    rows = loaded.history[:9]
    np.testing.assert_allclose(onnx_scores(session(target), rows), loaded.model.score(rows), **TOL)


def test_cli_refuses_a_model_that_cannot_export(log_frame, tmp_path):
    run = Run.fit(log_frame, "popularity", output=tmp_path / "pop", report=lambda line: None)
    with pytest.raises(SystemExit) as info:
        main(["export", str(run.path), "-o", str(tmp_path / "pop.onnx")])
    message = info.value.code
    assert isinstance(message, str) and message.startswith("recvae: error: cannot export Popularity")
    assert "\n" not in message and "Mult-VAE" in message
    assert not (tmp_path / "pop.onnx").exists()


def test_export_has_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0 and "usage: recvae export" in capsys.readouterr().out
