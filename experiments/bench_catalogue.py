"""Catalogues of a million items (issue 17): training, recommendation and sparse EASE, per catalogue size.

For each catalogue size I (synthetic data; never a users x items array), one Markdown
table with a row per measurement, each cell in its own subprocess so that its peak RSS
is its own:

- ``train``: a Mult-VAE I-600-200-600-I training step (batch 500, fp32; forward,
  backward and optimizer step) by ``bench_catalogue_train.child`` for (a) the exact
  chunked NLL (``VAEConfig.item_chunk``) and (b) sampled softmax with popularity
  negatives (``VAEConfig.sampled_softmax``), each also with
  ``TrainingConfig.sparse_item_updates``, and that with ``item_moments="bf16"``. Seconds are the median step; users/s is 500
  over that; the bound is the output layer's three 500 x 600 x I matmuls
  (``decoder_bound.DecoderMatmuls``), timed in the same subprocess right after the
  steps. Sampled softmax does less than the bound's work by design (ratio < 1).
- ``recommend``: Mult-VAE ``recommend`` top-100 for ``--rec-users`` users over the
  whole catalogue, seen items filtered, under ``--max-memory`` (blocks of items with a
  running top-k, ``recvae.evaluation.ranking.plan_blocks``). The model is fitted by its
  public ``fit`` on one batch of 500 users for one epoch (one sampled-softmax step with
  sparse updates, the cheapest fit there is): the time of a recommendation does not
  depend on the weights' values, and a full epoch at 1M items takes an hour. The
  working set is the peak RSS above the resident memory before the call (the model's
  weights); the bound is the forward decoder output matmul, rec-users x 600 x I, in the
  same user batches and item blocks as the recommendation, into a reused buffer.
- ``linear``: ``SparseEASE`` fit on ``--linear-users`` users and its recommend top-100
  for ``--rec-users`` of them (``bench_sparse_ease.measure``: single-threaded BLAS,
  ``catalogue_interactions`` data); the fit's working set is above the data's resident
  memory. No matmul bound: its scores are a sparse product.

Peak RSS: ``ru_maxrss`` of the training subprocess; for the other stages Linux's
VmHWM, reset before each stage (``/proc/self/clear_refs``), as ``bench_sparse_ease``.

    python experiments/bench_catalogue.py                              # 20k, 100k and 1M items (hours on 2 CPUs)
    python experiments/bench_catalogue.py --items 20000 --stages train,recommend
    python experiments/bench_catalogue.py --items 5000 --quick         # a smoke test (tiny, in-process)

The issue's goals, for reading the tables (nothing here asserts them): exact chunked
steps within 1.5x of their bound; sampled softmax >= 10x faster than exact at 1M items;
recommendation for 10k users over 1M items within a 2 GiB working set; SparseEASE fits
1M items in under 16 GiB; the VAE trains on 1M items with peak RSS under 16 GiB.

Prints the tables (Markdown); ``--out FILE`` writes them too. Asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_catalogue_train as train_bench  # noqa: E402  (sibling scripts, not a package)
import bench_sparse_ease as ease_bench  # noqa: E402

STAGES = ("train", "recommend", "linear")
TRAIN_MODES = ("chunked", "chunked+sparse", "chunked+sparse+bf16moments", "sampled", "sampled+sparse",
               "sampled+sparse+bf16moments")
K = 100
GIB = 2**30


# =============================================================================== the cells (a child's work)
def train_cell(args: argparse.Namespace, n_items: int, mode: str) -> list[dict]:
    """One training mode: median step seconds and peak RSS, then its decoder bound in this process."""
    step = train_bench.child(args, n_items, mode)
    # After the step's cell returned (its net and optimizer freed): the bound's operands do not
    # add to the step's peak, which ``child`` read before returning.
    bound = train_bench.child(args, n_items, "bound")
    seconds = step["step_ms"] / 1000
    return [{"label": _train_label(args, mode), "seconds": seconds, "users_per_s": train_bench.BATCH / seconds,
             "peak_rss": step["peak_rss_mb"] * 2**20, "working_set": None, "bound_s": bound["step_ms"] / 1000}]


def _train_label(args: argparse.Namespace, mode: str) -> str:
    kind = (f"exact chunked (chunk {args.chunk:,})" if mode.startswith("chunked")
            else f"sampled softmax ({args.negatives:,} negatives)" if mode.startswith("sampled") else "full softmax")
    updates = (" + sparse updates, bf16 moments" if mode.endswith("+bf16moments")
               else " + sparse updates" if "+sparse" in mode else "")
    return f"train step: {kind}{updates}"


def recommend_cell(args: argparse.Namespace, n_items: int) -> list[dict]:
    """Mult-VAE top-100 for ``rec_users`` users, its working set, and the forward matmul bound."""
    from recvae.evaluation.ranking import SCORE_CELL_BYTES, check_max_memory, plan_blocks
    from recvae.models import MultVAE

    rows = train_bench.synthetic_rows(max(args.rec_users, train_bench.BATCH), n_items)
    # One step of the lightest training there is (sparse Adam state, no batch x I logits): a
    # fitted estimator through the public fit, where a real epoch at 1M items takes an hour.
    model = MultVAE(hidden_dims=(train_bench.HIDDEN,), latent_dim=200, sampled_softmax=args.negatives,
                    negative_sampler="popularity", sparse_item_updates=True, item_moments="bf16", epochs=1,
                    batch_size=train_bench.BATCH, device=args.device, precision="fp32", progress=False)
    started = time.perf_counter()
    model.fit(rows[:train_bench.BATCH])
    fit_s = time.perf_counter() - started
    # fit leaves the last step's gradients on the parameters; a loaded model has none, and the
    # resident memory the working set is read above should be the weights alone.
    model.net_.zero_grad(set_to_none=True)
    users = rows[:args.rec_users]
    max_memory = check_max_memory(args.max_memory)
    recs, rec_s, working_set = ease_bench._stage(lambda: model.recommend(users, k=K, max_memory=max_memory))
    peak = ease_bench._status("VmHWM")  # the call's absolute peak: _stage reset VmHWM before it
    assert recs.items.shape == (args.rec_users, K) and (recs.items >= 0).all()
    # The plan rank_in_blocks made (recvae.models.base), so that the bound does the same products.
    plan = plan_blocks(args.rec_users, n_items, K, max_memory, blockwise=model.block_scoring,
                       cell_bytes=SCORE_CELL_BYTES + model.block_score_bytes(users))
    bound_s = forward_bound_seconds(model.net_.decoder[-1].weight.detach(), args.rec_users, plan.user_batch,
                                    plan.item_block)
    label = (f"Mult-VAE recommend top-{K}: {args.rec_users:,} users, seen filtered, max_memory "
             f"{max_memory / GIB:g} GiB (blocks of {plan.user_batch:,} users x {plan.item_block:,} items; "
             f"fitted in {fit_s:.1f} s)")
    return [{"label": label, "seconds": rec_s, "users_per_s": args.rec_users / rec_s, "peak_rss": peak,
             "working_set": working_set, "bound_s": bound_s}]


def forward_bound_seconds(weight: torch.Tensor, n_users: int, user_batch: int, item_block: int) -> float:
    """Seconds of ``h @ weight.T`` for ``n_users`` random users x the whole catalogue, ``user_batch``
    users and ``item_block`` items at a time, into one reused output buffer (the scores of a
    million items for 10k users would be 40 GB: the product is only ever held a block at a time)."""
    n_items, hidden = weight.shape
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(user_batch, hidden, generator=generator, dtype=weight.dtype).to(weight.device)
    buffer = torch.empty(user_batch * item_block, dtype=weight.dtype, device=weight.device)

    def block(users: int, start: int, stop: int) -> None:
        # A flat buffer's prefix is contiguous for any block shape, so mm writes into it in place.
        torch.mm(h[:users], weight[start:stop].T, out=buffer[:users * (stop - start)].view(users, stop - start))

    block(user_batch, 0, min(n_items, item_block))  # warm-up: BLAS threads, the buffer's pages
    train_bench._sync(weight.device)
    started = time.perf_counter()
    for first in range(0, n_users, user_batch):
        users = min(user_batch, n_users - first)
        for start in range(0, n_items, item_block):
            block(users, start, min(n_items, start + item_block))
    train_bench._sync(weight.device)
    return time.perf_counter() - started


def linear_cell(args: argparse.Namespace, n_items: int) -> list[dict]:
    """SparseEASE fit and recommend top-100 (``bench_sparse_ease.measure``)."""
    r = ease_bench.measure(n_items, args.linear_users, args.neighbours, args.rec_users, args.max_memory)
    fit = {"label": f"SparseEASE fit: {r['users']:,} users, {r['events']:,} events, k={args.neighbours} "
                    f"({r['weights']:,} weights; estimate {r['estimate'] / GIB:.2f} GiB)",
           "seconds": r["fit_s"], "users_per_s": None, "peak_rss": r["fit_rss"], "working_set": r["fit_peak"],
           "bound_s": None}
    recommend = {"label": f"SparseEASE recommend top-{K}: {r['rec_users']:,} users, seen filtered",
                 "seconds": r["rec_s"], "users_per_s": r["rec_users"] / r["rec_s"], "peak_rss": r["rec_rss"],
                 "working_set": r["rec_peak"], "bound_s": None}
    return [fit, recommend]


def run_cell_here(args: argparse.Namespace, stage: str, n_items: int, mode: str | None) -> list[dict]:
    if stage == "train":
        return train_cell(args, n_items, mode)
    if stage == "recommend":
        return recommend_cell(args, n_items)
    return linear_cell(args, n_items)


# =============================================================================== the parent
def cells(args: argparse.Namespace, stages: list[str]) -> list[tuple[str, str | None]]:
    """(stage, training mode or None) in table order."""
    out: list[tuple[str, str | None]] = []
    for stage in stages:
        out += [(stage, mode) for mode in args.modes] if stage == "train" else [(stage, None)]
    return out


def too_big(args: argparse.Namespace, stage: str, n_items: int, mode: str | None) -> str | None:
    """Why a cell would not fit in the free memory (the VAE cells; SparseEASE checks its own)."""
    if stage == "linear":
        return None
    # The recommendation's fit is a sampled+sparse+bf16moments step; its ranking adds max_memory.
    need = train_bench.estimated_bytes(mode or "sampled+sparse+bf16moments", n_items, args.chunk, args.negatives)
    if stage == "recommend":
        need += args.max_memory
    free = train_bench.available_bytes(args.device)
    return f"needs ~{need / GIB:.1f} GiB, {free / GIB:.1f} GiB available" if need > 0.85 * free else None


def run_cell(args: argparse.Namespace, stage: str, n_items: int, mode: str | None) -> list[dict]:
    """A cell's rows, from its own subprocess (or this process with ``--quick``); a failure is a row."""
    skipped = too_big(args, stage, n_items, mode)
    label = _train_label(args, mode) if stage == "train" else stage
    if skipped:
        return [{"label": label, "skipped": skipped}]
    if args.quick:
        return run_cell_here(args, stage, n_items, mode)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps([stage, n_items, mode]),
               *_shared_flags(args)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return [{"label": label, "skipped": f"failed: {train_bench._last_line(done, width=160)}"}]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shared_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--steps", str(args.steps), "--users", str(args.users), "--chunk", str(args.chunk),
             "--negatives", str(args.negatives), "--device", args.device, "--rec-users", str(args.rec_users),
             "--max-memory", str(args.max_memory), "--linear-users", str(args.linear_users),
             "--neighbours", str(args.neighbours)]
    return flags + (["--threads", str(args.threads)] if args.threads else [])


def _bytes(value: float | None) -> str:
    """GiB (the goals' unit) from 1 GiB up, MiB below, where two decimals of GiB say little."""
    if value is None:
        return ""
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 2**20:,.0f} MiB"


def table(n_items: int, rows: list[dict]) -> str:
    lines = [f"### {n_items:,} items", "",
             "| stage | seconds | users/s | peak RSS | working set | decoder matmul bound s | × bound |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['label']} | skipped: {r['skipped']} | | | | | |")
            continue
        seconds, bound, rate = r["seconds"], r["bound_s"], r["users_per_s"]
        cells = [r["label"], f"{seconds:.3g}", "" if rate is None else f"{rate:,.0f}", _bytes(r["peak_rss"]),
                 _bytes(r["working_set"]), "" if bound is None else f"{bound:.3g}",
                 "" if bound is None else f"{seconds / bound:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {','.join(STAGES)}")
    parser.add_argument("--modes", nargs="+", choices=train_bench.MODES, default=list(TRAIN_MODES),
                        help="training modes of the train stage")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per mode (after one warm-up)")
    parser.add_argument("--users", type=int, default=4000, help="synthetic users of the training steps (~50 items)")
    parser.add_argument("--chunk", type=int, default=8192, help="item_chunk of the chunked modes")
    parser.add_argument("--negatives", type=int, default=2000, help="sampled_softmax of the sampled modes")
    parser.add_argument("--rec-users", type=int, default=10_000, help="users to recommend top-100 for")
    parser.add_argument("--max-memory", type=int, default=GIB, help="recommend's max_memory in bytes")
    parser.add_argument("--linear-users", type=int, default=20_000, help="users SparseEASE is fitted on")
    parser.add_argument("--neighbours", type=int, default=64, help="SparseEASE's neighbours")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per subprocess")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n] for the VAE (not exercised on CUDA)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: 1 timed step, 1000 training users, 200 recommended users, SparseEASE "
                             "on 1000 users, every cell in this process")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a subprocess: JSON [stage, items, mode]; rows out
    args = parser.parse_args()
    if args.quick:
        args.steps, args.users, args.rec_users, args.linear_users = 1, 1000, 200, 1000
    args.linear_users = max(args.linear_users, args.rec_users)  # SparseEASE recommends for its first users
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        stage, n_items, mode = json.loads(args.child)
        print(json.dumps(run_cell_here(args, stage, n_items, mode)))
        return
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}")

    header = (f"CPU threads {args.threads or torch.get_num_threads()}, device {args.device}. Training: Mult-VAE "
              f"I-{train_bench.HIDDEN}-200-{train_bench.HIDDEN}-I, batch {train_bench.BATCH}, fp32, median of "
              f"{args.steps} steps after 1 warm-up, {args.users:,} synthetic users x ~50 items; the bound is the "
              f"output layer's three matmuls. Recommendation: top-{K}, the bound is the forward output matmul. "
              f"SparseEASE: {args.linear_users:,} users, single-threaded BLAS. Seconds are per step for training, "
              f"totals for fit and recommend; working set = peak RSS above the resident memory before the call. "
              + ("Quick mode: every cell in one process (training peaks are its running peak)."
                 if args.quick else "Each cell in its own subprocess."))
    print(header + "\n", flush=True)
    tables = []
    for n_items in args.items:
        rows = []
        for stage, mode in cells(args, stages):
            done = run_cell(args, stage, n_items, mode)
            rows += done
            for r in done:
                print(f"  {n_items:,} items, {r['label']}: {r.get('seconds', r.get('skipped'))}", file=sys.stderr,
                      flush=True)
        tables.append(table(n_items, rows))
        print(tables[-1] + "\n", flush=True)
    text = header + "\n\n" + "\n\n".join(tables)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
