"""Training precision: what "auto" picks (and how to force it), and that every number that decides or
reports is computed in fp32 whatever the training precision.

bf16 is emulated on CPUs without avx512_bf16 / AMX (slow but correct), so the bf16 cases run on
every machine; ``RECVAE_AUTO_PRECISION=bf16`` runs the rest of the suite as a native-bf16 CPU would.
"""

import numpy as np
import pytest
import torch

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import JointVAE, MultDAE, MultVAE, RecVAE
from recvae.nn.joint import fuse_logits
from recvae.training import AUTO_PRECISION_ENV, NetScorer, TrainingConfig, resolve_precision, train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

AVX2_CPUINFO = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
NATIVE_CPUINFO = "processor : 0\nflags : fpu sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=500, n_items=150, seed=3))
    return strong_generalization(data, 50, seed=0)


# ---------------------------------------------------------------------- what "auto" picks
def test_auto_follows_the_cpu_without_the_variable():
    assert resolve_precision("auto", CPU, cpuinfo=AVX2_CPUINFO, environ={}) == "fp32"
    assert resolve_precision("auto", CPU, cpuinfo=NATIVE_CPUINFO, environ={}) == "bf16"
    assert resolve_precision("auto", CPU, cpuinfo=NATIVE_CPUINFO, environ={AUTO_PRECISION_ENV: " "}) == "bf16"


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
@pytest.mark.parametrize("cpuinfo", [AVX2_CPUINFO, NATIVE_CPUINFO], ids=["avx2", "native-bf16"])
def test_the_variable_forces_auto_on_any_cpu(forced, cpuinfo):
    assert resolve_precision("auto", CPU, cpuinfo=cpuinfo, environ={AUTO_PRECISION_ENV: forced}) == forced


@pytest.mark.parametrize("explicit", ["fp32", "bf16"])
def test_an_explicit_precision_ignores_the_variable(explicit):
    other = {"fp32": "bf16", "bf16": "fp32"}[explicit]
    assert resolve_precision(explicit, CPU, cpuinfo=NATIVE_CPUINFO, environ={AUTO_PRECISION_ENV: other}) == explicit


def test_a_bad_value_of_the_variable_is_refused_in_one_line():
    with pytest.raises(ValueError, match=f"{AUTO_PRECISION_ENV}='fp16' is not a precision; set it to fp32 or bf16"):
        resolve_precision("auto", CPU, environ={AUTO_PRECISION_ENV: "fp16"})


def test_the_variable_reaches_training(split, monkeypatch):
    monkeypatch.setenv(AUTO_PRECISION_ENV, "bf16")
    model = MultDAE(epochs=1, batch_size=100, progress=False, precision="auto").fit(split)
    assert model.history_["precision"].tolist() == ["bf16"]
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp32")
    model = MultDAE(epochs=1, batch_size=100, progress=False, precision="auto").fit(split)
    assert model.history_["precision"].tolist() == ["fp32"]


# ---------------------------------------------------------------------- decisions and reports in fp32
TRAINERS = {
    "mult-vae": lambda precision: MultVAE(hidden_dims=(32,), latent_dim=8, epochs=4, batch_size=100, lr=3e-3,
                                          progress=False, seed=0, precision=precision),
    "rec-vae": lambda precision: RecVAE(hidden_dim=32, latent_dim=8, epochs=3, batch_size=100, lr=3e-3,
                                        progress=False, seed=0, precision=precision),
    "joint": lambda precision: JointVAE(hidden_dim=32, latent_dim=8, epochs=3, batch_size=100, lr=3e-3,
                                        linear_l2=20.0, progress=False, seed=0, precision=precision),
}


@pytest.mark.precision
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_the_selected_epochs_score_is_what_evaluate_reports(trainer, precision, split):
    model = TRAINERS[trainer](precision).fit(split)
    history = model.history_
    assert set(history["precision"]) == {precision}
    reported = evaluate(model, split, "validation", ks=[100], metrics=["ndcg"])["ndcg@100"]
    # Exactly: validation and evaluate rank with one scoring function, in fp32 both.
    assert model.training_.best_score == reported
    assert history["val_ndcg@100"].max() == reported
    assert model.training_.best_epoch == int(history["val_ndcg@100"].idxmax()) + 1


@pytest.mark.precision
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_scores_are_fp32_inside_a_callers_autocast(trainer, split):
    model = TRAINERS[trainer]("bf16").fit(split)
    rows = split.test.fold_in
    plain = model.score(rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.score(rows)
        blocks = model.item_block_scorer(rows)(0, rows.shape[1]).numpy()
        mu = model.embed_users(rows).mu
    assert inside.dtype == np.float32
    np.testing.assert_array_equal(inside, plain)
    np.testing.assert_allclose(blocks, plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(mu, model.embed_users(rows).mu)
    # bf16 scoring would round scores to 8 bits of mantissa; fp32 scores are not all bf16 values.
    assert not np.array_equal(plain, torch.from_numpy(plain).bfloat16().float().numpy())


class _SpyScorer:
    """Records the rows validation asks it to score; scores with the net's fp32 scores."""

    def __init__(self, net):
        self.inner = NetScorer(net, CPU)
        self.calls = 0
        self.autocast_seen = []

    def score_tensor(self, rows):
        self.calls += 1
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return self.inner.score_tensor(rows)

    score = score_tensor


def test_the_loop_validates_with_the_scorer_it_is_given(split):
    from recvae.nn.vae import VAE, VAEConfig

    torch.manual_seed(0)
    net = VAE(split.n_items, VAEConfig(hidden_dims=(16,), latent_dim=4))
    spy = _SpyScorer(net)
    config = TrainingConfig(epochs=2, batch_size=100, progress=False, precision="bf16", device="cpu")
    result = train_vae(net, split.train, split.validation, config, CPU, scorer=spy)
    assert spy.calls >= 2 and result.best_epoch in (1, 2)
    assert spy.autocast_seen and not any(spy.autocast_seen)  # never scored under the training's autocast


def test_fused_logits_keep_fp32_when_a_path_is_bf16():
    g = torch.Generator().manual_seed(0)
    latent = (torch.randn(4, 30, generator=g) * 8).bfloat16()
    linear = torch.randn(4, 30, generator=g) * 1e-2
    fused = fuse_logits(latent, linear)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, latent.float() + linear, rtol=0, atol=0)
    # Rounded to bf16 the small linear term would mostly vanish into the latent logits' steps.
    assert not torch.equal((latent.float() + linear).bfloat16().float(), fused)
    assert fuse_logits(latent.double(), linear).dtype == torch.float64  # gradcheck keeps fp64
