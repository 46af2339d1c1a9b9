"""A real nginx (``auth_request``) in front of a real upstream, asking permgate's
``/forward-auth`` with ``X-Original-Method`` and ``X-Original-URI``.

nginx turns the check's 401 and 403 into its own 401 and 403, and any other status
(permgate's 400 refusals) into 500: the request is refused either way and never
reaches the upstream. Skips when nginx is absent (``apt-get install nginx``); fails
under CI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from proxyprocs import BehindProxy, behind_proxy, nginx_binary, nginx_launch, require


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[BehindProxy]:
    """permgate beside its gateway, nginx in front of the echo upstream."""
    async with behind_proxy(tmp_path, nginx_launch()) as proxied:
        yield proxied


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_allowed_request_reaches_upstream_with_identity(
    front: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """nginx forwards what permgate allows, with the identity headers it answered."""
    url = front.url + "/policy/acme-prod/quotes?draft=1"
    async with http.post(url, headers=bearer(front.gw.tokens["alice"]), data=b"{}") as response:
        assert response.status == 200
    seen = front.gw.upstream.seen[-1]
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert (seen["method"], seen["raw_path"]) == ("POST", "/policy/acme-prod/quotes?draft=1")
    event = (await front.decisions(1))[-1]
    assert (event["door"], event["method"], event["endpoint"]) == (
        "forward_auth",
        "POST",
        "quotes.create",
    )
    assert headers["x-permgate-principal"] == "alice"
    assert headers["x-permgate-principal-kind"] == "user"
    assert headers["x-permgate-tenant"] == "acme-prod"
    assert headers["x-permgate-token-id"] == event["token_id"]
    assert headers["x-request-id"] == event["request_id"]


@pytest.mark.parametrize(
    ("token", "method", "path", "status", "reason"),
    [
        pytest.param("alice-readonly", "POST", "/policy/acme-prod/quotes", 403,
                     "missing_permission", id="missing-permission"),
        pytest.param(None, "GET", "/policy/acme-prod/quotes/q1", 401, "missing_credentials",
                     id="no-credential"),
        pytest.param("alice", "GET", "/policy/acme-prod%2Fquotes/q1", 500, "ambiguous_path",
                     id="encoded-slash"),
        pytest.param("alice", "GET", "/policy/acme-prod/quotes/%2e%2e/q1", 500,
                     "ambiguous_path", id="encoded-dot-segment"),
    ],
)  # fmt: skip
async def test_denied_request_never_reaches_upstream(
    front: BehindProxy,
    http: aiohttp.ClientSession,
    token: str | None,
    method: str,
    path: str,
    status: int,
    reason: str,
) -> None:
    """A deny never reaches the upstream; the audit has permgate's reason, the method
    is the original one (nginx sends the check itself as GET)."""
    headers = bearer(front.gw.tokens[token]) if token is not None else {}
    url = URL(front.url + path, encoded=True)  # as sent: no client-side normalising
    async with http.request(method, url, headers=headers) as response:
        assert response.status == status
    assert front.gw.upstream.seen == []
    event = (await front.decisions(1))[-1]
    assert (event["door"], event["reason"], event["method"]) == ("forward_auth", reason, method)


async def test_spoofed_identity_headers_never_survive(
    front: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """A client's X-Permgate-* headers (dash or underscore spelling) never reach the
    upstream: the dash ones are replaced by permgate's answer, nginx drops the others."""
    headers = {
        **bearer(front.gw.jwt("alice")),
        "X-Permgate-Principal": "root",
        "X-Permgate-Tenant": "globex-prod",
        "X-Permgate-Token-Id": "forged",
        "X_Permgate_Principal": "root",
    }
    async with http.post(front.url + "/policy/acme-prod/quotes", headers=headers) as response:
        assert response.status == 200
    seen = {k.lower(): v for k, v in front.gw.upstream.seen[-1]["headers"].items()}
    assert seen["x-permgate-principal"] == "alice"
    assert seen["x-permgate-tenant"] == "acme-prod"
    assert seen.get("x-permgate-token-id", "") == ""
    assert "x_permgate_principal" not in seen


async def test_client_copy_of_the_other_header_family_is_refused(
    front: BehindProxy, http: aiohttp.ClientSession
) -> None:
    """nginx passes a client's X-Forwarded-Method/-Uri to the check: naming the original
    request twice is refused (ambiguous_forwarded_request), never read as the target."""
    headers = {
        **bearer(front.gw.tokens["alice-readonly"]),
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": "/health",
    }
    async with http.post(front.url + "/policy/acme-prod/quotes", headers=headers) as response:
        assert response.status == 500  # nginx's answer to any check status but 2xx/401/403
    assert front.gw.upstream.seen == []
    event = (await front.decisions(1))[-1]
    assert event["reason"] == "ambiguous_forwarded_request"


def test_nginx_example_is_a_valid_nginx_config(tmp_path: Path) -> None:
    """examples/decision-service/nginx.conf passes nginx -t (inside an http block)."""
    import subprocess

    binary = require(nginx_binary(), "nginx", "apt-get install -y nginx")
    example = Path(__file__).resolve().parents[2] / "examples/decision-service/nginx.conf"
    main = tmp_path / "main.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{ include {example}; }}\n")
    result = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "e.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
