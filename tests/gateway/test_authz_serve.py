"""The decision service in real `permgate serve` processes: beside the gateway with
worker processes sharing its socket, alone in decision-only mode, and refused when a
config serves nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from gateway_procs import (
    echo_upstream,
    run_to_exit,
    seed_sqlite,
    serve_env,
    serve_sqlite,
)
from harness import TEST_MAP, eventually, free_port


def check_headers(secret: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {secret}",
        "X-Forwarded-Method": "POST",
        "X-Forwarded-Uri": "/policy/acme-prod/quotes",
    }


async def test_workers_share_the_decision_listener(tmp_path: Path) -> None:
    """With --workers 2 the decision listener is bound once and handed to both workers;
    its checks are counted in the one metrics endpoint."""
    port = free_port()
    async with (
        echo_upstream() as upstream,
        serve_sqlite(
            tmp_path, upstream, workers=2, extra=f"authz_listen: 127.0.0.1:{port}"
        ) as served,
        aiohttp.ClientSession() as http,
    ):
        headers = check_headers(served.tokens["alice"])
        for _ in range(6):
            async with http.get(f"http://127.0.0.1:{port}/forward-auth", headers=headers) as r:
                assert r.status == 200
                assert r.headers["X-Permgate-Principal"] == "alice"
        async with http.get(served.admin_url + "/readyz") as r:
            checks = (await r.json())["checks"]
        assert checks["gateway_listener"] and checks["decision_listener"]

        async def counted() -> bool:
            async with http.get(served.admin_url + "/metrics") as r:
                text = await r.text()
            return (
                'permgate_decisions_total{decision="allow",endpoint="quotes.create",'
                'reason="allowed"} 6.0' in text
            )

        await eventually(counted, "six decisions in the metrics")


async def test_decision_only_serve(tmp_path: Path) -> None:
    """A config with authz_listen and neither listen nor upstream serves decisions alone;
    /readyz reports the decision listener and no gateway listener."""
    dsn, tokens = await seed_sqlite(tmp_path)
    (tmp_path / "endpoint_map.yaml").write_text(TEST_MAP, encoding="utf-8")
    port, admin_port = free_port(), free_port()
    config = tmp_path / "permgate.yaml"
    config.write_text(
        f"authz_listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\n"
        f"endpoint_map: {tmp_path}/endpoint_map.yaml\nstore: {dsn}\n"
        f'audit: {{sink: "file:{tmp_path}/audit.log"}}\n',
        encoding="utf-8",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "permgate", "serve", "--config", str(config),
        env=serve_env(tmp_path), stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> dict[str, bool] | None:
                assert process.returncode is None, "permgate serve exited"
                try:
                    async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                        return (await r.json())["checks"] if r.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            checks = await eventually(ready, "decision-only serve to be ready", 30)
            assert "gateway_listener" not in checks and checks["decision_listener"]
            url = f"http://127.0.0.1:{port}/forward-auth"
            async with http.get(url, headers=check_headers(tokens["alice"])) as r:
                assert r.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)


async def test_config_serving_nothing_is_refused(tmp_path: Path) -> None:
    """listen: null without authz_listen is one clear line and a non-zero exit."""
    (tmp_path / "permgate.yaml").write_text("listen: null\n", encoding="utf-8")
    exited = await run_to_exit("serve", "--config", "permgate.yaml", cwd=tmp_path)
    assert exited.code != 0
    assert "nothing to serve" in exited.stderr
    assert "Traceback" not in exited.stderr
