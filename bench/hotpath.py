"""The per-request bookkeeping before and after, A/B in one process: CPU ns per request.

    .venv/bin/python bench/hotpath.py [--base REV] [--n N] [--rounds R]

``--base`` (default: the commit before this work) names the revision whose
``observability/metrics.py``, ``observability/audit.py`` and ``gateway/authn.py`` are the
"before"; they are loaded from git next to the current ones. Each case runs in rounds in
rotation and reports the median of CPU time (this process, every thread) per request:

- ``metrics.observe``: one allowed, forwarded request (a decision counter, the cache
  counter and three histograms); run with ``PROMETHEUS_MULTIPROC_DIR`` set to an empty
  folder to measure the ``serve --workers N`` mode;
- ``authenticate``: a known auth token presented again (the hot path);
- ``audit``: one decision event from ``reserve()`` to the line in a file, with 8
  producers interleaving like concurrent requests (each yields to the loop and waits
  0.2 ms per event, as a request waits for its I/O); the cost of the producers alone
  is subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from permgate.config import AuditSettings
from permgate.core.model import Principal
from permgate.gateway.authn import Authenticator
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import Actor, ModelService
from permgate.observability.audit import AuditLog, FileSink
from permgate.observability.metrics import Metrics
from permgate.observability.outcome import RequestOutcome
from permgate.store import open_store

ROOT = Path(__file__).resolve().parents[1]
BASE = "72d0678"  # before the lock-free counters, the remembered tokens and the lingering writer


def _load_base(rev: str, path: str, name: str) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def _outcome(index: int = 0) -> RequestOutcome:
    return RequestOutcome(
        request_id=f"bench-{index:08d}",
        decision_id="0123456789abcdef0123456789abcdef",
        method="GET",
        path="/policy/acme-prod/quotes/q1",
        client_ip="127.0.0.1",
        started=time.time(),
        endpoint="quotes.get",
        decision="allow",
        reason="allowed",
        principal=Principal("alice", "acme"),
        token_id="0123456789abcdef",
        tenant="acme-prod",
        required=("quotes.read",),
        status=200,
        duration_s=0.00042,
        decision_s=2.1e-6,
        upstream_s=0.0003,
        map_sha256="ab" * 32,
    )


# -- metrics ------------------------------------------------------------------------------


def _metrics_case(metrics_class: Any, n: int) -> float:
    metrics = metrics_class()
    outcome = _outcome()
    observe = metrics.observe
    start = time.process_time_ns()
    for _ in range(n):
        observe(outcome)
    return (time.process_time_ns() - start) / n


# -- authentication -------------------------------------------------------------------------


async def _auth_world(folder: Path) -> tuple[Any, ModelCache, str]:
    store = await open_store(f"sqlite://{folder / 'bench.db'}")
    service, cli = ModelService(store), Actor.cli()
    await service.ensure_account(cli, "acme")
    await service.create_tenant(cli, "acme", "acme-prod", type="PRODUCTION", enforcement="enforce")
    await service.create_role(cli, "acme", "agent", "Agent", ["quotes.read"])
    await service.create_principal(
        cli, "acme", "alice", tenants=["acme-prod"], roles=[("agent", None)]
    )
    _, secret = await service.create_token(cli, "alice", "reader", ["quotes.read"], ["acme-prod"])
    model = ModelCache(store)
    await model.attach(store)
    return store, model, secret


async def _auth_case(authenticator: Any, header: str, n: int) -> float:
    authenticate = authenticator.authenticate
    await authenticate(header)  # warm: the token and its owner in memory
    start = time.process_time_ns()
    for _ in range(n):
        await authenticate(header)
    return (time.process_time_ns() - start) / n


# -- audit ------------------------------------------------------------------------------------

PRODUCERS = 8
PACE_SECONDS = 0.0002  # 8 producers: at most ~40,000 events a second


async def _produce(
    reserve: Callable[[], Awaitable[None]] | None, emit: Callable[[RequestOutcome], None] | None,
    n: int,
) -> None:  # fmt: skip
    outcome = _outcome()

    async def producer(count: int) -> None:
        for _ in range(count):
            if reserve is not None:
                await reserve()
            await asyncio.sleep(0)  # the request's own awaits: the loop runs others
            await asyncio.sleep(PACE_SECONDS)  # its I/O: the loop idles between requests
            if emit is not None:
                emit(outcome)

    await asyncio.gather(*(producer(n // PRODUCERS) for _ in range(PRODUCERS)))


async def _audit_case(audit_module: Any, folder: Path, n: int) -> float:
    settings = AuditSettings(queue_size=10_000, overflow="block")
    sink = FileSink(str(folder / "audit.log"), max_bytes=1 << 40, backups=1)
    audit = audit_module.AuditLog(settings, metrics=Metrics(), sink=sink)
    await audit.start()
    start = time.process_time_ns()
    await _produce(audit.reserve, audit.emit_decision, n)
    await audit.close()
    elapsed = time.process_time_ns() - start
    (folder / "audit.log").unlink()
    start = time.process_time_ns()
    await _produce(None, None, n)  # the producers alone
    return (elapsed - (time.process_time_ns() - start)) / n


async def main_async(base: str, n: int, rounds: int) -> int:
    old_metrics = _load_base(base, "src/permgate/observability/metrics.py", "pg_base_metrics")
    old_audit = _load_base(base, "src/permgate/observability/audit.py", "pg_base_audit")
    old_authn = _load_base(base, "src/permgate/gateway/authn.py", "pg_base_authn")
    samples: dict[tuple[str, str], list[float]] = {}

    def add(case: str, side: str, ns: float) -> None:
        samples.setdefault((case, side), []).append(ns)

    with tempfile.TemporaryDirectory(prefix="permgate-bench-") as tmp:
        folder = Path(tmp)
        store, model, secret = await _auth_world(folder)
        header = f"Bearer {secret}"
        authenticators = {
            "before": old_authn.Authenticator(model, token_prefix="pgt_", jwt=None),
            "after": Authenticator(model, token_prefix="pgt_", jwt=None),
        }
        try:
            for _ in range(rounds):
                for side, metrics_class in (("before", old_metrics.Metrics), ("after", Metrics)):
                    add("metrics.observe", side, _metrics_case(metrics_class, n))
                for side, authenticator in authenticators.items():
                    add(
                        "authenticate (known token)",
                        side,
                        await _auth_case(authenticator, header, n),
                    )
                for side, module in (
                    ("before", old_audit),
                    ("after", sys.modules[AuditLog.__module__]),
                ):
                    add("audit event (to a file)", side, await _audit_case(module, folder, n))
        finally:
            await store.close()
    print(f"{'per request':<28} {'before ns':>10} {'after ns':>10} {'after/before':>13}")
    for case in dict.fromkeys(case for case, _ in samples):
        before = statistics.median(samples[(case, "before")])
        after = statistics.median(samples[(case, "after")])
        print(f"{case:<28} {before:>10.0f} {after:>10.0f} {after / before:>12.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help=f"the 'before' revision ({BASE})")
    parser.add_argument("--n", type=int, default=4000, help="requests per sample (4000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds in rotation (7)")
    args = parser.parse_args()
    return asyncio.run(main_async(args.base, args.n, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
