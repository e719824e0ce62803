#!/usr/bin/env python
"""Mutation testing for recvae: plant realistic bugs one at a time and see whether the tests notice.

Each mutation names a source file, an exact snippet of it, a replacement, a short
name and the test files that should catch it. The tool copies ``recvae/``,
``tests/``, ``pyproject.toml`` and ``experiments/configs`` into a temporary
directory, then for each mutation rewrites the snippet *in the copy*, runs
``pytest -x -q`` on the mutation's test files against the copy (``PYTHONPATH`` and
the working directory point at the copy, which is checked before anything runs),
and restores the copy's file, verifying it is byte-identical to the original
afterwards. The working tree is never written to, so it is safe to run while
other people edit it.

A mutation is *caught* when the tests fail (or time out, or fail to import), and
*survives* when they pass. ``--full`` runs the whole suite against each survivor.
``--tests-from REV`` takes ``tests/`` from a git revision (``git show``; read-only)
instead of the working tree, to score an older suite against today's mutations.
``--rooms-from FILE`` runs the mutations of one room file kept anywhere (a ``MUTATIONS``
list of dicts, as in ``tools/mutation_rooms/``) instead of the built-in ones, e.g. a
blind set written without reading the tests.

Examples::

    python tools/mutate.py                        # every mutation, targeted tests
    python tools/mutate.py --only beta --only reparam --full
    python tools/mutate.py --tests-from HEAD --json before.json
    python tools/mutate.py --list                 # names, files, targeted tests
    python tools/mutate.py --check                # every snippet occurs exactly once?
    python tools/mutate.py --rooms-from /tmp/blind.py --json blind.json   # only that file's mutations

See docs/development.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("recvae", "tests", "pyproject.toml", "experiments/configs")


@dataclass(frozen=True)
class Mutation:
    """One planted bug: ``old`` (which must occur exactly once in ``file``) becomes ``new``."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    why: str = ""


# Test files per area; a mutation runs the files of its area (those that exist in the copy), fast ones first
# so that pytest -x stops early on a caught mutant.
T_METRICS = ("tests/test_metrics.py",)
T_LIK = ("tests/test_likelihoods.py",)
T_VAE = ("tests/test_training.py", "tests/test_vae.py")
T_REC = ("tests/test_rec_vae_training.py", "tests/test_rec_vae.py")
T_ANNEAL = ("tests/test_annealing.py", "tests/test_training.py")
T_TRAIN = ("tests/test_training.py", "tests/test_vae.py")
T_SPLITS = ("tests/test_splits.py",)
T_EVAL = ("tests/test_evaluation.py",)
T_HYBRID = ("tests/test_hybrid.py",)
T_EXP = ("tests/test_experiment.py",)
T_ITEM = ("tests/test_item_output.py",)
T_FINAL = ("tests/test_finalists.py",)
T_PREC = ("tests/test_precision.py",)

M = Mutation
MUTATIONS: list[Mutation] = [
    # ------------------------------------------------------------------ metrics
    M("ndcg-discount-off-by-one", "recvae/evaluation/metrics.py",
      "1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))", "1.0 / np.log2(np.arange(3, k + 3, dtype=np.float64))",
      T_METRICS),
    M("ndcg-ideal-off-by-one", "recvae/evaluation/metrics.py",
      "np.cumsum(discounts)))[np.minimum(n_target, k)]", "np.cumsum(discounts)))[np.minimum(n_target, k - 1)]",
      T_METRICS),
    M("recall-divides-by-all-targets", "recvae/evaluation/metrics.py",
      "_per_user(hits.sum(axis=1), np.minimum(n_target, hits.shape[1]), n_target)",
      "_per_user(hits.sum(axis=1), n_target, n_target)", T_METRICS),
    M("mask-seen-dropped", "recvae/evaluation/metrics.py",
      "scores[rows[nonzero], csr.indices[nonzero]] = -np.inf", "pass", T_METRICS),
    M("top-k-ties-high-index-first", "recvae/evaluation/metrics.py",
      "cand = np.sort(cand, axis=1)[:, ::-1]", "cand = np.sort(cand, axis=1)", T_METRICS),
    M("mrr-rank-off-by-one", "recvae/evaluation/metrics.py",
      "1.0 / (np.argmax(hits, axis=1) + 1.0)", "1.0 / (np.argmax(hits, axis=1) + 2.0)", T_METRICS),
    M("map-precision-off-by-one", "recvae/evaluation/metrics.py",
      "np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)",
      "np.cumsum(hits, axis=1) / np.arange(2, k + 2, dtype=np.float64)", T_METRICS),
    M("precision-divides-by-targets", "recvae/evaluation/metrics.py",
      "_per_user(hits.sum(axis=1), np.full(n_target.shape, hits.shape[1]), n_target)",
      "_per_user(hits.sum(axis=1), np.maximum(n_target, 1), n_target)", T_METRICS),
    # ------------------------------------------------------------------ likelihoods
    M("multinomial-drops-row-count", "recvae/nn/likelihoods.py",
      "return row_sums * log_norm - data_term", "return log_norm - data_term", T_LIK),
    M("multinomial-grad-sign", "recvae/nn/likelihoods.py",
      "-(grad_output[row_of_entry] * values)", "(grad_output[row_of_entry] * values)", T_LIK),
    M("bernoulli-sign", "recvae/nn/likelihoods.py",
      "return dense_term - torch.zeros_like(dense_term)", "return dense_term + torch.zeros_like(dense_term)", T_LIK),
    M("gaussian-cross-term-constant", "recvae/nn/likelihoods.py",
      "return values * values - 2.0 * values * means", "return values * values - 1.0 * values * means", T_LIK),
    M("gaussian-learned-precision-sign", "recvae/nn/likelihoods.py",
      "precision = torch.exp(-log_var)", "precision = torch.exp(log_var)", T_LIK),
    # ------------------------------------------------------------------ Mult-VAE network
    M("vae-reparam-variance-not-std", "recvae/nn/vae.py",
      "return mu + eps * torch.exp(0.5 * log_var)", "return mu + eps * torch.exp(log_var)", T_VAE),
    M("vae-kl-log-var-sign", "recvae/nn/vae.py",
      "0.5 * (-log_var + log_var.exp()", "0.5 * (log_var + log_var.exp()", T_VAE),
    M("vae-kl-drops-half", "recvae/nn/vae.py",
      "return 0.5 * (-log_var + log_var.exp() + mu * mu - 1.0)", "return (-log_var + log_var.exp() + mu * mu - 1.0)",
      T_VAE),
    M("dropout-not-inverted", "recvae/nn/vae.py",
      "return values * keep / (1.0 - p)", "return values * keep", T_VAE),
    M("dropout-keeps-p", "recvae/nn/vae.py",
      "keep = torch.rand(values.shape, generator=generator, device=values.device) >= p",
      "keep = torch.rand(values.shape, generator=generator, device=values.device) < p", T_VAE),
    M("l2-normalise-by-squared-norm", "recvae/nn/vae.py",
      "torch.rsqrt(sq.clamp_min(1e-12))", "torch.reciprocal(sq.clamp_min(1e-12))", T_VAE),
    M("vae-dropout-at-inference", "recvae/nn/vae.py",
      "        if self.training:\n            values = dropout_values", "        if True:\n            values = dropout_values",
      T_VAE),
    M("vae-activation-on-z", "recvae/nn/vae.py",
      "            if i:\n                h = self._act(h)", "            if True:\n                h = self._act(h)", T_VAE),
    M("vae-mu-logvar-swapped", "recvae/nn/vae.py",
      "return h[:, :d], h[:, d:]", "return h[:, d:], h[:, :d]", T_VAE),
    M("vae-loss-ignores-beta", "recvae/nn/vae.py",
      '{"loss": nll + beta * kl,', '{"loss": nll + kl,', T_VAE),
    M("scores-in-training-mode", "recvae/nn/vae.py",
      "    net.eval()\n    try:", "    try:", T_VAE + T_REC,
      "validation during training would then score with dropout and noise"),
    # ------------------------------------------------------------------ RecVAE
    M("recvae-reparam-variance-not-std", "recvae/nn/rec_vae.py",
      "return mu + eps * torch.exp(0.5 * log_var)", "return mu + eps * torch.exp(log_var)", T_REC),
    M("recvae-prior-weights-reversed", "recvae/nn/rec_vae.py",
      "prior_log_var.float(), c.prior_weights,", "prior_log_var.float(), c.prior_weights[::-1],", T_REC),
    M("recvae-prior-weights-swapped", "recvae/nn/rec_vae.py",
      "prior_log_var.float(), c.prior_weights,",
      "prior_log_var.float(), (c.prior_weights[1], c.prior_weights[0], c.prior_weights[2]),", T_REC),
    M("recvae-wide-prior-default", "recvae/nn/rec_vae.py",
      "c.wide_prior_log_var, c.prior_mixture)", "10.0, c.prior_mixture)", T_REC,
      "the configured wide_prior_log_var never reaches the prior"),
    M("recvae-mixture-weights-not-logged", "recvae/nn/rec_vae.py",
      "log_w = [math.log(w) for w in weights]", "log_w = list(weights)", T_REC),
    M("recvae-density-precision-sign", "recvae/nn/rec_vae.py",
      "(z - mu) ** 2 * torch.exp(-log_var)", "(z - mu) ** 2 * torch.exp(log_var)", T_REC),
    M("recvae-kl-sign", "recvae/nn/rec_vae.py",
      "kl = gaussian_log_density(z, mu, log_var).sum(dim=-1) - log_p",
      "kl = gaussian_log_density(z, mu, log_var).sum(dim=-1) + log_p", T_REC),
    M("recvae-prior-uses-live-encoder", "recvae/nn/rec_vae.py",
      "return self.prior_encoder(x.to_sparse_csr(normalised))", "return self.encoder(x.to_sparse_csr(normalised))",
      T_REC),
    M("recvae-decoder-phase-dropout", "recvae/training/rec_vae.py",
      "posterior = net.encode(x, dropout=False)", "posterior = net.encode(x, dropout=True)", T_REC),
    M("recvae-no-dropout-anywhere", "recvae/training/rec_vae.py",
      'parts = net.loss(x, generator, dropout=phase == "encoder", **known)',
      "parts = net.loss(x, generator, dropout=False, **known)", T_REC),
    M("recvae-decoder-posterior-always-the-prior", "recvae/training/rec_vae.py",
      '"prior": posterior if encoder_is_prior else None}', '"prior": posterior}', T_REC,
      "a decoder phase whose encoder moved on since update_prior() would take its posterior for the prior's"),
    M("recvae-prior-cache-keeps-a-moved-encoder", "recvae/training/rec_vae.py",
      "if prior is not None and encoder_is_prior:\n            prior.store",
      "if prior is not None:\n            prior.store", T_REC,
      "posteriors of an encoder that is not the prior's would be read as the prior's in the next encoder passes"),
    M("recvae-prior-recomputed-every-epoch", "recvae/training/rec_vae.py",
      "prior.store(users, *posterior, net.prior_version)", "prior.store(users, *posterior, net.prior_version - 1)",
      T_REC, "the decoder passes' posteriors never count as the prior's: its encoder runs again every epoch"),
    M("recvae-prior-never-refreshed", "recvae/training/rec_vae.py",
      "            net.update_prior()\n", "", T_REC),
    M("recvae-beta-mean-not-per-user", "recvae/nn/rec_vae.py",
      "return self.config.gamma * x.row_sums()", "return self.config.gamma * x.row_sums().mean().expand(x.n_rows)",
      T_REC),
    M("recvae-no-dense-connections", "recvae/nn/rec_vae.py",
      "h = norm(F.silu(layer(h) + total))", "h = norm(F.silu(layer(h)))", T_REC),
    M("recvae-embed-sigma-is-variance", "recvae/models/rec_vae.py",
      "UserEmbeddings(mu.cpu().numpy(), torch.exp(0.5 * log_var)", "UserEmbeddings(mu.cpu().numpy(), torch.exp(log_var)",
      T_REC),
    M("recvae-decoder-phase-count", "recvae/training/rec_vae.py",
      'phase("decoder", rc.decoder_epochs, noise)', 'phase("decoder", rc.encoder_epochs, noise)', T_REC),
    # ------------------------------------------------------------------ annealing
    M("anneal-linear-off-by-one", "recvae/nn/annealing.py",
      "return min(c.cap, step * self.slope(c.cap))", "return min(c.cap, (step + 1) * self.slope(c.cap))", T_ANNEAL),
    M("anneal-ramp-ignores-fraction", "recvae/nn/annealing.py",
      "return peak / max(1.0, c.ramp_fraction * self.planned_steps)", "return peak / max(1.0, self.planned_steps)",
      T_ANNEAL),
    M("anneal-cyclical-ramp-inverted", "recvae/nn/annealing.py",
      "min(1.0, phase / c.cycle_ramp)", "min(1.0, phase * c.cycle_ramp)", T_ANNEAL),
    M("anneal-auto-patience-off-by-one", "recvae/nn/annealing.py",
      "if self.evaluations_since_best >= self.config.auto_patience:",
      "if self.evaluations_since_best > self.config.auto_patience:", T_ANNEAL),
    M("anneal-auto-freezes-last-beta", "recvae/nn/annealing.py",
      "self.frozen_beta = self.best_beta", "self.frozen_beta = beta", T_ANNEAL),
    # ------------------------------------------------------------------ training loop
    M("train-beta-of-next-step", "recvae/training/loop.py",
      'beta = schedule.beta(state["step"])', 'beta = schedule.beta(state["step"] + 1)', T_TRAIN),
    M("train-beta-from-epoch", "recvae/training/loop.py",
      'beta = schedule.beta(state["step"])', "beta = schedule.beta(epoch)", T_TRAIN),
    M("train-patience-never-reset", "recvae/training/validation.py",
      'best_beta=row["beta"], since_best=0,', 'best_beta=row["beta"],', T_TRAIN),
    M("train-patience-off-by-one", "recvae/training/validation.py",
      'state["since_best"] >= config.patience', 'state["since_best"] > config.patience', T_TRAIN),
    M("train-best-weights-not-restored", "recvae/training/validation.py",
      'net.load_state_dict(state["best_state"])', "pass", T_TRAIN + T_REC),
    M("train-best-state-aliases-live-weights", "recvae/training/validation.py",
      'v.detach().to("cpu", copy=True)', "v.detach()", T_TRAIN + T_REC),
    M("train-weight-decay-on-biases", "recvae/training/optimizers.py",
      '{"params": no_decay, "weight_decay": 0.0}', '{"params": no_decay, "weight_decay": config.weight_decay}',
      T_TRAIN),
    M("train-last-epoch-not-validated", "recvae/training/loop.py",
      "(epoch % config.eval_every == 0 or epoch == config.epochs):\n                score =",
      "(epoch % config.eval_every == 0):\n                score =", T_TRAIN),
    M("train-seed-ignored", "recvae/training/loop.py",
      "    generator.manual_seed(config.seed)\n\n    state", "    generator.manual_seed(0)\n\n    state", T_TRAIN),
    M("train-fit-keeps-last-gradients", "recvae/training/validation.py",
      "    net.zero_grad(set_to_none=True)\n    if ctx is not None:\n        torch.distributed.barrier()",
      "    if ctx is not None:\n        torch.distributed.barrier()", T_TRAIN),
    M("lazy-adam-no-bias-correction", "recvae/training/optimizers.py",
      'step_size = group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)', 'step_size = group["lr"]',
      T_ITEM),
    M("lazy-adam-moments-not-stored", "recvae/training/optimizers.py",
      'state["exp_avg"].index_copy_(0, rows, exp_avg.to(self.moments_dtype))', "pass", T_ITEM),
    M("lazy-adam-state-loads-as-float32", "recvae/training/optimizers.py",
      "                    state[key] = state[key].to(self.moments_dtype)", "                    pass", T_ITEM),
    # ------------------------------------------------------------------ splits
    M("split-items-from-all-users", "recvae/data/splits.py",
      "items = np.flatnonzero(np.diff(train_full.tocsc().indptr) > 0)",
      "items = np.flatnonzero(np.diff(data.matrix.tocsc().indptr) > 0)", T_SPLITS),
    M("split-test-users-are-validation-users", "recvae/data/splits.py",
      "test_users = np.sort(permuted[n_users - n_heldout :])",
      "test_users = np.sort(permuted[n_users - 2 * n_heldout : n_users - n_heldout])", T_SPLITS),
    M("split-target-size-rounded", "recvae/data/splits.py",
      "size=int(target_fraction * n)", "size=int(round(target_fraction * n))", T_SPLITS),
    M("split-min-events-strict", "recvae/data/splits.py",
      "np.flatnonzero(counts >= min_events_for_target)", "np.flatnonzero(counts > min_events_for_target)", T_SPLITS),
    M("weak-validation-overlaps-test", "recvae/data/splits.py",
      "is_val = ~is_test & (rank < (n_test + n_val)[rows])", "is_val = ~is_test & (rank < n_val[rows])", T_SPLITS),
    # ------------------------------------------------------------------ evaluation
    M("eval-fold-in-not-masked", "recvae/evaluation/harness.py",
      "exclude=part,", "exclude=None,", T_EVAL),
    M("eval-always-validation-users", "recvae/evaluation/harness.py",
      "evaluate_model(model, split.held_out(which),", 'evaluate_model(model, split.held_out("validation"),', T_EVAL),
    M("paired-ci-uses-std-not-stderr", "recvae/evaluation/harness.py",
      "se = diff.std(ddof=1) / np.sqrt(n)", "se = diff.std(ddof=1)", T_EVAL),
    # ------------------------------------------------------------------ blend
    M("blend-zscore-no-centering-in-var", "recvae/models/hybrid.py",
      "var = np.maximum(squares / np.maximum(n_unseen, 1) - mean**2, 0.0)",
      "var = np.maximum(squares / np.maximum(n_unseen, 1), 0.0)", T_HYBRID),
    M("blend-zscore-seen-in-mean", "recvae/models/hybrid.py",
      "total = scores.sum(axis=1) - np.bincount(user_of_seen, seen, minlength=n_users)",
      "total = scores.sum(axis=1)", T_HYBRID),
    M("blend-rank-seen-not-masked", "recvae/models/hybrid.py",
      "masked[user_of_seen, rows.indices] = -np.inf", "pass", T_HYBRID),
    M("blend-picks-worst-weights", "recvae/models/hybrid.py",
      'best = trials[f"ndcg@{self.eval_k}"].idxmax()', 'best = trials[f"ndcg@{self.eval_k}"].idxmin()', T_HYBRID),
    M("blend-score-ignores-weights", "recvae/models/hybrid.py",
      "total += weight * normalise_scores(", "total += normalise_scores(", T_HYBRID),
    M("blend-grid-misses-simplex-edge", "recvae/models/hybrid.py",
      "if sum(cuts) <= parts:", "if sum(cuts) < parts:", T_HYBRID),
    # ------------------------------------------------------------------ experiment report
    M("report-test-on-validation-users", "recvae/experiment/runner.py",
      'test = evaluate(search.best_model, split, "test", ks=ks, metrics=names,',
      'test = evaluate(search.best_model, split, "validation", ks=ks, metrics=names,', T_EXP),
    M("report-ci-is-stderr", "recvae/experiment/results.py",
      'row[f"{m} ci95"] = 1.96 * float(s.loc[m, "std_err"])', 'row[f"{m} ci95"] = float(s.loc[m, "std_err"])', T_EXP),
    M("report-reference-is-worst", "recvae/experiment/results.py",
      "return max(scored, key=lambda o: o.search.best_score) if scored else None",
      "return min(scored, key=lambda o: o.search.best_score) if scored else None", T_EXP),
    M("report-paired-diff-reversed", "recvae/experiment/results.py",
      "return paired_comparison(a.test, b.test, metric)", "return paired_comparison(b.test, a.test, metric)", T_EXP),
    # ------------------------------------------------------------------ finalists over seeds
    M("finalists-chosen-by-seed-0", "recvae/tuning/finalists.py",
      "if math.isfinite(mean) and (leader is None or mean > leader[0]):",
      "if math.isfinite(mean) and (leader is None or scores[0] > leader[2][0].score):", T_FINAL),
    M("finalists-ranked-worst-first", "recvae/tuning/finalists.py",
      "order = scored.sort_values(result.metric, ascending=False, kind=\"stable\")",
      "order = scored.sort_values(result.metric, ascending=True, kind=\"stable\")", T_FINAL),
    M("finalists-same-seed-again", "recvae/tuning/finalists.py",
      "model = reseeded(make_model(**fixed, **params), offset)",
      "model = reseeded(make_model(**fixed, **params), 0)", T_FINAL),
    M("experiment-jobs-workers-get-all-threads", "recvae/experiment/runner.py",
      "return max(1, torch.get_num_threads() // jobs)", "return torch.get_num_threads() * jobs", T_EXP),
    M("experiment-jobs-shortest-search-first", "recvae/experiment/runner.py",
      'return (0, -(budget.timeout_s if budget.timeout_s is not None else float("inf")), index)',
      'return (0, budget.timeout_s if budget.timeout_s is not None else float("inf"), index)', T_EXP),
    M("finalists-fits-not-reused", "recvae/experiment/seeds.py",
      "ready = {f.offset: f for f in outcome.search.seed_fits if f.model is not None}", "ready = {}", T_FINAL),
    M("precision-model-scores-under-callers-autocast", "recvae/models/mult_vae.py",
      "        with full_precision(self.device_):\n            return self.net_.scores(x)",
      "        return self.net_.scores(x)", T_PREC, "a caller's bf16 autocast rounds what ranks"),
    M("precision-loop-validates-with-the-bare-net", "recvae/training/loop.py",
      "scorer=NetScorer(net, device) if scorer is None else scorer)",
      "scorer=NetScorer(net, device))", T_PREC + T_REC, "validation no longer ranks as evaluate does"),
    M("precision-auto-ignores-the-variable", "recvae/training/device.py",
      "    if forced:\n        if forced not in", "    if False:\n        if forced not in", T_PREC),
    M("precision-fused-logits-rounded-to-bf16", "recvae/nn/joint.py",
      "    return latent.to(dtype) + linear.to(dtype)", "    return latent + linear.to(latent.dtype)", T_PREC),
]

#: The classes of bug the room files plant (the second part of a room mutation's name); "errors":
#: an exception swallowed or a failed write's leftovers kept.
MUTATION_CLASSES = ("wiring", "rows", "boundary", "direction", "stale-cache", "all-to-any", "errors")
ROOMS_DIR = ROOT / "tools" / "mutation_rooms"


def load_room_file(path: Path, room: str | None = None) -> list[Mutation]:
    """The ``MUTATIONS`` of one room file, each named ``<room>-<class>-<what>`` with a class in
    :data:`MUTATION_CLASSES`; ``room`` (when given) must be every name's first part."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_mutation_room_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = []
    for entry in module.MUTATIONS:
        mutation = Mutation(**{**entry, "tests": tuple(entry["tests"])})
        prefix, _, rest = mutation.name.partition("-")
        if (room is not None and prefix != room) or not any(rest.startswith(c + "-") for c in MUTATION_CLASSES):
            raise SystemExit(f"{path}: mutation {mutation.name!r} must be named {room or '<room>'}-<class>-<what> "
                             f"with a class in {MUTATION_CLASSES}")
        found.append(mutation)
    return found


def room_mutations(directory: Path = ROOMS_DIR) -> list[Mutation]:
    """The mutations kept per room in ``tools/mutation_rooms/<room>.py``.

    Each such file holds ``MUTATIONS``, a list of dicts with Mutation's fields; a name reads
    ``<room>-<class>-<what>``, the class one of :data:`MUTATION_CLASSES`, so that scores can
    be read per room and per class (``--by-room``).
    """
    found = []
    for path in sorted(p for p in directory.glob("*.py") if not p.name.startswith("_")):
        found.extend(load_room_file(path, path.stem))
    return found


MUTATIONS += room_mutations()


def scores_by_room(outcomes, extra_rooms: set[str] = frozenset()) -> dict[str, tuple[int, int]]:
    """(caught, counted) per room and per class of the room mutations among ``outcomes``
    (keys ``room <name>`` and ``class <name>``), for docs/development.md's table;
    ``extra_rooms``: rooms of a ``--rooms-from`` file."""
    rooms = {p.stem for p in ROOMS_DIR.glob("*.py") if not p.name.startswith("_")} | set(extra_rooms)
    scores: dict[str, list[int]] = {}
    for o in outcomes:
        room, _, rest = o.mutation.name.partition("-")
        if room not in rooms:
            continue
        kind = next((c for c in MUTATION_CLASSES if rest.startswith(c + "-")), "other")
        for key in (f"room {room}", f"class {kind}"):
            score = scores.setdefault(key, [0, 0])
            score[0] += o.status in CAUGHT
            score[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(scores.items())}


# ---------------------------------------------------------------------- workspace
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ignore(_directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__", ".pytest_cache") or n.endswith(".pyc")]


def make_workspace(tests_from: str | None) -> Path:
    """A temporary copy of the package and tests; tests/ from a git revision when ``tests_from`` is set."""
    work = Path(tempfile.mkdtemp(prefix="recvae-mutate-"))
    for rel in COPIED:
        src, dst = ROOT / rel, work / rel
        if src.is_dir():
            shutil.copytree(src, dst, ignore=_ignore)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    if tests_from:
        shutil.rmtree(work / "tests")
        (work / "tests").mkdir()
        listing = subprocess.run(["git", "ls-tree", "--name-only", tests_from, "tests/"], cwd=ROOT,
                                 capture_output=True, text=True, check=True).stdout.split()
        for rel in listing:
            blob = subprocess.run(["git", "show", f"{tests_from}:{rel}"], cwd=ROOT, capture_output=True, check=True)
            (work / rel).write_bytes(blob.stdout)
    return work


def _env(work: Path, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(work) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a stale .pyc of the mutant must never outlive the restore
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
    return env


def check_imports_copy(work: Path) -> None:
    """Refuse to run unless ``import recvae`` in the workspace loads the copy (not the editable install)."""
    out = subprocess.run([sys.executable, "-c", "import recvae; print(recvae.__file__)"], cwd=work,
                         env=_env(work, None), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(work.resolve()):
        raise SystemExit(f"import recvae in the workspace loads {out}, not the copy under {work}; aborting")


def run_pytest(work: Path, targets: list[str], timeout: float, threads: int | None, stop_first: bool = True,
               deselect: tuple[str, ...] = ()) -> tuple[int | None, float, str]:
    """(return code or None on timeout, seconds, output tail) of pytest on ``targets`` in the workspace."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-x"] if stop_first else []),
           *[arg for node in deselect for arg in ("--deselect", node)], *targets]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=_env(work, threads), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: pytest may have started subprocesses
        out, _ = proc.communicate()
        code = None
    except BaseException:  # interrupted: leave no pytest behind in its own session
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return code, time.perf_counter() - started, out[-3000:] if stop_first else out


def failing_nodes(output: str) -> list[str]:
    """Node ids pytest's short summary reports as FAILED or ERROR."""
    nodes = []
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            nodes.append(line.split(" ", 1)[1].split(" - ", 1)[0].strip())
    return nodes


def baseline(work: Path, targets: list[str], timeout: float) -> tuple[str, ...]:
    """Tests that already fail without any mutation (they would "catch" every mutant); they are deselected."""
    code, seconds, out = run_pytest(work, targets, timeout, None, stop_first=False)
    if code is None:
        raise SystemExit(f"the unmutated tests ran past {timeout:.0f}s; raise --timeout")
    nodes = tuple(failing_nodes(out))
    if code not in (0, 1) or (code == 1 and not nodes):
        raise SystemExit(f"the unmutated tests cannot run (pytest exit {code}):\n{out[-3000:]}")
    print(f"baseline: {len(targets)} test file(s) in {seconds:.0f}s; {len(nodes)} already failing, deselected"
          + "".join(f"\n  {n}" for n in nodes), flush=True)
    return nodes


@dataclass
class Outcome:
    mutation: Mutation
    status: str  # caught | survived | timeout | stale | no-tests
    seconds: float
    detail: str = ""
    full_status: str | None = None


def apply_and_test(work: Path, m: Mutation, timeout: float, threads: int | None,
                   deselect: tuple[str, ...] = ()) -> Outcome:
    """Plant ``m`` in the workspace copy, run its tests, restore the file and verify the restore."""
    path = work / m.file
    original = path.read_bytes()
    text = original.decode()
    count = text.count(m.old)
    if count != 1:
        return Outcome(m, "stale", 0.0, f"snippet found {count} times in {m.file}")
    targets = [t for t in m.tests if (work / t.split("::")[0]).exists()]
    if not targets:
        return Outcome(m, "no-tests", 0.0, "none of its test files exist")
    try:
        path.write_bytes(text.replace(m.old, m.new).encode())
        code, seconds, tail = run_pytest(work, targets, timeout, threads, deselect=deselect)
    finally:
        path.write_bytes(original)
        if _sha(path.read_bytes()) != _sha(original):
            raise SystemExit(f"could not restore {path}; the workspace is corrupt")
    if code is None:
        return Outcome(m, "timeout", seconds, "counted as caught")
    if code == 0:
        return Outcome(m, "survived", seconds)
    if code == 5:
        return Outcome(m, "no-tests", seconds, "pytest collected nothing")
    failed = [line for line in tail.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return Outcome(m, "caught", seconds, failed[0] if failed else f"pytest exit {code}")


def full_suite(work: Path, m: Mutation, timeout: float, threads: int | None, deselect: tuple[str, ...] = ()) -> str:
    """caught / survived for ``m`` under the whole suite."""
    path = work / m.file
    original = path.read_bytes()
    try:
        path.write_bytes(original.decode().replace(m.old, m.new).encode())
        code, _, _ = run_pytest(work, ["tests"], timeout, threads, deselect=deselect)
    finally:
        path.write_bytes(original)
        if _sha(path.read_bytes()) != _sha(original):
            raise SystemExit(f"could not restore {path}; the workspace is corrupt")
    return "survived" if code == 0 else "caught"


CAUGHT = ("caught", "timeout")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run mutations whose name contains this (repeatable)")
    parser.add_argument("--full", action="store_true", help="also run the whole suite against each survivor")
    parser.add_argument("--tests-from", metavar="REV", help="take tests/ from this git revision (read-only)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (default 600)")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run in parallel, each in its own copy")
    parser.add_argument("--json", metavar="FILE", help="write the outcomes there")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--check", action="store_true", help="check that every snippet occurs exactly once and exit")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run that finds (and deselects) already-failing tests")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspaces")
    parser.add_argument("--rooms-from", metavar="FILE", type=Path,
                        help="run only the mutations of this room file (MUTATIONS: dicts named "
                             "<room>-<class>-<what>, as in tools/mutation_rooms/), not the built-in ones")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so running pytest groups are killed and workspaces removed.
    signal.signal(signal.SIGTERM, _interrupt)

    pool = load_room_file(args.rooms_from) if args.rooms_from else MUTATIONS
    extra_rooms = {m.name.partition("-")[0] for m in pool} if args.rooms_from else set()
    chosen = [m for m in pool if not args.only or any(s in m.name for s in args.only)]
    if len({m.name for m in pool}) != len(pool):
        raise SystemExit("mutation names must be unique")
    if args.list:
        for m in chosen:
            print(f"{m.name:42s} {m.file:30s} {' '.join(m.tests)}")
        return 0
    if args.check:
        bad = [(m.name, (ROOT / m.file).read_text().count(m.old)) for m in chosen]
        bad = [(n, c) for n, c in bad if c != 1]
        for name, count in bad:
            print(f"{name}: snippet found {count} times")
        print(f"{len(chosen) - len(bad)}/{len(chosen)} snippets found exactly once")
        return 1 if bad else 0

    jobs = max(1, args.jobs)
    threads = 1 if jobs > 1 else None  # parallel workers must not fight over the cores
    workspaces: list[Path] = []
    outcomes: list[Outcome] = []
    try:  # every exit path, a refused baseline included, removes the workspaces
        workspaces.extend(make_workspace(args.tests_from) for _ in range(jobs))
        check_imports_copy(workspaces[0])
        wanted = sorted({t for m in chosen for t in m.tests if (workspaces[0] / t).exists()}
                        | ({"tests"} if args.full else set()))
        known_failures = baseline(workspaces[0], wanted, args.timeout * 3) if wanted and not args.no_baseline else ()
        print(f"{len(chosen)} mutations, {jobs} worker(s), tests from {args.tests_from or 'the working tree'}",
              flush=True)
        free = list(workspaces)
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            def task(m: Mutation) -> Outcome:
                work = free.pop()
                try:
                    return apply_and_test(work, m, args.timeout, threads, known_failures)
                finally:
                    free.append(work)

            for outcome in pool.map(task, chosen):
                outcomes.append(outcome)
                print(f"{outcome.status:9s} {outcome.seconds:6.1f}s  {outcome.mutation.name:42s} {outcome.detail}",
                      flush=True)
        if args.full:
            for outcome in outcomes:
                if outcome.status in ("survived", "no-tests"):
                    outcome.full_status = full_suite(workspaces[0], outcome.mutation, args.timeout * 3, None,
                                                     known_failures)
                    print(f"full suite vs {outcome.mutation.name}: {outcome.full_status}", flush=True)
    finally:
        if not args.keep:
            for work in workspaces:
                shutil.rmtree(work, ignore_errors=True)

    counted = [o for o in outcomes if o.status != "stale"]
    caught = [o for o in counted if o.status in CAUGHT]
    survivors = [o for o in counted if o.status not in CAUGHT]
    print(f"\ncaught {len(caught)}/{len(counted)} ({100 * len(caught) / max(1, len(counted)):.1f}%) by targeted tests")
    if args.full:
        full_caught = len(caught) + sum(o.full_status == "caught" for o in survivors)
        print(f"caught {full_caught}/{len(counted)} by the whole suite")
    for o in survivors:
        print(f"  survived: {o.mutation.name} ({o.mutation.file})" + (f", full suite: {o.full_status}" if args.full else ""))
    for label, score in scores_by_room(counted, extra_rooms).items():
        print(f"  {label}: caught {score[0]}/{score[1]}")
    for o in outcomes:
        if o.status == "stale":
            print(f"  stale (not counted): {o.mutation.name}: {o.detail}")
    if args.json:
        Path(args.json).write_text(json.dumps([
            {"name": o.mutation.name, "file": o.mutation.file, "status": o.status, "seconds": round(o.seconds, 1),
             "detail": o.detail, "full_status": o.full_status} for o in outcomes], indent=2))
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
