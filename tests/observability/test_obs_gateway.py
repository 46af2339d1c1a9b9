"""Observability through the real gateway: metrics scraped from the admin
listener, audit events written by real requests, admin changes, audit overflow.

Every test drives an in-process gateway (``harness.start_gateway``: real listeners, a
real SQLite store, a real echo upstream) over HTTP and reads what a dashboard or a
SIEM would read: ``/metrics`` parsed as Prometheus text, audit lines parsed as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yarl
from prometheus_client.parser import text_string_to_metric_families

from harness import Gateway, free_port, start_gateway
from permgate.manage.service import Actor

WAIT_SECONDS = 10.0
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
DECISION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "ts": str,
    "event": str,
    "decision_id": str,
    "request_id": str,
    "decision": str,
    "cache_hit": bool,
    "reason": str,
    "principal": (dict, type(None)),
    "token_id": (str, type(None)),
    "tenant": (str, type(None)),
    "endpoint": str,
    "method": str,
    "path": str,
    "required": list,
    "missing": list,
    "client_ip": str,
    "status": int,
    "duration_ms": (int, float),
    "map_sha256": str,
}

Labels = tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------- helpers


async def call(
    http: aiohttp.ClientSession,
    gw: Gateway,
    method: str,
    path: str,
    credential: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request to the gateway, the target sent byte for byte; (status, JSON body)."""
    sent = dict(headers or {})
    if credential is not None:
        sent["Authorization"] = f"Bearer {credential}"
    url = yarl.URL(gw.url + path, encoded=True)
    async with http.request(method, url, headers=sent) as response:
        body = await response.read()
        data = orjson.loads(body) if response.content_type == "application/json" and body else {}
        return response.status, data


async def scrape(http: aiohttp.ClientSession, admin_url: str) -> dict[str, dict[Labels, float]]:
    """``/metrics`` parsed: sample name -> {sorted label pairs: value}."""
    async with http.get(admin_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def by(samples: dict[Labels, float], *names: str) -> dict[tuple[str, ...], float]:
    """Re-key series by the values of ``names`` (dropping zero-valued ones)."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in samples.items():
        if value:
            got = dict(labels)
            out[tuple(got[n] for n in names)] = value
    return out


def token_id(secret: str) -> str:
    return secret.removeprefix("pgt_").split("_")[0]


def upstream_header(echo: dict[str, Any], name: str) -> str:
    """A header the echo upstream received (names compared case-insensitively)."""
    (value,) = [v for k, v in echo["headers"].items() if k.lower() == name.lower()]
    return str(value)


def parse_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


async def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def events_for(gw: Gateway, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The decision events of ``request_ids`` from the captured stdout sink."""

    def found() -> dict[str, dict[str, Any]] | None:
        events = {
            e["request_id"]: e
            for e in parse_lines(gw.audit.getvalue())
            if e["event"] == "decision" and e["request_id"] in request_ids
        }
        return events if len(events) == len(request_ids) else None

    result: dict[str, dict[str, Any]] = await wait_for(found, f"events of {request_ids}")
    return result


# --------------------------------------------------------------------------- 1. metrics

SEQUENCE: list[tuple[str, str, str, str | None, int]] = [
    # (method, path, who, expected reason, status); who: token name, "" = none
    ("POST", "/policy/acme-prod/quotes", "alice", None, 200),
    ("POST", "/policy/acme-prod/quotes", "alice", None, 200),  # cache hit
    ("GET", "/policy/acme-prod/quotes/q1", "bob", None, 200),
    ("GET", "/policy/globex-prod/quotes/q1", "bob", "tenant_out_of_scope", 403),
    ("GET", "/policy/no-such-tenant/quotes/q1", "bob", "tenant_out_of_scope", 403),
    ("POST", "/policy/acme-prod/quotes/q1/issue", "bob", "missing_permission", 403),
    ("POST", "/policy/acme-prod/quotes/q1/issue", "bob", "missing_permission", 403),  # hit
    ("GET", "/nowhere", "bob", "unmapped_route", 403),
    ("GET", "/policy/acme-prod/quotes/q1", "", "missing_credentials", 401),
    ("GET", "/policy/acme-prod/quotes/q1", "carol", "disabled_principal", 401),
    ("GET", "/policy/acme-prod/%2e%2e/quotes/q1", "bob", "", 400),
    ("POST", "/policy/acme-shadow/quotes/q1/issue", "alice", None, 200),  # shadow deny
    ("GET", "/health", "", None, 200),
]


async def test_known_sequence_gives_exact_decision_counters(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """After a known sequence, permgate_decisions_total has exactly one series per
    (decision, reason, endpoint) seen, with exactly the expected counts."""
    hygiene_reason = ""
    for method, path, who, reason, status in SEQUENCE:
        got_status, body = await call(http, gw, method, path, gw.tokens.get(who))
        assert got_status == status, (method, path, who, body)
        if reason is not None and reason != "":
            assert body["reason"] == reason
        if status == 400:
            hygiene_reason = body["reason"]
    assert hygiene_reason
    decisions = by((await scrape(http, gw.admin_url))["permgate_decisions_total"], "decision",
                   "reason", "endpoint")  # fmt: skip
    assert decisions == {
        ("allow", "allowed", "quotes.create"): 2,
        ("allow", "allowed", "quotes.get"): 1,
        ("deny", "tenant_out_of_scope", "quotes.get"): 2,
        ("deny", "missing_permission", "quotes.issue"): 2,
        ("deny", "unmapped_route", "unmapped"): 1,
        ("deny", "missing_credentials", "quotes.get"): 1,
        ("deny", "disabled_principal", "quotes.get"): 1,
        ("deny", hygiene_reason, "unrouted"): 1,
        ("shadow_deny", "missing_permission", "quotes.issue"): 1,
        ("allow", "public", "health"): 1,
    }
    assert sum(decisions.values()) == len(SEQUENCE)


async def test_auth_failures_and_cache_counters_are_exact(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """auth failures count each 401 by reason; the decision cache counts one lookup per
    decision made (hits for repeats), none for 401, 400, unmapped or public requests."""
    for method, path, who, _, _ in SEQUENCE:
        await call(http, gw, method, path, gw.tokens.get(who))
    samples = await scrape(http, gw.admin_url)
    assert by(samples["permgate_auth_failures_total"], "reason") == {
        ("missing_credentials",): 1,
        ("disabled_principal",): 1,
    }
    # Decisions made: 2 quotes.create + 1 quotes.get + 2 out of scope + 2 issue + 1 shadow.
    assert by(samples["permgate_decision_cache_total"], "result") == {("hit",): 2, ("miss",): 6}
    assert samples["permgate_decision_seconds_count"] == {(): 8}
    assert samples["permgate_decision_seconds_bucket"][(("le", "+Inf"),)] == 8


async def test_request_histogram_has_one_series_per_endpoint_id(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """permgate_request_seconds is labelled by endpoint id (never a path) and counts
    every request answered, with buckets, sum and count."""
    for method, path, who, _, _ in SEQUENCE:
        await call(http, gw, method, path, gw.tokens.get(who))
    samples = await scrape(http, gw.admin_url)
    counts = by(samples["permgate_request_seconds_count"], "endpoint")
    assert counts == {
        ("quotes.create",): 2,
        ("quotes.get",): 5,
        ("quotes.issue",): 3,
        ("unmapped",): 1,
        ("unrouted",): 1,
        ("health",): 1,
    }
    buckets = samples["permgate_request_seconds_bucket"]
    for (endpoint,), count in counts.items():
        assert buckets[(("endpoint", endpoint), ("le", "+Inf"))] == count
        assert (("endpoint", endpoint),) in samples["permgate_request_seconds_sum"]
    assert all("/" not in value for labels in buckets for _, value in labels)


async def test_upstream_errors_count_by_kind_and_stay_allows(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A 502 is an allow with reason upstream_unavailable and one upstream error of kind
    connect; sum(decisions) still equals requests answered."""
    async with start_gateway(tmp_path, upstream_url=f"http://127.0.0.1:{free_port()}") as gw:
        status, body = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"])
        assert (status, body["reason"]) == (502, "upstream_unavailable")
        samples = await scrape(http, gw.admin_url)
    assert by(samples["permgate_upstream_errors_total"], "kind") == {("connect",): 1}
    assert by(samples["permgate_decisions_total"], "decision", "reason", "endpoint") == {
        ("allow", "upstream_unavailable", "quotes.get"): 1
    }


# --------------------------------------------------------------------------- 3. audit fields


def assert_decision_shape(event: dict[str, Any]) -> None:
    """Every decision field is present with its type; ts is RFC 3339 UTC."""
    for name, kind in DECISION_FIELDS.items():
        assert name in event, f"{name} missing from {event}"
        assert isinstance(event[name], kind), f"{name}={event[name]!r} is not {kind}"
    assert RFC3339_UTC.fullmatch(event["ts"]), event["ts"]
    parsed = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == UTC.utcoffset(None)
    assert abs(parsed.timestamp() - time.time()) < 120
    if event["principal"] is not None:
        assert set(event["principal"]) == {"id", "kind", "account"}


async def test_allowed_request_event_has_every_field(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """An allowed token request: every decision field, the principal, the token id, the
    request id the upstream received, and the served map's sha256."""
    secret = gw.tokens["alice"]
    status, body = await call(http, gw, "POST", "/policy/acme-prod/quotes?x=1", secret)
    assert status == 200
    request_id = upstream_header(body, "X-Request-Id")  # generated: the client sent none
    event = (await events_for(gw, [request_id]))[request_id]
    assert_decision_shape(event)
    assert event | {"ts": None, "decision_id": None, "duration_ms": None} == {
        "ts": None,
        "event": "decision",
        "door": "inline",
        "decision_id": None,
        "request_id": request_id,
        "trace_id": None,  # the client sent no traceparent
        "decision": "allow",
        "cache_hit": False,
        "reason": "allowed",
        "detail": None,
        "principal": {"id": "alice", "kind": "user", "account": "acme"},
        "token_id": token_id(secret),
        "tenant": "acme-prod",
        "endpoint": "quotes.create",
        "method": "POST",
        "path": "/policy/acme-prod/quotes",
        "required": ["quotes.write"],
        "missing": [],
        "client_ip": "127.0.0.1",
        "status": 200,
        "duration_ms": None,
        "upstream_error": None,
        "map_sha256": gw.runtime.gateway.endpoint_map.sha256,
    }


async def test_jwt_request_event_names_the_principal_without_a_token(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A JWT-authenticated allow names the principal and has token_id null."""
    status, _ = await call(
        http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.jwt("bob"), {"X-Request-Id": "jwt-1"}
    )
    assert status == 200
    event = (await events_for(gw, ["jwt-1"]))["jwt-1"]
    assert_decision_shape(event)
    assert (event["principal"]["id"], event["token_id"]) == ("bob", None)


UNAUTHENTICATED: list[tuple[str, Callable[[Gateway], str | None]]] = [
    ("missing_credentials", lambda gw: None),
    ("invalid_token", lambda gw: "pgt_0123456789abcdef_" + "A" * 43),
    ("invalid_token", lambda gw: "not-a-jwt"),
    ("expired_token", lambda gw: gw.jwt("alice", exp=int(time.time()) - 3600)),
    ("unknown_principal", lambda gw: gw.jwt("nobody")),
    ("disabled_principal", lambda gw: gw.tokens["carol"]),
]


@pytest.mark.parametrize(
    ("reason", "make"),
    UNAUTHENTICATED,
    ids=[f"{r}-{i}" for i, (r, _) in enumerate(UNAUTHENTICATED)],
)
async def test_each_401_reason_is_a_deny_event(
    gw: Gateway, http: aiohttp.ClientSession, reason: str, make: Callable[[Gateway], str | None]
) -> None:
    """A 401 is a deny event with its reason, the response's request_id, no principal."""
    status, body = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", make(gw))
    assert (status, body["reason"]) == (401, reason)
    event = (await events_for(gw, [body["request_id"]]))[body["request_id"]]
    assert_decision_shape(event)
    assert (event["decision"], event["reason"], event["status"]) == ("deny", reason, 401)
    assert (event["principal"], event["token_id"], event["endpoint"]) == (None, None, "quotes.get")


async def test_revoked_token_event_has_reason_revoked_token(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A revoked token is a 401 revoked_token deny event."""
    secret = gw.tokens["alice-readonly"]
    await gw.service.revoke_token(Actor.cli(), token_id(secret))
    await gw.runtime.deliver_changes()
    status, body = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", secret)
    assert (status, body["reason"]) == (401, "revoked_token")
    event = (await events_for(gw, [body["request_id"]]))[body["request_id"]]
    assert (event["decision"], event["reason"]) == ("deny", "revoked_token")


async def test_unknown_tenant_is_told_apart_in_the_event_only(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """An unknown tenant and another account's tenant get the same client answer; the
    audit events tell them apart by detail."""
    secret = gw.tokens["bob"]
    answers = []
    for tenant in ("no-such-tenant", "globex-prod"):
        status, body = await call(http, gw, "GET", f"/policy/{tenant}/quotes/q1", secret)
        answers.append((status, body))
    (s1, unknown), (s2, other) = answers
    assert s1 == s2 == 403
    assert unknown.keys() == other.keys()
    assert (
        {k: v for k, v in unknown.items() if k != "request_id"}
        == {k: v for k, v in other.items() if k != "request_id"}
        == {"error": "forbidden", "reason": "tenant_out_of_scope", "missing_permissions": []}
    )
    events = await events_for(gw, [unknown["request_id"], other["request_id"]])
    e_unknown, e_other = events[unknown["request_id"]], events[other["request_id"]]
    for event in (e_unknown, e_other):
        assert_decision_shape(event)
        assert (event["decision"], event["reason"], event["status"]) == (
            "deny",
            "tenant_out_of_scope",
            403,
        )
    assert e_unknown["detail"] == "unknown_tenant"
    assert e_other["detail"] == "other_account"
    assert e_unknown["tenant"] == "no-such-tenant"


async def test_missing_permission_event_lists_required_and_missing(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A missing_permission deny records every required permission and what is missing."""
    status, body = await call(
        http, gw, "POST", "/policy/acme-prod/quotes/q1/issue", gw.tokens["bob"]
    )
    assert (status, body["reason"]) == (403, "missing_permission")
    event = (await events_for(gw, [body["request_id"]]))[body["request_id"]]
    assert_decision_shape(event)
    assert event["required"] == ["quotes.read", "policies.write"]
    assert event["missing"] == ["policies.write"] == body["missing_permissions"]
    assert (event["endpoint"], event["tenant"], event["principal"]["id"]) == (
        "quotes.issue",
        "acme-prod",
        "bob",
    )


async def test_shadow_deny_event_is_forwarded_and_lists_missing(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A shadow tenant's deny is forwarded (status 200) and audited as shadow_deny."""
    status, body = await call(
        http, gw, "POST", "/policy/acme-shadow/quotes/q1/issue", gw.tokens["alice"]
    )
    assert status == 200
    request_id = upstream_header(body, "X-Request-Id")
    event = (await events_for(gw, [request_id]))[request_id]
    assert (event["decision"], event["reason"], event["status"]) == (
        "shadow_deny",
        "missing_permission",
        200,
    )
    assert event["required"] == ["quotes.read", "policies.write"]
    assert event["missing"] == ["policies.write"]


async def test_unmapped_and_hygiene_refusals_are_deny_events(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """An unmapped route and a 400 hygiene refusal are deny events with their reason,
    before any authentication (no principal)."""
    s1, unmapped = await call(http, gw, "GET", "/nowhere/at/all", gw.tokens["bob"])
    s2, ambiguous = await call(http, gw, "GET", "/policy/acme-prod/%2e%2e/x", gw.tokens["bob"])
    assert (s1, unmapped["reason"]) == (403, "unmapped_route")
    assert (s2, ambiguous["error"]) == (400, "bad_request")
    events = await events_for(gw, [unmapped["request_id"], ambiguous["request_id"]])
    e1, e2 = events[unmapped["request_id"]], events[ambiguous["request_id"]]
    for event in (e1, e2):
        assert_decision_shape(event)
        assert (event["decision"], event["principal"]) == ("deny", None)
    assert (e1["reason"], e1["endpoint"], e1["path"], e1["status"]) == (
        "unmapped_route",
        "unmapped",
        "/nowhere/at/all",
        403,
    )
    assert (e2["reason"], e2["endpoint"], e2["status"]) == (ambiguous["reason"], "unrouted", 400)


async def test_upstream_502_event(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """An unreachable upstream: status 502, upstream_error connect, reason upstream_unavailable."""
    async with start_gateway(tmp_path, upstream_url=f"http://127.0.0.1:{free_port()}") as gw:
        status, body = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"])
        assert status == 502
        event = (await events_for(gw, [body["request_id"]]))[body["request_id"]]
    assert_decision_shape(event)
    assert (event["decision"], event["reason"], event["upstream_error"], event["status"]) == (
        "allow",
        "upstream_unavailable",
        "connect",
        502,
    )


async def test_upstream_504_event(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """A slow upstream: status 504, upstream_error timeout, reason upstream_timeout."""
    async with start_gateway(tmp_path, upstream_timeout_seconds=0.3) as gw:
        status, body = await call(http, gw, "GET", "/slow/acme-prod", gw.tokens["bob"])
        assert status == 504
        event = (await events_for(gw, [body["request_id"]]))[body["request_id"]]
    assert_decision_shape(event)
    assert (event["reason"], event["upstream_error"], event["status"]) == (
        "upstream_timeout",
        "timeout",
        504,
    )
    assert event["duration_ms"] >= 250


async def test_decision_ids_are_unique_and_request_ids_match_answers(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Each request gets its own decision_id; the event's request_id is the one the
    client got back (or sent, when well-formed)."""
    request_ids = []
    for index in range(10):
        sent = {"X-Request-Id": f"client-{index}"} if index % 2 else {}
        _, body = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", None, sent)
        request_ids.append(body["request_id"])
        if sent:
            assert body["request_id"] == sent["X-Request-Id"]
    assert len(set(request_ids)) == 10
    events = await events_for(gw, request_ids)
    assert len({e["decision_id"] for e in events.values()}) == 10


async def test_no_credential_reaches_the_audit_file(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """The audit file names tokens by id and never holds a secret or a JWT: not the
    secret, not 'pgt_<id>_', not the JWT or its signature, whatever the outcome."""
    audit_file = tmp_path / "audit.log"
    async with start_gateway(tmp_path, **{"audit.sink": f"file:{audit_file}"}) as gw:
        secret, jwt = gw.tokens["alice"], gw.jwt("alice")
        bad_secret = f"pgt_{token_id(secret)}_{'B' * 43}"
        requests = [
            ("POST", "/policy/acme-prod/quotes", secret),  # allow
            ("POST", "/policy/acme-prod/quotes/q1/issue", secret),  # missing permission
            ("GET", "/policy/globex-prod/quotes/q1", secret),  # out of scope
            ("GET", "/policy/acme-prod/quotes/q1", bad_secret),  # invalid token
            ("POST", "/policy/acme-prod/quotes", jwt),  # allow by JWT
            ("GET", "/policy/globex-prod/quotes/q1", jwt),  # deny by JWT
            ("GET", f"/policy/acme-prod/quotes/{secret}", secret),  # a secret in the path
        ]
        for method, path, credential in requests:
            await call(http, gw, method, path, credential)
        await wait_for(
            lambda: (
                audit_file.exists()
                and sum(e["event"] == "decision" for e in parse_lines(audit_file.read_text()))
                == len(requests)
            ),
            "every decision in the audit file",
        )
    text = audit_file.read_text()
    for forbidden in (secret, bad_secret, jwt, jwt.rsplit(".", 1)[1], f"pgt_{token_id(secret)}_"):
        assert forbidden not in text
    events = [e for e in parse_lines(text) if e["event"] == "decision"]
    token_events = [e for e in events if e["token_id"] is not None]
    assert {e["token_id"] for e in token_events} == {token_id(secret)}
    assert len(token_events) == 4  # the invalid token authenticated nobody


# --------------------------------------------------------------------------- 4. admin changes


async def admin(
    http: aiohttp.ClientSession, gw: Gateway, method: str, path: str, body: object
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {gw.tokens['root']}"}
    async with http.request(method, gw.admin_url + path, json=body, headers=headers) as response:
        return response.status, await response.json()


def audit_events(gw: Gateway, event: str) -> list[dict[str, Any]]:
    return [e for e in parse_lines(gw.audit.getvalue()) if e["event"] == event]


async def test_admin_api_change_is_an_admin_change_event(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Creating a role through the admin API writes admin.change with actor, action,
    before and after to the gateway's audit stream."""
    status, _ = await admin(
        http,
        gw,
        "POST",
        "/v1/roles",
        {"name": "underwriter", "display_name": "Underwriter", "permissions": ["quotes.read"]},
    )
    assert status == 201
    events = await wait_for(
        lambda: [e for e in audit_events(gw, "admin.change") if e["action"] == "role.create"],
        "the admin.change event",
    )
    (event,) = events
    assert event["actor"] == "principal:root"
    assert event["before"] is None
    assert event["after"]["name"] == "underwriter"
    assert event["after"]["permissions"] == ["quotes.read"]
    assert RFC3339_UTC.fullmatch(event["ts"]), event["ts"]


async def test_admin_role_update_event_has_before_and_after(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Changing a role's grants records both the old and the new grants."""
    status, _ = await admin(
        http, gw, "PATCH", "/v1/roles/reader", {"permissions": ["quotes.read", "policies.read"]}
    )
    assert status == 200
    (event,) = await wait_for(
        lambda: [e for e in audit_events(gw, "admin.change") if e["action"] == "role.update"],
        "the role.update event",
    )
    assert event["before"]["permissions"] == ["quotes.read"]
    assert event["after"]["permissions"] == ["quotes.read", "policies.read"]


async def test_token_created_through_the_api_is_audited_without_its_secret(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """A token created by the admin API is audited by id; its secret is in the answer
    and nowhere in the audit stream."""
    status, body = await admin(
        http,
        gw,
        "POST",
        "/v1/tokens",
        {"name": "ci", "permissions": ["quotes.read"], "tenants": ["acme-prod"]},
    )
    assert status == 201
    (event,) = await wait_for(
        lambda: [e for e in audit_events(gw, "admin.change") if e["action"] == "token.create"],
        "the token.create event",
    )
    assert event["after"]["id"] == body["id"]
    assert body["secret"] not in gw.audit.getvalue()
    assert f"pgt_{body['id']}_" not in gw.audit.getvalue()


async def test_enforcement_switch_is_an_enforcement_change_event(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """Switching a tenant to enforce writes enforcement.change with before and after;
    the refused switch back is audited too."""
    status, _ = await admin(
        http, gw, "PUT", "/v1/tenants/acme-shadow/enforcement", {"enforcement": "enforce"}
    )
    assert status == 200
    status, _ = await admin(
        http, gw, "PUT", "/v1/tenants/acme-shadow/enforcement", {"enforcement": "shadow"}
    )
    assert status == 409
    switched, refused = await wait_for(
        lambda: (events := audit_events(gw, "enforcement.change")) and len(events) == 2 and events,
        "two enforcement.change events",
    )
    assert (switched["actor"], switched["target"]) == ("principal:root", "acme-shadow")
    assert switched["before"]["enforcement"] == "shadow"
    assert switched["after"]["enforcement"] == "enforce"
    assert refused["action"] == "tenant.enforcement.refused"
    assert refused["after"] == {"requested": "shadow"}


# --------------------------------------------------------------------------- 5. overflow


@contextlib.contextmanager
def full_fifo(path: Path) -> Iterator[int]:
    """A named pipe whose buffer is already full: a file sink writing to it blocks
    until the test reads. Yields the read end (non-blocking)."""
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                os.write(writer, b"\n" * 4096)
            except BlockingIOError:
                break
        with contextlib.suppress(BlockingIOError):
            os.write(writer, b"\n")  # whatever fits of the last page
        os.close(writer)
        yield reader
    finally:
        with contextlib.suppress(OSError):
            os.close(reader)


class Drain:
    """Reads a pipe in a thread until EOF (every writer closed)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = bytearray()
        os.set_blocking(fd, True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return
            if not chunk:
                return
            self.data.extend(chunk)

    def events(self, timeout: float = WAIT_SECONDS) -> list[dict[str, Any]]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the audit pipe was never closed"
        return parse_lines(self.data.decode())


async def test_reject_answers_503_when_the_sink_cannot_keep_up(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """overflow: reject with a sink that cannot keep up: once the queue is full the
    gateway answers 503 audit_overloaded (nothing forwarded); once the sink catches up
    every admitted request has its event and none was dropped."""
    fifo = tmp_path / "audit.pipe"
    with full_fifo(fifo) as reader:
        overrides = {
            "audit.sink": f"file:{fifo}",
            "audit.queue_size": 4,
            "audit.overflow": "reject",
        }
        async with start_gateway(tmp_path, **overrides) as gw:
            statuses = []
            refusal: dict[str, Any] = {}
            for _ in range(10):
                status, body = await call(
                    http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"]
                )
                statuses.append(status)
                if status == 503:
                    refusal = body
            # The initial map.reload event holds one of the 4 places: 3 requests fit.
            assert statuses == [200] * 3 + [503] * 7
            assert len(gw.upstream.seen) == 3
            assert {k: v for k, v in refusal.items() if k != "request_id"} == {
                "error": "unavailable",
                "reason": "audit_overloaded",
            }
            drain = Drain(reader)
            await wait_for(lambda: gw.runtime.audit.queued == 0, "the sink to catch up")
            status, _ = await call(http, gw, "GET", "/policy/acme-prod/quotes/q1", gw.tokens["bob"])
            assert status == 200  # room again once the sink caught up
            samples = await scrape(http, gw.admin_url)
        events = drain.events()
    decisions = [e for e in events if e["event"] == "decision"]
    assert [e["status"] for e in decisions] == [200] * 4
    assert by(samples["permgate_decisions_total"], "reason") == {
        ("allowed",): 4,
        ("audit_overloaded",): 7,
    }
    assert samples["permgate_audit_events_dropped_total"] == {(): 0}


async def test_block_waits_for_the_sink_and_loses_no_event(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """overflow: block with a stuck sink: requests wait instead of failing; when the
    sink recovers every request completes and every one has exactly one event."""
    fifo = tmp_path / "audit.pipe"
    requests = 20
    with full_fifo(fifo) as reader:
        overrides = {"audit.sink": f"file:{fifo}", "audit.queue_size": 3, "audit.overflow": "block"}
        async with start_gateway(tmp_path, **overrides) as gw:
            ids = [f"block-{i}" for i in range(requests)]
            tasks = [
                asyncio.create_task(
                    call(
                        http,
                        gw,
                        "GET",
                        "/policy/acme-prod/quotes/q1",
                        gw.tokens["bob"],
                        {"X-Request-Id": request_id},
                    )
                )
                for request_id in ids
            ]
            await wait_for(lambda: sum(t.done() for t in tasks) == 2, "the two admitted requests")
            await asyncio.sleep(0.3)
            assert sum(t.done() for t in tasks) == 2  # the rest wait: backpressure
            drain = Drain(reader)
            results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_SECONDS)
            assert [status for status, _ in results] == [200] * requests
            samples = await scrape(http, gw.admin_url)
        events = drain.events()
    decisions = [e["request_id"] for e in events if e["event"] == "decision"]
    assert sorted(decisions) == sorted(ids)
    assert samples["permgate_audit_events_dropped_total"] == {(): 0}


# --------------------------------------------------------------------------- 6. bursts


async def test_burst_of_concurrent_requests_is_audited_and_counted_exactly(
    gw: Gateway, http: aiohttp.ClientSession
) -> None:
    """200 concurrent requests (a remembered token, allowed and denied): each has
    exactly one decision event, and /metrics counts each exactly once, twice in a row."""
    ids = [f"burst-{i}" for i in range(200)]

    async def one(index: int, request_id: str) -> int:
        path = "/policy/acme-prod/quotes/q1" if index % 2 else "/policy/x/quotes/q1"
        status, _ = await call(
            http, gw, "GET", path, gw.tokens["bob"], {"X-Request-Id": request_id}
        )
        return status

    statuses = await asyncio.gather(*(one(i, request_id) for i, request_id in enumerate(ids)))
    assert sorted(statuses) == [200] * 100 + [403] * 100
    events = await events_for(gw, ids)
    assert sorted(events) == sorted(ids)
    written = [
        e["request_id"] for e in parse_lines(gw.audit.getvalue()) if e["event"] == "decision"
    ]
    assert sorted(written) == sorted(ids)  # exactly one each
    for _ in range(2):
        samples = await scrape(http, gw.admin_url)
        assert by(samples["permgate_decisions_total"], "reason") == {
            ("allowed",): 100,
            ("tenant_out_of_scope",): 100,
        }
        assert sum(samples["permgate_request_seconds_count"].values()) == 200
