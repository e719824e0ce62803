"""``recvae recommend``, ``embed`` and ``similar``: a run directory's recommendations, embeddings and similar items."""

from __future__ import annotations

import argparse

from recvae.cli.common import (add_run_dir, check_output, fail, load_run, one_line, print_table, progress, subparser,
                               write_output)


def add_id_columns(p) -> None:
    """--id-columns: the ``id_columns`` of :meth:`Run.recommend`, :meth:`Run.embed_users`, :meth:`Run.similar_items`."""
    p.add_argument("--id-columns", choices=("log", "fixed"), default="log",
                   help="names of the id columns in the output: log = the log's own (e.g. customer, product; "
                        "user_id/item_id for MovieLens or a log whose columns were user/item), fixed = user_id, "
                        "item_id (default log)")


def add_recommend(sub, common) -> None:
    p = subparser(sub, common, "recommend", "top-k items for users by id, for every user, or for a new user",
                  "Recommend for users of the log by raw id (--user), for every user the run knows\n"
                  "(--all-users, streamed in batches to --output), or for a new user given the\n"
                  "items they liked (--items: folded in, no retraining). Items a user already\n"
                  "interacted with in the log (any rating) are never recommended unless --keep-seen.\n"
                  "Ids that preprocessing dropped, or that are not in the log, are counted, named\n"
                  "and skipped (--strict: refused). --all-users lists the users preprocessing dropped\n"
                  "(fewer than --min-user-events positives at training) in OUTPUT_STEM.dropped-users.csv.\n"
                  "Output columns use the log's own id names (e.g. customer, product; --id-columns fixed:\n"
                  "user_id, item_id); id files (--users-file ...) may use either.\n\n"
                  "examples:\n  recvae recommend runs/prod --user u12 u57 -k 10 --exclude m3 m9\n"
                  "  recvae recommend runs/prod --all-users -k 100 -o recs.parquet\n"
                  "  recvae recommend runs/prod --items m1 m260 -k 10\n"
                  "  recvae recommend runs/vae --user u12 -k 10 --explore 1 --seed 3 --uncertainty\n\n"
                  "--explore T (VAE family) ranks each list from a sample z = mu + T*sigma*eps of the user's\n"
                  "posterior instead of its mean: more varied lists; the same --seed gives the same lists.\n"
                  "--uncertainty adds each user's mean posterior sigma; --uncertainty-samples S also the\n"
                  "rank spread (1 - mean overlap of S posterior samples' top-k).")
    add_run_dir(p)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="USER_ID", nargs="+", help="raw user ids of the log")
    who.add_argument("--users-file", metavar="FILE",
                     help="a table (.csv/.parquet/.json) with a user_id column (or the log's own user column)")
    who.add_argument("--all-users", action="store_true", help="every user the run knows (needs --output)")
    who.add_argument("--items", metavar="ITEM_ID", nargs="+", help="raw item ids of a new user's history")
    p.add_argument("-k", "--k", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--exclude", metavar="ITEM_ID", nargs="+", help="items never to recommend (to anyone)")
    p.add_argument("--exclude-file", metavar="FILE",
                   help="a table with item_id (for everyone) or user_id, item_id (per user) never to recommend")
    p.add_argument("--candidates", metavar="ITEM_ID", nargs="+", help="the only items that may be recommended")
    p.add_argument("--candidates-file", metavar="FILE",
                   help="a table with item_id (for everyone) or user_id, item_id (per user) of allowed items")
    p.add_argument("--keep-seen", action="store_true", help="allow items the user already interacted with")
    p.add_argument("--strict", action="store_true", help="refuse unknown or dropped user ids and unknown item ids")
    p.add_argument("--batch-size", type=int, default=1000, help="users scored at once (default 1000)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write user_id, rank, item_id, score there (.parquet, .csv, .json, .jsonl)")
    add_posterior_options(p)
    add_id_columns(p)
    p.set_defaults(handler=run_recommend)


def add_posterior_options(p) -> None:
    """--explore, --seed, --uncertainty, --uncertainty-samples: those of :meth:`Run.recommend` (VAE family)."""
    g = p.add_argument_group("posterior (VAE family)")
    g.add_argument("--explore", metavar="T", type=float, default=0.0,
                   help="rank from a posterior sample z = mu + T*sigma*eps instead of mu (default 0: the mean)")
    g.add_argument("--seed", metavar="S", type=int, default=0,
                   help="the draw of --explore and of the rank spread: the same seed, the same lists (default 0)")
    g.add_argument("--uncertainty", action="store_true",
                   help="add a per-user column: the mean posterior sigma")
    g.add_argument("--uncertainty-samples", metavar="S", type=int, default=0,
                   help="also add rank_spread: 1 - mean overlap of the top-k of S >= 2 posterior samples")


def add_embed(sub, common) -> None:
    p = subparser(sub, common, "embed", "export user embeddings (mu, sigma) or item embeddings",
                  "Export the users' embeddings of a run (recvae.runs.Run.embed_users): VAEs give the\n"
                  "posterior mean mu and standard deviation sigma of each user's history; ALS/BPR give\n"
                  "factors (mu only). With --items, the item embeddings instead.\n\n"
                  "Output by suffix:\n"
                  "  .parquet / .csv / .json / .jsonl  one row per user: user_id, mu_0.., sigma_0..\n"
                  "                   (--items: item_id, emb_0..; the ids under the log's own column\n"
                  "                   names, e.g. customer, unless --id-columns fixed)\n"
                  "  .npy             FILE.npy holds mu (or the item embeddings), FILE_sigma.npy sigma,\n"
                  "                   FILE_ids.npy the raw user (or item) id of each row\n\n"
                  "example:\n  recvae embed runs/vae --output users.parquet\n"
                  "  recvae embed runs/vae --user u1 u2 --output two.csv")
    add_run_dir(p)
    p.add_argument("--user", metavar="USER_ID", nargs="+", help="only these raw user ids (default: every user)")
    p.add_argument("--items", action="store_true", help="export item embeddings instead of users'")
    p.add_argument("--strict", action="store_true", help="refuse unknown or dropped user ids")
    p.add_argument("--output", "-o", metavar="FILE", required=True, help="FILE.parquet, .csv, .json, .jsonl or .npy")
    p.add_argument("--uncertainty", action="store_true",
                   help="add a column uncertainty: each user's mean posterior sigma (VAE family)")
    p.add_argument("--layout", choices=("columns", "list"), default="columns",
                   help="columns: one column per dimension (default); list: one array column per vector "
                        "(user_id, mu, sigma), the layout vector stores load (.parquet, .json, .jsonl)")
    add_id_columns(p)
    p.set_defaults(handler=run_embed)


def add_similar(sub, common) -> None:
    p = subparser(sub, common, "similar", "the items most similar to given items",
                  "Items most similar to each given item in the model's own item space\n"
                  "(recvae.runs.Run.similar_items): EASE's weights, item-KNN's similarities, the\n"
                  "cosine of ALS/BPR item factors or of a VAE's decoder rows.\n\n"
                  "example:\n  recvae similar runs/ease --item m1 m50 -k 5")
    add_run_dir(p)
    p.add_argument("--item", metavar="ITEM_ID", nargs="+", required=True, help="raw item ids")
    p.add_argument("-k", "--k", type=int, default=10, help="similar items per item (default 10)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write them there (.parquet, .csv, .json, .jsonl)")
    add_id_columns(p)
    p.set_defaults(handler=run_similar)


def run_recommend(args: argparse.Namespace) -> int:
    """``recvae recommend``: :meth:`Run.recommend`, :meth:`Run.recommend_all` or :meth:`Run.recommend_for_items`."""
    from recvae.data.tables import read_ids_table

    if args.k < 1:
        fail(f"-k {args.k}: ask for at least one item")
    if args.all_users and not args.output:
        fail("--all-users writes every user's recommendations to a file: give --output recs.parquet (or .csv)")
    check_output(args.output)
    if args.exclude and args.exclude_file or args.candidates and args.candidates_file:
        fail("give items with --exclude/--candidates or with the -file option, not both")
    run = load_run(args)
    posterior = {"explore": args.explore, "seed": args.seed, "uncertainty": args.uncertainty,
                 "uncertainty_samples": args.uncertainty_samples}
    names = run.id_aliases  # id files may use the log's own column names
    out = run.id_names(args.id_columns)  # the output's
    exclude = args.exclude if args.exclude_file is None else read_ids_table(args.exclude_file, aliases=names)
    candidates = args.candidates if args.candidates_file is None else \
        read_ids_table(args.candidates_file, aliases=names)
    users = args.user if args.users_file is None else \
        read_ids_table(args.users_file, "user_id", names)["user_id"].drop_duplicates().tolist()
    if args.all_users:
        path = run.recommend_all(args.output, k=args.k, filter_seen=not args.keep_seen, exclude=exclude,
                                 candidates=candidates, batch_size=args.batch_size, progress=progress(args),
                                 id_columns=args.id_columns, **posterior)
        dropped = len(run.dropped_user_ids)
        print(f"Top {run.k_label(args.k)} for {len(run.user_ids):,} users written to {path}" + (
            f"; {dropped:,} users of the log are not among them, listed in {run.dropped_users_path(path)} "
            "(dropped by preprocessing: 'recvae train ... --min-user-events 1' includes them, or --items "
            "recommends from their items)" if dropped else ""))
        return 0
    if args.items is not None:
        frame = run.recommend_for_items(args.items, k=args.k, exclude=exclude, candidates=candidates,
                                        strict=args.strict, id_columns=args.id_columns, **posterior)
        used = frame.attrs.get("items_used", len(args.items))
        ignored = f" ({len(args.items) - used} not used: unknown or repeated)" if used < len(args.items) else ""
        print(f"Top {run.k_label(args.k)} for a new user with {used} items{ignored}{_uncertain(frame)}:")
        print_table(frame[["rank", out["item_id"], "score"]])
        write_output(frame, args.output, "Recommendations")  # rank, item_id, score: a new user has no id
        return 0
    frame = run.recommend(users, k=args.k, filter_seen=not args.keep_seen, exclude=exclude,
                          candidates=candidates, strict=args.strict, batch_size=args.batch_size,
                          id_columns=args.id_columns, **posterior)
    if frame.empty:
        sample = ", ".join(map(repr, run.user_ids[:3].tolist()))
        fail(f"--user: no recommendations, {frame.attrs['skipped'].message()}; the run's user ids look like "
             f"{sample}; for a new user, pass their items with --items")
    if args.output is None or len(users) <= 20:
        for user, part in frame.groupby(out["user_id"], sort=False):
            print(f"Top {run.k_label(args.k)} for user {user}{_uncertain(part)}:")
            print_table(part[["rank", out["item_id"], "score"]])
    write_output(frame, args.output, "Recommendations")
    return 0


def _uncertain(frame) -> str:
    """`` (uncertainty 0.41, rank spread 0.62)`` for a heading when the frame holds those columns."""
    shown = [f"{label} {frame[name].iloc[0]:.4f}" for name, label in (("uncertainty", "uncertainty"),
                                                                       ("rank_spread", "rank spread"))
             if name in frame.columns and len(frame)]
    return f" ({', '.join(shown)})" if shown else ""


def run_embed(args: argparse.Namespace) -> int:
    """``recvae embed``: :meth:`Run.embed_users` or :meth:`Run.item_embeddings` to a file."""
    from recvae.data.tables import EMBEDDING_SUFFIXES, check_table_output, write_embeddings

    check_table_output(args.output, EMBEDDING_SUFFIXES)
    run = load_run(args)
    try:
        frame = run.item_embeddings(id_columns=args.id_columns) if args.items else \
            run.embed_users(args.user, strict=args.strict, id_columns=args.id_columns, uncertainty=args.uncertainty)
    except NotImplementedError as err:
        fail(f"RUN_DIR {args.run_dir}: {one_line(err)}; models with embeddings: mult-vae, mult-dae, recvae, als, bpr")
    written = write_embeddings(frame, args.output, layout=args.layout)
    print(f"{len(frame):,} {'items' if args.items else 'users'} x {frame.shape[1] - 1} columns written to "
          f"{', '.join(str(p) for p in written)}")
    return 0


def run_similar(args: argparse.Namespace) -> int:
    """``recvae similar``: :meth:`Run.similar_items`."""
    if args.k < 1:
        fail(f"-k {args.k}: ask for at least one item")
    check_output(args.output)
    run = load_run(args)
    try:
        frame = run.similar_items(args.item, k=args.k, id_columns=args.id_columns)
    except NotImplementedError as err:
        fail(f"RUN_DIR {args.run_dir}: {one_line(err)}")
    out = run.id_names(args.id_columns)
    for item, part in frame.groupby(out["item_id"], sort=False):
        print(f"Most similar to item {item}:")
        print_table(part[["rank", out["similar_item_id"], "score"]])
    write_output(frame, args.output, "Similar items")
    return 0
