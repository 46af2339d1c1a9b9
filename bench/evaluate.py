"""The gateway's handler before and after the one evaluation, A/B in one process, ns/op.

    .venv/bin/python bench/evaluate.py [--base REV]

``--base`` (default: the commit before ``permgate.gateway.evaluate`` existed) names the
revision whose ``src/permgate/gateway/pipeline.py`` is the "before"; it is loaded from git
next to the current one. Both gateways run on the same store, model, authenticator
and map, in rounds in rotation (medians of CPU time per request), for requests that
never reach an upstream:

- a repeated request with a known auth token refused 403 from the decision cache
  (the hot path: hygiene, route, authenticate, cached decision, render);
- the same with a decision cache whose entries expire at once (a fresh decision
  every time: the roles and tenant read from the model, then ``decide()``);
- a 401 (revoked token) and a 400 (a dot segment).
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
from pathlib import Path
from types import ModuleType
from typing import Any

from aiohttp.test_utils import make_mocked_request

from permgate.gateway.authn import Authenticator
from permgate.gateway.modelcache import ModelCache
from permgate.gateway.pipeline import Gateway
from permgate.gateway.proxy import Upstream
from permgate.manage.service import Actor, ModelService
from permgate.maps.loader import load_map
from permgate.store import open_store

ROOT = Path(__file__).resolve().parents[1]
BASE = "a5ec63e"  # the reason codes in one module; the pipeline still its own evaluation


class _Observer:
    async def admit(self) -> None:
        return None

    def record(self, outcome: object) -> None:
        return None

    def refused(self, outcome: object) -> None:
        return None


def _load_base_pipeline(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:src/permgate/gateway/pipeline.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spec = importlib.util.spec_from_loader("permgate_base_pipeline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:pipeline.py", "exec"), module.__dict__)
    return module


async def _world(folder: Path) -> tuple[Any, ModelCache, Authenticator, dict[str, str]]:
    store = await open_store(f"sqlite://{folder / 'bench.db'}")
    service, cli = ModelService(store), Actor.cli()
    await service.ensure_account(cli, "acme")
    await service.create_tenant(cli, "acme", "acme-prod", type="PRODUCTION", enforcement="enforce")
    await service.create_role(cli, "acme", "agent", "Agent", ["quotes.read", "quotes.write"])
    await service.create_principal(
        cli, "acme", "alice", tenants=["acme-prod"], roles=[("agent", None)]
    )
    _, reader = await service.create_token(cli, "alice", "reader", ["quotes.read"], ["acme-prod"])
    revoked_token, revoked = await service.create_token(
        cli, "alice", "revoked", ["quotes.read"], ["acme-prod"]
    )
    await service.revoke_token(cli, revoked_token.id)
    model = ModelCache(store)
    authenticator = Authenticator(model, token_prefix="pgt_", jwt=None)
    return store, model, authenticator, {"reader": reader, "revoked": revoked}


# The shipped map's previewInvoicesForQuote (invoices.read): the reader token lacks it.
_PATH = "/billing/acme-prod/invoices/quotes"
REQUESTS = {
    "403 cached (hot path)": ("GET", f"{_PATH}/Q-1/previewInvoices", "reader", True),
    "403 decided afresh": ("GET", f"{_PATH}/Q-1/previewInvoices", "reader", False),
    "401 revoked token": ("GET", f"{_PATH}/Q-1/previewInvoices", "revoked", True),
    "400 dot segment": ("GET", f"{_PATH}/../previewInvoices", "reader", True),
}


async def _measure(gateway: Any, request: Any, status: int, n: int) -> float:
    # CPU time of this process: on a shared machine, wall time mostly measures the others.
    start = time.process_time_ns()
    for _ in range(n):
        response = await gateway.handle(request)
    elapsed = (time.process_time_ns() - start) / n
    assert response.status == status, (response.status, response.text)
    return elapsed


async def main_async(base: str, n: int, rounds: int) -> int:
    endpoint_map = load_map(ROOT / "endpoint_map.yaml")
    old = _load_base_pipeline(base)
    with tempfile.TemporaryDirectory(prefix="permgate-bench-") as tmp:
        store, model, authenticator, secrets = await _world(Path(tmp))
        try:
            upstream = Upstream("http://127.0.0.1:9", timeout_seconds=1.0)

            def gateways(ttl: float) -> dict[str, Any]:
                common = {
                    "endpoint_map": endpoint_map,
                    "model": model,
                    "authenticator": authenticator,
                    "upstream": upstream,
                    "observer": _Observer(),
                    "decision_ttl_seconds": ttl,
                }
                return {"before": old.Gateway(**common), "after": Gateway(**common)}

            cached, fresh = gateways(30.0), gateways(1e-9)
            statuses = {"reader": 403, "revoked": 401}
            samples: dict[tuple[str, str], list[float]] = {}
            for _ in range(rounds):
                for label, (method, path, who, use_cache) in REQUESTS.items():
                    headers = {"Host": "gw", "Authorization": f"Bearer {secrets[who]}"}
                    request = make_mocked_request(method, path, headers=headers)
                    status = 400 if ".." in path else statuses[who]
                    for side, gateway in (cached if use_cache else fresh).items():
                        ns = await _measure(gateway, request, status, n)
                        samples.setdefault((label, side), []).append(ns)
        finally:
            await store.close()
    print(f"{'request':<24} {'before ns':>10} {'after ns':>10} {'after/before':>13}")
    for label in REQUESTS:
        before = statistics.median(samples[(label, "before")])
        after = statistics.median(samples[(label, "after")])
        print(f"{label:<24} {before:>10.0f} {after:>10.0f} {after / before:>12.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help=f"the 'before' revision ({BASE})")
    parser.add_argument("--n", type=int, default=2000, help="requests per sample (2000)")
    parser.add_argument("--rounds", type=int, default=21, help="rounds in rotation (21)")
    args = parser.parse_args()
    return asyncio.run(main_async(args.base, args.n, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
