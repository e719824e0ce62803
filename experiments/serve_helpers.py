"""What the serving benchmarks share: a real ``recvae serve`` in a subprocess, its memory, a free port.

    from serve_helpers import Server
    with Server(run_dir, "--no-batching", cpus="1") as server:   # taskset -c 1 recvae serve RUN ...
        ... server.url, server.rss_mib() ...

Used by bench_serve.py, bench_serve_body.py and bench_serve_load.py (run from experiments/, so this file is
importable as ``serve_helpers``). Asserts nothing.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(p) for p in text.split()]
    return kids + [g for k in kids for g in _children(k)]


class Server:
    """``recvae serve RUN --host 127.0.0.1 --port P --device cpu ARGS`` in a subprocess, up (``/health``
    answers) until the ``with`` block ends; ``cpus`` pins it (and its worker processes) with ``taskset -c``."""

    def __init__(self, run_dir: Path, *args: str, cpus: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "recvae", "-q", "serve", str(run_dir), "--host", "127.0.0.1",
                   "--port", str(self.port), "--device", "cpu", *args]
        if cpus is not None:
            if shutil.which("taskset") is None:
                raise RuntimeError("taskset is missing (util-linux): install it, or run without pinning cores")
            command = ["taskset", "-c", cpus, *command]
        self.command = command

    def __enter__(self) -> Server:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.proc.stderr.read()[-1000:]}")
            if self.get("/health")[0] == 200:
                return self
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the server did not answer /health within {START_TIMEOUT_S} s")
            time.sleep(0.2)

    def __exit__(self, *_) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc.stderr.close()

    def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: (status, body); (0, b"") when nothing answers."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""

    def pids(self) -> list[int]:
        """The server's processes: the main one and its workers (not taskset, which execs)."""
        return [self.proc.pid, *_children(self.proc.pid)]

    def rss_mib(self) -> float:
        """Resident memory of the server's processes together, MiB."""
        return sum(status_kib(p, "VmRSS") for p in self.pids() if Path(f"/proc/{p}").exists()) / 1024


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` in ``path`` between ``<!-- name -->`` and ``<!-- /name -->``, replacing that section only
    (each serving benchmark owns one section of experiments/results/serve.md); appended when absent."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    old = path.read_text() if path.exists() else "# Serving speed (`recvae serve`)\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
