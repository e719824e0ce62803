"""recvae.runtime.memory: the memory a process may still take, and the one refusal every model gives."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from recvae.runtime import memory
from recvae.runtime.memory import InsufficientMemoryError, describe_bytes, require_memory


def test_a_plan_that_does_not_fit_is_one_line_naming_its_parts_and_the_fix():
    with pytest.raises(InsufficientMemoryError) as caught:
        require_memory("EASE on 36,073 items", {"Gram matrix": 10 * 2**30, "weights": 5 * 2**30},
                       "use --model sparse-ease", available=8 * 2**30)
    text = str(caught.value)
    assert "\n" not in text and isinstance(caught.value, MemoryError)
    assert text == ("EASE on 36,073 items needs about 15.00 GiB (Gram matrix: 10.00 GiB, weights: 5.00 GiB) "
                    "but only 8.00 GiB is available; use --model sparse-ease")
    assert caught.value.needed == 15 * 2**30 and caught.value.available == 8 * 2**30


def test_a_plan_over_half_warns_and_one_that_fits_is_quiet(caplog):
    caplog.set_level(logging.WARNING, logger="recvae.runtime.memory")
    assert require_memory("x", {"a": 600}, "fix", available=1000) == 600
    assert "more than 50%" in caplog.text and "if it is killed, fix" in caplog.text
    caplog.clear()
    require_memory("x", {"a": 400}, "fix", available=1000)
    assert caplog.text == ""


def test_the_check_reads_the_fake_a_test_installs(monkeypatch):
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10)
    with pytest.raises(InsufficientMemoryError):
        require_memory("x", {"a": 11}, "fix")


def test_sizes_read_as_people_read_them():
    assert describe_bytes(1.25 * 2**30) == "1.25 GiB" and describe_bytes(300 * 2**20) == "300 MiB"


def test_an_address_space_limit_caps_what_is_available():
    # in a child: the limit would bind this test process too
    code = ("import resource; from recvae.runtime.memory import available_memory_bytes as a; free = a(); "
            "resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, resource.RLIM_INFINITY)); capped = a(); "
            "print(free, capped)")
    free, capped = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split())
    assert capped < 6 * 2**30 and capped <= free
