"""Data-parallel training and sharded evaluation, in 2 local processes over gloo.

One spawn of two processes runs every distributed check (process start-up is the
slow part on a small machine); the single-process references run here.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from recvae.runtime import distributed as D
from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate, evaluate_heldout
from recvae.models import MultDAE, MultVAE, RecVAE, RecVAEConfig, RecVAENet, VAE, VAEConfig
from recvae.training.rec_vae import _train_phase
from recvae.nn.sparse import DeviceCSR
from recvae.training import TrainingConfig, make_optimizer, sparse_rows

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

NPROC = 2
EVAL = dict(ks=(10, 100), metrics=("ndcg", "recall", "map", "coverage", "gini", "novelty@10", "diversity@10", "arp@10",
                                   "long_tail@10"), batch_size=16)
# Batches of 45 over 299 training users: 22/23 users per rank, and a last batch of 29 (14/15).
VAE_TRAINING = TrainingConfig(epochs=40, lr=3e-3, batch_size=45, progress=False, seed=0, device="cpu",
                              precision="fp32")  # 1 vs 2 processes compared to 3e-8: no bf16 rounding
VAE_CONFIG = VAEConfig(hidden_dims=(64,), latent_dim=16)
# Deterministic: no dropout, no noise, so 1 and 2 processes must agree up to float rounding.
DAE_TRAINING = dataclasses.replace(VAE_TRAINING, epochs=3)
DAE_CONFIG = VAEConfig(hidden_dims=(), latent_dim=16, variational=False, input_dropout=0.0)
RECVAE_TRAINING = dataclasses.replace(VAE_TRAINING, epochs=2, lr=5e-4)
RECVAE_CONFIG = RecVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8, input_dropout=0.0, encoder_epochs=1)
# |NDCG@100 (2 processes) - NDCG@100 (1 process)|: the runs share initialisation and batches
# but not dropout masks and noise; over seeds 0-4 one process spans 0.44-0.46 (validation)
# and 0.42-0.46 (test) on these 40 + 40 users.
NDCG_TOLERANCE = 0.05


def _split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=400, n_items=120, seed=0)), 40)


def _scorer(n_items):
    """An untrained but seeded VAE: a deterministic score function, the same in every process."""
    torch.manual_seed(3)
    net = VAE(n_items, VAEConfig(hidden_dims=(32,), latent_dim=8)).eval()
    return lambda rows: net.scores(sparse_rows(rows, torch.device("cpu")))


def _weights(model):
    return {k: v.detach().cpu().numpy().copy() for k, v in model.net_.state_dict().items()}


def _worker(ctx, out_dir):
    """Everything the 2-process run checks; returns plain values to compare in the parent."""
    split = _split()
    out = Path(out_dir)
    result = {"rank": ctx.rank, "world_size": ctx.world_size, "device": str(ctx.device)}
    # (a) sharded evaluation: 40 users in batches of 16 -> rank 0 scores batch 0, rank 1 batches 1-2.
    ev = evaluate_heldout(_scorer(split.n_items), split.validation, **EVAL, train=split.train)
    result["eval_per_user"], result["eval_summary"] = ev.per_user, ev.summary
    # (b) training: rank 0 alone writes files (each rank names its own paths to show which wrote).
    files = dict(history_csv=str(out / f"history_rank{ctx.rank}.csv"), checkpoint=str(out / f"ckpt_rank{ctx.rank}.pt"))
    vae = MultVAE(VAE_CONFIG, dataclasses.replace(VAE_TRAINING, **files)).fit(split)
    result["vae_history"] = vae.history_
    result["vae_best"] = (vae.training_.best_epoch, vae.training_.best_score)
    result["vae_test"] = evaluate(vae, split, "test", ks=(100,), metrics=("ndcg",))["ndcg@100"]
    result["vae_weights_checksum"] = float(sum(np.abs(w).sum() for w in _weights(vae).values()))
    dae = MultDAE(DAE_CONFIG, DAE_TRAINING).fit(split.train)
    result["dae_weights"], result["dae_history"] = _weights(dae), dae.history_
    # Resume: 3 epochs written by rank 0 to a shared checkpoint, then on to 5 on every rank.
    shared = dataclasses.replace(DAE_TRAINING, checkpoint=str(out / "shared.pt"))
    MultDAE(DAE_CONFIG, shared).fit(split.train)
    resumed = MultDAE(DAE_CONFIG, dataclasses.replace(shared, epochs=5, resume=True)).fit(split.train)
    result["dae_resumed_weights"], result["dae_resumed_history"] = _weights(resumed), resumed.history_
    try:  # rank 1 cannot see rank 0's own checkpoint file: refused on every rank
        MultDAE(DAE_CONFIG, dataclasses.replace(DAE_TRAINING, resume=True, **files)).fit(split.train)
    except RuntimeError as error:
        result["resume_error"] = str(error)
    rec = RecVAE(RECVAE_CONFIG, RECVAE_TRAINING).fit(split)
    result["recvae_weights"], result["recvae_history"] = _weights(rec), rec.history_
    result["recvae_decoder_pass"] = _recvae_decoder_pass(split, ctx)
    return result


def _recvae_decoder_pass(split, ctx):
    """Decoder weights after one RecVAE decoder pass with sigma ~ e^-15: noise cannot matter.

    (The encoder phase cannot be made noise-free: the composite prior's gradient
    grows as 1 / sigma.) Checks the hand-summed gradients against one process.
    """
    torch.manual_seed(5)
    net = RecVAENet(split.n_items, RECVAE_CONFIG)
    with torch.no_grad():
        net.encoder.log_var.weight.zero_()
        net.encoder.log_var.bias.fill_(-30.0)
    net.update_prior()
    optimizer = make_optimizer(net.decoder.parameters(), dataclasses.replace(RECVAE_TRAINING, lr=1e-2))
    users = torch.from_numpy(np.flatnonzero(np.diff(split.train.indptr) > 0))
    rank = 0 if ctx is None else ctx.rank
    _train_phase(net, "decoder", optimizer, DeviceCSR(split.train), users, torch.Generator().manual_seed(0),
                 passes=1, batch_size=RECVAE_TRAINING.batch_size, ctx=ctx,
                 noise_generator=torch.Generator().manual_seed(100 + rank))
    return {k: v.detach().numpy().copy() for k, v in net.decoder.state_dict().items()}


@pytest.fixture(scope="module")
def split():
    return _split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    try:
        results = D.spawn(_worker, NPROC, str(out), device="cpu", threads=1, timeout_s=120)
    except RuntimeError as error:  # pragma: no cover - depends on the host's sockets
        if "gloo" in str(error).lower() and "connect" in str(error).lower():
            pytest.skip(f"gloo cannot connect on localhost here: {error}")
        raise
    return out, results


@pytest.fixture(scope="module")
def single(split):
    """The one-process references (torch threads as in the workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vae = MultVAE(VAE_CONFIG, VAE_TRAINING).fit(split)
        return {
            "vae": vae,
            "vae_test": evaluate(vae, split, "test", ks=(100,), metrics=("ndcg",))["ndcg@100"],
            "dae": MultDAE(DAE_CONFIG, DAE_TRAINING).fit(split.train),
            "dae5": MultDAE(DAE_CONFIG, dataclasses.replace(DAE_TRAINING, epochs=5)).fit(split.train),
            "recvae": RecVAE(RECVAE_CONFIG, RECVAE_TRAINING).fit(split),
            "recvae_decoder_pass": _recvae_decoder_pass(split, None),
        }
    finally:
        torch.set_num_threads(threads)


def test_ranks_and_devices(runs):
    _, results = runs
    assert [r["rank"] for r in results] == list(range(NPROC))
    assert all(r["world_size"] == NPROC and r["device"] == "cpu" for r in results)


def test_sharded_evaluation_equals_one_process_exactly(runs, split):
    _, results = runs
    expected = evaluate_heldout(_scorer(split.n_items), split.validation, **EVAL, train=split.train)
    for r in results:  # every rank holds the whole result
        assert r["eval_per_user"].equals(expected.per_user), r["eval_per_user"].compare(expected.per_user)
        np.testing.assert_array_equal(r["eval_summary"].to_numpy(), expected.summary.to_numpy())
    assert expected.per_user["ndcg@100"].notna().all()


def test_deterministic_model_trains_identically_on_two_processes(runs, single):
    """No dropout, no noise: 2 ranks with slices of each global batch reproduce 1 process.

    Equal weights after 3 epochs of 7 steps (global batches of 45 split 22/23, the last
    29 split 14/15) check the loss weighting by each rank's share of the global batch.
    """
    _, results = runs
    expected = _weights(single["dae"])
    for r in results:
        assert r["dae_weights"].keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(r["dae_weights"][name], value, rtol=0, atol=2e-6, err_msg=name)
        np.testing.assert_allclose(r["dae_history"]["loss"], single["dae"].history_["loss"], rtol=1e-6)
    for name, value in results[0]["dae_weights"].items():  # the ranks hold the very same weights
        np.testing.assert_array_equal(results[1]["dae_weights"][name], value, err_msg=name)


def test_resume_from_shared_checkpoint_continues_the_run(runs, single):
    _, results = runs
    expected = _weights(single["dae5"])
    for r in results:
        np.testing.assert_array_equal(r["dae_resumed_history"]["epoch"], [1, 2, 3, 4, 5])
        for name, value in expected.items():
            np.testing.assert_allclose(r["dae_resumed_weights"][name], value, rtol=0, atol=2e-6, err_msg=name)
        assert "only 1 of 2 ranks see the checkpoint" in r["resume_error"]


def test_recvae_gradients_summed_over_ranks_equal_one_process(runs, single):
    _, results = runs
    for r in results:
        for name, value in single["recvae_decoder_pass"].items():
            # Adam turns near-zero gradients into full-size steps: allow float-rounding drift.
            np.testing.assert_allclose(r["recvae_decoder_pass"][name], value, rtol=0, atol=1e-5, err_msg=name)


def test_recvae_trains_on_two_processes(runs, single):
    """Full alternating training: ranks stay in sync; losses near one process's (noise differs)."""
    _, results = runs
    a, b = results
    for name, value in a["recvae_weights"].items():
        np.testing.assert_array_equal(b["recvae_weights"][name], value, err_msg=name)
    one = single["recvae"].history_
    for r in results:
        np.testing.assert_array_equal(r["recvae_history"]["step"], one["step"])
        np.testing.assert_allclose(r["recvae_history"]["loss"], one["loss"], rtol=0.05)
        np.testing.assert_array_equal(r["recvae_history"]["val_ndcg@100"], a["recvae_history"]["val_ndcg@100"])


def test_vae_two_processes_match_one_within_tolerance(runs, single):
    _, results = runs
    one = single["vae"]
    for r in results:
        history = r["vae_history"]
        # Global steps and the beta schedule are those of one process.
        np.testing.assert_array_equal(history["step"], one.history_["step"])
        np.testing.assert_allclose(history["beta"], one.history_["beta"], rtol=1e-12)
        best_epoch, best_score = r["vae_best"]
        assert abs(best_score - one.training_.best_score) < NDCG_TOLERANCE, (best_score, one.training_.best_score)
        assert abs(r["vae_test"] - single["vae_test"]) < NDCG_TOLERANCE, (r["vae_test"], single["vae_test"])
        assert 0 < history["loss"].iloc[-1] < history["loss"].iloc[0]
    # Every rank ends with the same model, selection and validation history.
    a, b = results
    assert a["vae_best"] == b["vae_best"] and a["vae_test"] == b["vae_test"]
    assert a["vae_weights_checksum"] == b["vae_weights_checksum"]
    np.testing.assert_array_equal(a["vae_history"]["val_ndcg@100"], b["vae_history"]["val_ndcg@100"])


def test_only_rank_zero_writes_history_and_checkpoint(runs):
    out, results = runs
    assert (out / "history_rank0.csv").exists() and (out / "ckpt_rank0.pt").exists()
    assert not (out / "history_rank1.csv").exists() and not (out / "ckpt_rank1.pt").exists()
    import pandas as pd

    written = pd.read_csv(out / "history_rank0.csv")
    assert len(written) == VAE_TRAINING.epochs
    np.testing.assert_allclose(written["loss"], results[0]["vae_history"]["loss"])


def test_sharding_helpers():
    ctxs = [D.DistributedContext(r, 3, r, torch.device("cpu"), "gloo") for r in range(3)]
    batch = torch.arange(10)
    parts = [D.shard_batch(batch, c) for c in ctxs]
    assert torch.equal(torch.cat(parts), batch) and [len(p) for p in parts] == [3, 3, 4]
    assert [len(D.shard_batch(torch.arange(2), c)) for c in ctxs] == [0, 1, 1]
    assert D.shard_batch(batch, None) is batch
    # 7 batches of 10 over 3 ranks: 2, 2, 3 whole batches; the last one short.
    assert [D.batch_aligned_range(65, 10, c) for c in ctxs] == [(0, 20), (20, 40), (40, 65)]
    assert D.batch_aligned_range(65, 10, None) == (0, 65)
    assert D.backend_for("cpu") == "gloo" and D.backend_for("cuda:1") == "nccl"


def test_single_process_has_no_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.setup_from_env("cpu") is None
    assert D.current_context() is None and D.parallel_context() is None
    with pytest.raises(RuntimeError, match="process group"):
        evaluate_heldout(lambda rows: np.zeros(rows.shape, np.float32), _split().validation, distributed=True)


def test_torchrun_command():
    cmd = D.torchrun_command(["train", "--epochs", "3"], 4)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=4" in cmd
    assert cmd[-5:] == ["-m", "recvae", "train", "--epochs", "3"]
    for form in (["--nproc", "2"], ["--nproc=2"]):  # the workers must not launch again
        cmd = D.torchrun_command(["train", "log.csv", *form, "--epochs", "3"], 2)
        assert cmd[cmd.index("recvae"):] == ["recvae", "train", "log.csv", "--epochs", "3"]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_cuda_nccl_sharded_evaluation(split):  # pragma: no cover - no GPU in CI
    expected = evaluate_heldout(_scorer(split.n_items), split.validation, **EVAL, train=split.train)
    results = D.spawn(_cuda_worker, NPROC, device="cuda", timeout_s=120)
    for r in results:
        assert r["device"].startswith("cuda:") and r["per_user"].equals(expected.per_user)


def _cuda_worker(ctx):
    split = _split()
    # gathered over nccl on the rank's GPU
    ev = evaluate_heldout(_scorer(split.n_items), split.validation, **EVAL, train=split.train)
    return {"device": str(ctx.device), "per_user": ev.per_user}
