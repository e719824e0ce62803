"""``recvae evaluate`` (:meth:`recvae.runs.Run.evaluate`) and ``recvae experiment``
(:func:`recvae.experiment.run_experiment`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from recvae.cli.common import add_run_dir, check_output, fail, load_run, one_line, subparser, write_output


#: recvae.evaluation.DIVERSITY_SPACES, written out: the command line imports no torch until a command runs.
DIVERSITY_SPACES = ("auto", "embeddings", "cooccurrence")


def add_evaluate(sub, common) -> None:
    p = subparser(sub, common, "evaluate", "metrics of a saved run on its validation or test users",
                  "Score the held-out users of a run's split (fold-in, seen items excluded,\n"
                  "full-catalogue ranking) and print each metric's mean with its 95% CI.\n\n"
                  "Beyond-accuracy metrics (novelty, diversity, popularity bias, exposure) describe\n"
                  "every user's list; gini and coverage are one number over all lists (no CI).\n\n"
                  "examples:\n  recvae evaluate runs/vae --k 10 20 100 --metrics ndcg recall mrr --output users.csv\n"
                  "  recvae evaluate runs/vae --metrics ndcg@100,novelty@20,diversity@20,arp@20,long_tail@20,"
                  "gini@20,coverage@20")
    add_run_dir(p)
    p.add_argument("--which", choices=("test", "validation"), default="test", help="held-out users (default test)")
    p.add_argument("--k", metavar="K", type=int, nargs="+",
                   help="cut-offs (default 20 50 100, those not above the number of items)")
    p.add_argument("--metrics", metavar="M", nargs="+", default=["ndcg", "recall"],
                   help="names (at every --k) or name@k, separated by spaces or commas: accuracy ndcg recall "
                        "precision hit_rate map mrr; beyond accuracy novelty diversity arp long_tail gini "
                        "coverage (docs/metrics.md; default ndcg recall)")
    p.add_argument("--diversity-space", choices=DIVERSITY_SPACES, default="auto",
                   help="item vectors of diversity: the model's embeddings when it has them (auto), those "
                        "only (embeddings), or training co-occurrence, comparable across models (cooccurrence)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the per-user metrics there (.csv, .parquet, .json, .jsonl)")
    p.set_defaults(handler=run_evaluate)


def add_experiment(sub, common) -> None:
    p = subparser(sub, common, "experiment", "run an experiment config and write its report",
                  "Run the experiment described by CONFIG (see experiments/) with\n"
                  "recvae.experiment.run_experiment and print the path of its report.")
    p.add_argument("config", metavar="CONFIG", help="experiment config file")
    p.add_argument("--output", metavar="DIR", help="where to write results (default: the runner's)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--jobs", metavar="N", type=int, default=1,
                   help="models run at a time, each in its own process with a share of the threads (default 1)")
    p.set_defaults(handler=run_experiment_command)


def run_evaluate(args: argparse.Namespace) -> int:
    """``recvae evaluate``: :meth:`Run.evaluate`, a table of metrics (mean ± 95% CI)."""
    check_output(args.output)
    run = load_run(args)
    metrics = [name for entry in args.metrics for name in entry.split(",") if name]
    result = run.evaluate(args.which, ks=args.k, metrics=metrics, diversity_space=args.diversity_space)
    print(f"{type(run.model).__name__} on {len(result.per_user):,} {args.which} users of {args.run_dir} "
          f"({result.seconds:.1f} s):")
    print(result.table().to_string(na_rep="-", float_format=lambda v: f"{v:.0f}"))
    write_output(result.per_user, args.output, "Per-user metrics")
    return 0


def run_experiment_command(args: argparse.Namespace) -> int:
    """``recvae experiment``: :func:`recvae.experiment.run_experiment` on CONFIG; prints the report path."""
    config = Path(args.config)
    if not config.is_file():
        fail(f"CONFIG {config}: no such file; give an experiment config (see experiments/)")
    from recvae.experiment import run_experiment

    if args.jobs < 1:
        fail(f"--jobs {args.jobs}: give a number of processes >= 1")
    try:
        report = run_experiment(config, output_dir=args.output, progress=not args.no_progress, jobs=args.jobs)
    except (FileNotFoundError, ValueError) as err:
        fail(f"CONFIG {config}: {one_line(err)}")
    print(f"Report written to {report}")
    return 0
