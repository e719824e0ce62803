"""``recvae serve`` (:func:`recvae.serving.server.serve`, HTTP) and ``recvae export``
(:func:`recvae.serving.onnx_export.export_onnx`)."""

from __future__ import annotations

import argparse

from recvae.cli.common import add_run_dir, fail, load_run, one_line, subparser


def add_export(sub, common) -> None:
    p = subparser(sub, common, "export", "write a run's fold-in scorer as an ONNX file (onnxruntime serving)",
                  "Export the fold-in scorer of a run (recvae.serving.onnx_export.export_onnx): a user's item\n"
                  "indices (int64, CSR-style with int64 offsets) and weights (float32) in, the\n"
                  "score of every item out (float32, users x items), at the posterior mean.\n"
                  "Mult-VAE, Mult-DAE, RecVAE and EASE export; needs pip install recvae[onnx].\n\n"
                  "example:\n  recvae export runs/vae --format onnx -o vae.onnx")
    add_run_dir(p, device=False)
    p.add_argument("--format", choices=("onnx",), default="onnx", help="the file format (default onnx)")
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the file to write (replaced if present)")
    p.add_argument("--opset", type=int, help="ONNX opset version (default: recvae.serving.onnx_export.DEFAULT_OPSET)")
    p.add_argument("--unweighted", action="store_true",
                   help="a graph without the values input: every item of a user counts 1")
    p.set_defaults(handler=run_export, device="cpu")


def add_serve(sub, common) -> None:
    p = subparser(sub, common, "serve", "serve a run's recommendations over HTTP (FastAPI + uvicorn)",
                  "Serve a run directory over HTTP (recvae.serving.server; needs pip install recvae[serve]):\n"
                  "POST /recommend, /recommend/batch, /recommend/new-user, /similar; GET /recommend/ID,\n"
                  "/health, /info (JSON; every answer names the serving run's run_id).\n"
                  "Concurrent requests are scored together in batches, off the event loop, with no\n"
                  "fixed wait (what arrives while a batch is scored forms the next one); --no-batching\n"
                  "scores each request alone. Over --max-queue waiting requests answer 503 at once.\n"
                  "A user the run has no history for is answered from the items posted with the\n"
                  "request (fold-in) or by popularity, flagged \"fallback\": true (--unknown-users 404:\n"
                  "refused). SIGHUP reloads RUN_DIR without dropping requests (a run that fails to\n"
                  "load is refused and the old one keeps serving); stop the server with Ctrl-C or SIGTERM.\n\n"
                  "example:\n  recvae serve runs/prod --port 8000\n"
                  "  curl -s localhost:8000/recommend -H 'content-type: application/json' "
                  "-d '{\"user_id\": \"u17\", \"k\": 10}'")
    add_run_dir(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each loading the run (default 1)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="how long a batch waits for more requests once the scorer is free (default 0: none)")
    p.add_argument("--max-batch", type=int, default=256, help="most requests scored in one batch (default 256)")
    p.add_argument("--no-batching", action="store_true", help="score each request alone")
    p.add_argument("--max-queue", metavar="N", type=int, default=1024,
                   help="most requests waiting to be scored; more answer 503 with Retry-After (default 1024)")
    p.add_argument("--max-body-bytes", metavar="N", type=int, default=1 << 20,
                   help="largest request body read, in bytes; larger ones answer 413 unread (default 1,048,576)")
    p.add_argument("--unknown-users", choices=("fallback", "404"), default="fallback",
                   help="users the run has no history for: 'fallback' answers them from posted items or by "
                        "popularity, flagged (default); '404' refuses them")
    p.add_argument("--allow-reload", action="store_true",
                   help="turn on POST /admin/reload {\"run\": DIR} (it loads a directory a request names; one "
                        "worker only)")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """``recvae serve``: :func:`recvae.serving.server.serve` until interrupted (uvicorn logs the address;
    -v each request)."""
    from recvae.serving.server import serve

    serve(args.run_dir, host=args.host, port=args.port, workers=args.workers, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, micro_batching=not args.no_batching, device=args.device,
          log_level="warning" if args.quiet else "info", access_log=args.verbose > 0,
          max_body_bytes=args.max_body_bytes, allow_failed=args.allow_failed, unknown_users=args.unknown_users,
          allow_reload=args.allow_reload, max_queue=args.max_queue)
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``recvae export``: :func:`recvae.serving.onnx_export.export_onnx` on the run's model."""
    from recvae.serving.onnx_export import DEFAULT_OPSET, export_onnx

    run = load_run(args)
    try:
        path = export_onnx(run, args.output, opset=DEFAULT_OPSET if args.opset is None else args.opset,
                           weighted=not args.unweighted, allow_failed=args.allow_failed)
    except ImportError as err:  # onnx / onnxscript missing: the message says what to install
        fail(one_line(err))
    print(f"{type(run.model).__name__} fold-in scorer ({run.n_items:,} items) written to {path}")
    return 0
