"""The server's memory under a huge request body (issue 35): peak and settled RSS for a 100 MB POST /recommend.

A popularity run on a small synthetic log is served by ``recvae.serving.server.serve`` (uvicorn, one
process) in a subprocess, once with no effective body limit (``max_body_bytes=2**40``: the server reads
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
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 1 << 20
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


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


class Server:
    """``serve(run_dir, max_body_bytes=...)`` in a subprocess until the ``with`` block ends."""

    def __init__(self, run_dir: Path, max_body_bytes: int) -> None:
        self.port = _free_port()
        code = ("import sys; from recvae.serving.server import serve; "
                "serve(sys.argv[1], port=int(sys.argv[2]), max_body_bytes=int(sys.argv[3]), device='cpu')")
        self.command = [sys.executable, "-c", code, str(run_dir), str(self.port), str(max_body_bytes)]

    def __enter__(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"the server did not answer /health within {START_TIMEOUT_S} s")

    def __exit__(self, *_) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def measure(server: Server, mb: int, clients: int, chunked: bool) -> dict:
    pid = server.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kib(pid, "VmRSS")
    answers: list[str] = [""] * clients

    def one(i: int) -> None:
        answers[i] = post(server.port, mb, chunked)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2.0)
    return {"answers": "; ".join(answers), "before": before / 1024, "peak": _status_kib(pid, "VmHWM") / 1024,
            "after": _status_kib(pid, "VmRSS") / 1024}


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
            with Server(run_dir, limit) as server:
                for case, clients, chunked in (("one", 1, False), ("two", 2, False), ("chunked", 1, True)):
                    row = measure(server, args.mb, clients, chunked)
                    print(f"| {label} | {case} | {row['answers']} | {row['before']:.0f} | {row['peak']:.0f} | "
                          f"{row['after']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
