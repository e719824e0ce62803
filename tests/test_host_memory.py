"""Freed host memory kept for reuse while training on the CPU (recvae.training.retained_host_memory).

Counted in page faults, not seconds: a block freed and allocated again inside the context reuses pages
already mapped, where glibc's default maps (and faults in) a fresh block each time.
"""

import platform
import resource
import sys

import pytest
import torch

import recvae.training.host_memory as host_memory
from recvae.models import MultVAE
from recvae.training import retained_host_memory

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")

BLOCK = 16 * 2**20  # float32s: 64 MiB, above glibc's largest mmap threshold (32 MiB)
PAGES = 4 * BLOCK // 4096


def _faults_of_a_fresh_block() -> int:
    """Minor page faults of allocating, filling and freeing one block."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(BLOCK)
    block.fill_(1.0)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_a_freed_block_is_reused_inside_and_released_outside():
    outside = _faults_of_a_fresh_block()
    with retained_host_memory() as active:
        assert active
        _faults_of_a_fresh_block()  # the first takes its pages from the system
        inside = _faults_of_a_fresh_block()
    after = _faults_of_a_fresh_block()
    assert inside < PAGES // 20, (inside, PAGES)
    if outside < PAGES // 4:  # transparent huge pages fault 2 MiB at a time: nothing left to compare
        pytest.skip(f"{outside} faults for {PAGES} pages outside: huge pages")
    assert after > PAGES // 2, "glibc's defaults must be back after the context"


@glibc_only
def test_holders_nest_and_only_the_last_restores(monkeypatch):
    calls = []
    real = host_memory._set
    monkeypatch.setattr(host_memory, "_set", lambda libc, mmap_max, trim: calls.append(mmap_max) or real(
        libc, mmap_max, trim))
    with retained_host_memory():
        with retained_host_memory():
            assert host_memory._holders == 2
        assert calls == [0] and host_memory._holders == 1
    assert calls == [0, host_memory._DEFAULT_MMAP_MAX] and host_memory._holders == 0


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

    monkeypatch.setattr("recvae.training.loop.retained_host_memory", spy)
    monkeypatch.setattr("recvae.training.rec_vae.retained_host_memory", spy)
    import scipy.sparse as sp
    import numpy as np
    x = sp.random(60, 30, density=0.2, format="csr", random_state=np.random.default_rng(0), dtype=np.float32)
    x.data[:] = 1.0
    MultVAE(epochs=1, progress=False, device="cpu", hidden_dims=(8,), latent_dim=4).fit(x)
    MultVAE(epochs=1, progress=False, device="cpu", hidden_dims=(8,), latent_dim=4,
            retain_host_memory=False).fit(x)
    from recvae.models import RecVAE
    RecVAE(epochs=1, progress=False, device="cpu", hidden_dim=8, latent_dim=4).fit(x)
    assert seen == [True, False, True]
