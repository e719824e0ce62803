"""Freed host memory kept for reuse while training on the CPU (recvae.training.retained_host_memory).

Counted in page faults and resident pages, not seconds, each in a fresh process (whose heap has a known
layout): a block freed and allocated again inside the context reuses pages already mapped, where glibc's
default maps (and faults in) a fresh block each time; leaving the context gives the pages back.
"""

import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import recvae.training.host_memory as host_memory
from recvae.models import MultVAE, RecVAE
from recvae.training import retained_host_memory

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")

PAGES = 16384  # the probe's block: 64 MiB of 4 KiB pages, above glibc's largest mmap threshold (32 MiB)

PROBE = r"""
import json, os, resource, torch
from recvae.training import retained_host_memory

def faults():  # minor page faults of allocating, filling and freeing one 64 MiB block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(16 * 2**20)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def steady():  # after a few blocks, as a training step after the first few
    for _ in range(4):
        faults()
    return [faults() for _ in range(3)]

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

out = {"outside": steady()}
with retained_host_memory() as active:
    out["active"] = active
    out["inside"] = steady()
    out["resident_inside"] = resident_mib()
out["resident_after"] = resident_mib()
print(json.dumps(out))
"""


@glibc_only
def test_a_freed_block_is_reused_inside_and_given_back_after():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["active"]
    assert max(out["inside"]) < PAGES // 20, out
    # the block freed last stays resident inside the context and goes back to the system after it
    assert out["resident_inside"] - out["resident_after"] > 48, out
    if min(out["outside"]) < PAGES // 4:  # transparent huge pages fault 2 MiB at a time: nothing to compare
        pytest.skip(f"{out['outside']} faults for {PAGES} pages outside: huge pages")
    assert min(out["outside"]) > PAGES // 2, out


@glibc_only
def test_holders_nest_and_only_the_last_restores(monkeypatch):
    calls = []
    real = host_memory._set
    monkeypatch.setattr(host_memory, "_set", lambda libc, retained: calls.append(retained) or real(libc, retained))
    with retained_host_memory():
        with retained_host_memory():
            assert host_memory._holders == 2
        assert calls == [True] and host_memory._holders == 1
    assert calls == [True, False] and host_memory._holders == 0


def test_disabled_or_elsewhere_it_does_nothing(monkeypatch):
    with retained_host_memory(enabled=False) as active:
        assert not active and host_memory._holders == 0
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    with retained_host_memory() as active:
        assert not active


def test_training_holds_it_on_the_cpu_unless_turned_off(monkeypatch):
    seen = []
    real = host_memory.retained_host_memory

    def spy(enabled=True):
        seen.append(enabled)
        return real(enabled)

    monkeypatch.setattr("recvae.training.loop.retained_host_memory", spy)  # both trainers' host_memory_for
    x = sp.random(60, 30, density=0.2, format="csr", random_state=np.random.default_rng(0), dtype=np.float32)
    x.data[:] = 1.0
    small = {"epochs": 1, "progress": False, "device": "cpu", "latent_dim": 4}
    MultVAE(hidden_dims=(8,), **small).fit(x)
    MultVAE(hidden_dims=(8,), retain_host_memory=False, **small).fit(x)
    RecVAE(hidden_dim=8, **small).fit(x)
    assert seen == [True, False, True]
