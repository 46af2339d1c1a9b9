"""The gateway's per-request CPU in one process, without sockets; A/B against a revision.

    .venv/bin/python bench/inproc.py                       # this tree, 5 rounds
    .venv/bin/python bench/inproc.py --base HEAD~1         # A/B, rounds in rotation
    .venv/bin/python bench/inproc.py --profile             # cProfile's top functions
    SORT=ncalls TOP=150 .venv/bin/python bench/inproc.py --profile   # calls per request
    CALLERS=perf_counter TOP=0 .venv/bin/python bench/inproc.py --profile   # who calls it
    .venv/bin/python bench/inproc.py --instructions --n 2000 --base HEAD~1   # callgrind
    .venv/bin/python bench/inproc.py --door envoy          # the ext_authz check instead

``permgate serve``'s own parts (``Runtime``: the shipped map, a SQLite store seeded as
``load.py`` seeds it, audit to a file, metrics) answer ``GET /policy/acme-prod/quotes/
{locator}`` with a warm token, from ``--connections`` keep-alive clients at once (each
sends its next request when its answer is in), on uvloop. Only the sockets are
replaced: the client's transport feeds the next request when the answer is written, the
upstream's answers ``upstream.py``'s fixed 200 on the
next turn of the loop. What is left is the Python permgate runs per request (and the
audit writer thread): CPU µs per request from ``time.process_time`` (every thread).

With ``--base REV`` the same harness runs ``REV``'s ``src/`` (from ``git archive``) in
its own process, rounds alternating with this tree's: the A/B of a hot-path change.
``--instructions`` counts instructions per request under valgrind's callgrind instead:
slower, but the same count run after run, however busy the machine (a timed A/B on a
shared 2-core machine moves by ±10 %); about two minutes per tree. The kernel's share
(two sends and two reads per request on loopback) is not in these figures; ``load.py``
measures the whole.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
BENCH: Final = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from load import PYTHON, TARGET, archive, permgate_server  # noqa: E402
from upstream import RESPONSE  # noqa: E402


class _ClientTransport(asyncio.Transport):
    """The client's socket: each whole answer written makes the next request arrive."""

    def __init__(self, harness: _Harness, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._harness = harness
        self._protocol = protocol
        self._answer = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        answer = self._answer + data
        if answer.endswith(self._harness.answer_end):  # whole (else the body follows)
            self._answer = b""
            self._harness.answered(self._protocol, answer)
        else:
            self._answer = answer

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self._harness.failed("the gateway closed the client's connection")


class _UpstreamTransport(asyncio.Transport):
    """The upstream's socket: a whole request written is answered on the loop's next turn."""

    def __init__(self, protocol: asyncio.Protocol, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._protocol = protocol
        self._loop = loop

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, data: bytes) -> None:  # type: ignore[override]
        if data.endswith(b"\r\n\r\n"):
            self._loop.call_soon(self._protocol.data_received, RESPONSE)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Harness:
    """``connections`` clients, each sending its next request when its answer is in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, request: bytes, answer_end: bytes) -> None:
        self.loop = loop
        self.request = request
        self.answer_end = answer_end  # how a whole answer ends
        self.protocols: list[asyncio.Protocol] = []
        self.left = 0
        self.done: asyncio.Future[None] = loop.create_future()

    def client(self, protocol: asyncio.Protocol) -> _ClientTransport:
        self.protocols.append(protocol)
        return _ClientTransport(self, protocol)

    def answered(self, protocol: asyncio.Protocol, answer: bytes) -> None:
        if not answer.startswith(b"HTTP/1.1 200 "):
            self.failed(f"not a 200: {answer[:300]!r}")
            return
        self.left -= 1
        if self.left < len(self.protocols):
            if self.left <= 0 and not self.done.done():
                self.done.set_result(None)
            return
        self.loop.call_soon(protocol.data_received, self.request)

    def failed(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(SystemExit(why))

    async def run(self, n: int) -> None:
        self.left = n
        self.done = self.loop.create_future()
        for protocol in self.protocols:
            protocol.data_received(self.request)
        await self.done


async def _child(
    config: Path, token: str, n: int, rounds: int, profile: bool, connections: int, door: str
) -> list[float]:
    from permgate.config import load_settings
    from permgate.gateway.http1 import Listener
    from permgate.runtime.app import Runtime

    loop = asyncio.get_running_loop()
    # The cached verdict lives an hour here: under callgrind's slowdown a 30 s TTL would
    # expire mid-run, sending some requests down the slower path and the count astray.
    runtime = Runtime(load_settings(config, env={}, overrides={"cache.decision_ttl_seconds": 3600}))
    await runtime.start()
    pool = runtime.upstream._pool
    assert pool is not None

    async def connect() -> Any:
        conn = pool._factory()
        conn.connection_made(_UpstreamTransport(conn, loop))
        return conn

    pool._connect = connect  # type: ignore[method-assign]
    if door == "envoy":  # the decision service's ext_authz check: an empty 200 a request
        target, handler, answer_end = "/envoy" + TARGET, runtime.decision_service(), b"\r\n\r\n"
    else:  # the inline gateway: the upstream's answer relayed
        target, handler, answer_end = TARGET, runtime.gateway, RESPONSE[-40:]
    request = (
        f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    harness = _Harness(loop, request, answer_end)
    listener = Listener(handler, head_timeout=60.0)
    for _ in range(connections):
        protocol = listener.protocol()
        protocol.connection_made(harness.client(protocol))
    try:
        await harness.run(2000)  # warm: the token remembered, the verdict cached
        results = []
        for _ in range(rounds):
            await asyncio.sleep(0.05)  # the audit writer catches up between rounds
            profiler = cProfile.Profile() if profile else None
            cpu0 = time.process_time()
            if profiler is not None:
                profiler.enable()
            await harness.run(n)
            if profiler is not None:
                profiler.disable()
            results.append((time.process_time() - cpu0) / n * 1e6)
            if profiler is not None:
                out = io.StringIO()
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats(os.environ.get("SORT", "tottime"))  # or ncalls, cumulative
                stats.print_stats(int(os.environ.get("TOP", "35")))
                if callers := os.environ.get("CALLERS"):  # who calls what matches this regex
                    stats.print_callers(callers)
                print(out.getvalue(), file=sys.stderr)
        return results
    finally:
        await runtime.stop()


def _run_child(
    src: Path, config: Path, token: str, args: argparse.Namespace, rounds: int
) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}
    env["PYTHONPATH"] = str(src)
    argv = [PYTHON, __file__, "--child", str(config), token, "--n", str(args.n)]
    argv += ["--connections", str(args.connections), "--door", args.door]
    argv += ["--rounds", str(rounds)] + (["--profile"] if args.profile else [])
    out = subprocess.run(argv, env=env, check=True, capture_output=not args.profile, text=True)
    if args.profile:
        raise SystemExit(0)
    return [float(x) for x in out.stdout.split()]


def _instructions(
    src: Path, config: Path, token: str, args: argparse.Namespace
) -> tuple[float, float]:
    """Instructions per request under callgrind, the event loop's thread alone and all
    threads: the same run with n and 3n requests, the difference divided by 2n
    (start-up and warm-up cancel out). The loop thread's count is repeatable whatever
    else the machine does, so a small change shows; the audit writer's varies with
    how many events a batch holds, which depends on the run's speed. About a minute
    per tree."""
    loop_counts, all_counts = [], []
    for n in (args.n, 3 * args.n):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}
        env |= {"PYTHONPATH": str(src), "PYTHONHASHSEED": "0"}
        out = Path(tempfile.mkdtemp()) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", "--separate-threads=yes"]
        argv += [f"--callgrind-out-file={out}", PYTHON, __file__]
        argv += ["--child", str(config), token, "--n", str(n), "--rounds", "1"]
        argv += ["--connections", str(args.connections), "--door", args.door]
        run = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
        total = re.search(r"Collected : (\d+)", run.stderr)
        main_thread = re.search(r"^summary: (\d+)", Path(f"{out}-01").read_text(), re.M)
        if total is None or main_thread is None:
            raise SystemExit(f"callgrind printed no total:\n{run.stderr[-2000:]}")
        all_counts.append(int(total.group(1)))
        loop_counts.append(int(main_thread.group(1)))
    per_request = 2 * args.n
    return (
        (loop_counts[1] - loop_counts[0]) / per_request,
        (all_counts[1] - all_counts[0]) / per_request,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32, help="clients at once (wrk -c)")
    parser.add_argument("--base", help="a git revision to compare with (A/B)")
    parser.add_argument("--profile", action="store_true", help="cProfile one round")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request under valgrind's callgrind (repeatable; try --n 2000)",
    )
    parser.add_argument(
        "--door",
        choices=("gateway", "envoy"),
        default="gateway",
        help="the inline gateway (default) or the decision service's ext_authz check",
    )
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        config, token = args.child
        rounds = 1 if args.profile else args.rounds
        results = uvloop.run(
            _child(Path(config), token, args.n, rounds, args.profile, args.connections, args.door)
        )
        print(" ".join(f"{r:.3f}" for r in results))
        return 0

    with tempfile.TemporaryDirectory(prefix="permgate-inproc-") as tmp:
        folder = Path(tmp)
        _, token, _ = permgate_server("permgate", folder / "gw", 1, upstream_port=9)
        config = folder / "gw" / "permgate.yaml"
        trees = {"this tree": ROOT / "src"}
        if args.base:
            trees = {f"base {args.base}": archive(args.base, folder / "base"), **trees}
        if args.instructions:
            counts = {name: _instructions(src, config, token, args) for name, src in trees.items()}
            print(f"callgrind, {args.n:,} and {3 * args.n:,} requests: instructions/request")
            print(f"  {'':<24} {'loop thread':>12} {'all threads':>12}")
            for name, (loop_thread, every) in counts.items():
                print(f"  {name:<24} {loop_thread:>12,.0f} {every:>12,.0f}")
            if args.base:
                (base_loop, base_all), (this_loop, this_all) = counts.values()
                print(
                    f"  this tree / base: loop thread ×{this_loop / base_loop:.3f}, "
                    f"all threads ×{this_all / base_all:.3f}"
                )
            return 0
        results: dict[str, list[float]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            order = list(trees.items())
            if round_ % 2:
                order.reverse()
            for name, src in order:
                results[name] += _run_child(src, config, token, args, 1)
        print(f"{args.n:,} requests a round, {args.rounds} rounds in rotation: CPU µs/request")
        medians = {name: statistics.median(values) for name, values in results.items()}
        for name, values in results.items():
            runs = " ".join(f"{v:6.2f}" for v in values)
            print(f"  {name:<24} median {medians[name]:6.2f}   runs {runs}")
        if args.base:
            base, this = medians.values()
            print(f"  this tree / base: ×{this / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
