"""Unattended jobs see every epoch: with no progress bar (stderr not a terminal) each epoch is one log line."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest
import torch

from recvae.cli import main
from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models import VAE, AnnealConfig, VAEConfig
from recvae.models.rec_vae import RecVAEConfig, RecVAENet, train_recvae
from recvae.training import TrainingConfig, train_vae
from recvae.training.history import epoch_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOGGER = "recvae.training.history"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=120, n_items=40, seed=3)), 15)


def _config(progress: bool) -> TrainingConfig:
    return TrainingConfig(epochs=3, batch_size=40, lr=1e-2, progress=progress, seed=0, device="cpu", eval_k=10,
                          precision="fp32", anneal=AnnealConfig(kind="constant", cap=0.2))


@pytest.mark.parametrize("loop", ["mult-vae", "recvae"])
def test_every_epoch_is_a_line_when_no_bar_shows(split, caplog, loop):
    torch.manual_seed(0)
    caplog.set_level(logging.INFO, logger=LOGGER)
    if loop == "mult-vae":
        result = train_vae(VAE(split.n_items, VAEConfig(hidden_dims=(8,), latent_dim=4)), split.train,
                           split.validation, _config(progress=True), CPU)
    else:
        net = RecVAENet(split.n_items, RecVAEConfig(hidden_dim=8, n_layers=2, latent_dim=4, encoder_epochs=1,
                                                    decoder_epochs=1))
        result = train_recvae(net, split.train, split.validation, _config(progress=True), CPU)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("epoch ")]
    assert [line.split(",")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    history = result.history
    for line, (_, row) in zip(lines, history.iterrows()):
        assert f"loss {row['loss']:.4f}" in line and f"beta {row['beta']:.3f}" in line
        assert f"val ndcg@10 {row['val_ndcg@10']:.4f}" in line
    assert ", eta " in lines[0] and ", eta " not in lines[-1]  # nothing left after the last epoch


def test_no_lines_when_progress_is_off(split, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    train_vae(VAE(split.n_items, VAEConfig(hidden_dims=(8,), latent_dim=4)), split.train, split.validation,
              _config(progress=False), CPU)
    assert not [r for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("epoch ")]


def test_epoch_line_by_hand():
    row = {"epoch": 2, "loss": 1.23456, "beta": 0.1, "val_ndcg@100": 0.25, "train_seconds": 50.0,
           "eval_seconds": 10.0}
    assert epoch_line(row, 10, 100) == "epoch 2/10, loss 1.2346, beta 0.100, val ndcg@100 0.2500, 60.0 s, eta 8m00s"
    unvalidated = {"epoch": 10, "loss": 1.0, "beta": 0.2, "train_seconds": 4000.0}
    assert epoch_line(unvalidated, 10, 100) == "epoch 10/10, loss 1.0000, beta 0.200, 4000.0 s"
    assert epoch_line({**unvalidated, "epoch": 1}, 10, 100).endswith("eta 10h00m")


def test_train_command_logs_epochs_off_a_terminal(tmp_path, capsys):
    rows = [(u, i, 5.0) for u in range(60) for i in range(30) if (u * 7 + i * 3) % 5 < 2]
    pd.DataFrame(rows, columns=["user", "item", "rating"]).to_csv(tmp_path / "log.csv", index=False)
    args = ["train", str(tmp_path / "log.csv"), "-o", str(tmp_path / "run"), "--epochs", "2", "--param",
            "latent_dim=4", "--param", "hidden_dims=[8]", "--heldout-users", "6"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert re.search(r"best epoch: [12] of 2 trained \(all planned epochs\)", captured.out)  # why it stopped there
    err = captured.err  # captured: not a terminal, as under a scheduler or nohup
    assert re.search(r"epoch 1/2, loss [\d.]+, beta", err) and "epoch 2/2" in err
    assert main([*args[:3], str(tmp_path / "quiet"), *args[4:], "--no-progress"]) == 0
    assert "epoch 1/2" not in capsys.readouterr().err
    logging.getLogger(LOGGER).setLevel(logging.NOTSET)  # main() raised it for this process


def test_log_file_gets_every_epoch_as_a_json_line_as_training_goes(split, tmp_path):
    import dataclasses
    import json

    path = tmp_path / "epochs.jsonl"
    config = dataclasses.replace(_config(progress=False), history_jsonl=str(path))
    seen = []  # what a reader sees after each epoch: the file grows line by line
    result = train_vae(VAE(split.n_items, VAEConfig(hidden_dims=(8,), latent_dim=4)), split.train, split.validation,
                       config, CPU, on_epoch=lambda epoch, score: seen.append(len(path.read_text().splitlines())))
    assert seen == [1, 2, 3]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    for line, (_, row) in zip(lines, result.history.iterrows()):
        assert line["loss"] == pytest.approx(row["loss"]) and line["beta"] == pytest.approx(row["beta"])
        assert line["val_ndcg@10"] == pytest.approx(row["val_ndcg@10"])


def test_log_file_option_reaches_training_and_is_refused_for_a_baseline(tmp_path, capsys):
    import json

    rows = [(u, i, 5.0) for u in range(60) for i in range(30) if (u * 7 + i * 3) % 5 < 2]
    pd.DataFrame(rows, columns=["user", "item", "rating"]).to_csv(tmp_path / "log.csv", index=False)
    log = tmp_path / "train.jsonl"
    assert main(["-q", "train", str(tmp_path / "log.csv"), "-o", str(tmp_path / "run"), "--epochs", "2", "--param",
                 "latent_dim=4", "--param", "hidden_dims=[8]", "--heldout-users", "6", "--log-file", str(log)]) == 0
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]
    with pytest.raises(SystemExit) as info:
        main(["train", str(tmp_path / "log.csv"), "-o", str(tmp_path / "ease"), "--model", "ease",
              "--log-file", str(tmp_path / "x.jsonl")])
    assert "--log-file applies to the torch models" in str(info.value)
    logging.getLogger(LOGGER).setLevel(logging.NOTSET)
