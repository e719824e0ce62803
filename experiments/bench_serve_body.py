"""The server's memory under a huge request body (issue 35): peak and settled RSS for a 100 MB POST /recommend.

A popularity run on a small synthetic log is served by ``recvae serve`` (uvicorn, one process) in a
subprocess (experiments/serve_helpers.py), once with no effective body limit (``max_body_bytes=2**40``: the server reads
every body, as before the limit existed) and once with the default limit (1 MiB). Against each, a client
on the same machine sends, in turn:

- ``one``: one 100 MB body with its Content-Length (an ``exclude`` list of ~9 M ids, streamed from a
  generator so that the client holds 1 MiB at a time);
- ``two``: two such bodies at once;
- ``chunked``: one 100 MB body with chunked transfer encoding (no Content-Length).

Per row: the status each client saw (or how the connection ended), the server's RSS before, its peak
during (Linux ``VmHWM``, reset before each row through ``/proc/PID/clear_refs``) and its RSS two seconds
after. Asserts nothing.

    python experiments/bench_serve_body.py            # 100 MB bodies
    python experiments/bench_serve_body.py --mb 20    # smaller ones
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
import time
from pathlib import Path

from serve_helpers import Server, status_kib

CHUNK = 1 << 20


def _body(mb: int):
    """(length, chunks) of a JSON body of about ``mb`` MB: a known-shaped request with a huge exclude list."""
    head, tail = b'{"user_id": 1, "k": 10, "exclude": [', b'"x"]}'
    piece = b'"item-000",' * (CHUNK // 11)
    n = mb * 10**6 // len(piece) + 1
    return len(head) + n * len(piece) + len(tail), lambda: iter([head] + [piece] * n + [tail])


def post(port: int, mb: int, chunked: bool) -> str:
    """Send one huge body; the status the server answered, or how the connection ended."""
    length, chunks = _body(mb)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.putrequest("POST", "/recommend")
        conn.putheader("content-type", "application/json")
        conn.putheader("transfer-encoding" if chunked else "content-length", "chunked" if chunked else str(length))
        conn.endheaders()
        sent = 0
        try:
            for chunk in chunks():
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
            if chunked:
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer may still be there
        try:
            response = conn.getresponse()
            return f"{response.status} after {sent / 1e6:.0f} MB sent"
        except (ConnectionError, http.client.HTTPException) as err:
            return f"{type(err).__name__} after {sent / 1e6:.0f} MB sent"
    finally:
        conn.close()


def measure(server: Server, mb: int, clients: int, chunked: bool) -> dict:
    pid = server.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = status_kib(pid, "VmRSS")
    answers: list[str] = [""] * clients

    def one(i: int) -> None:
        answers[i] = post(server.port, mb, chunked)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2.0)
    return {"answers": "; ".join(answers), "before": before / 1024, "peak": status_kib(pid, "VmHWM") / 1024,
            "after": status_kib(pid, "VmRSS") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="body size in MB (default 100)")
    args = parser.parse_args()
    from recvae.data import SyntheticConfig, synthetic_log
    from recvae.runs import Run

    with tempfile.TemporaryDirectory(prefix="recvae-bench-body-") as tmp:
        run_dir = Path(tmp) / "pop"
        Run.fit(synthetic_log(SyntheticConfig(n_users=200, n_items=50, seed=0)), "popularity", output=run_dir,
                report=lambda _: None)
        print("| limit | case | answers | RSS before (MiB) | peak (MiB) | RSS after (MiB) |\n|---|---|---|---|---|---|")
        for label, limit in (("none (2**40)", 2**40), ("1 MiB (default)", 1 << 20)):
            with Server(run_dir, "--max-body-bytes", str(limit)) as server:
                for case, clients, chunked in (("one", 1, False), ("two", 2, False), ("chunked", 1, True)):
                    row = measure(server, args.mb, clients, chunked)
                    print(f"| {label} | {case} | {row['answers']} | {row['before']:.0f} | {row['peak']:.0f} | "
                          f"{row['after']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
