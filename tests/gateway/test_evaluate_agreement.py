"""Every door gives the gateway's answer: for generated requests (methods, targets
with dot segments, encoded slashes, unmapped paths, tenants in and out of scope) and
credentials of every kind and state, the real gateway's status and reason equal what
the admin API's explain, the CLI's explain and ``permgate test`` report.

One real gateway (the harness's, seeded SQLite store, echo upstream) runs on its own
event loop in a thread for the whole module; hypothesis drives requests at it with a
fixed, derandomized search so the run is stable and its cost bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import AUDIENCE, ISSUER, Gateway, eventually, start_gateway
from permgate.cli import main
from permgate.core.reasons import AuthReason, HygieneReason
from permgate.manage.service import Actor
from rawhttp import read_response, request

T = TypeVar("T")

# The harness's seed, as a policy file for `permgate test` (plus sam, whose sessions
# were revoked by removing a role).
POLICY = {
    "accounts": [
        {
            "id": "acme",
            "tenants": [
                {"id": "acme-prod", "type": "PRODUCTION"},
                {"id": "acme-test", "type": "TEST"},
                {"id": "acme-shadow", "type": "PRODUCTION", "enforcement": "shadow"},
            ],
            "roles": [
                {"name": "sales-agent", "display_name": "Sales Agent",
                 "permissions": ["quotes.read", "quotes.write"]},
                {"name": "reader", "display_name": "Reader", "permissions": ["quotes.read"]},
                {"name": "legacy", "display_name": "Legacy", "permissions": ["quote.fetch"]},
                {"name": "pricer", "display_name": "Pricer", "permissions": ["quotes.price"]},
            ],
            "principals": [
                {"id": "alice", "roles": ["sales-agent"], "tenants": ["acme-prod", "acme-shadow"]},
                {"id": "bob", "roles": ["reader", "legacy"], "tenants": ["any"]},
                {"id": "dave", "tenant_roles": {"acme-test": ["sales-agent"]}, "tenants": ["any"]},
                {"id": "erin", "roles": ["read-only", "pricer"], "tenants": ["type:test"]},
                {"id": "root", "roles": ["admin"], "tenants": []},
                {"id": "carol", "roles": ["sales-agent"], "tenants": ["acme-prod"],
                 "disabled": True},
                {"id": "sam", "roles": ["reader"], "tenants": ["any"]},
            ],
        },
        {
            "id": "globex",
            "tenants": [{"id": "globex-prod", "type": "PRODUCTION"}],
            "principals": [{"id": "gus", "roles": ["admin"], "tenants": ["any"]}],
        },
    ]
}  # fmt: skip
# The grants of the harness's tokens, as `permgate test` token specs.
TOKEN_SPECS = {
    "alice": {"owner": "alice", "permissions": ["quotes.read", "quotes.write"],
              "tenants": ["acme-prod", "acme-shadow"]},
    "alice-readonly": {"owner": "alice", "permissions": ["quotes.read"], "tenants": ["acme-prod"]},
    "bob": {"owner": "bob", "permissions": ["quotes.read", "quote.fetch"], "tenants": ["any"]},
    "root": {"owner": "root", "permissions": ["*.*"], "tenants": ["any"]},
}  # fmt: skip
OTHER_ACCOUNT = {"gus"}


@dataclass(frozen=True)
class Credential:
    """One kind of credential in one state; ``secret`` None means no Authorization."""

    name: str
    secret: str | None
    owner: str | None = None  # whose it is, for the explain API's account check
    suite: dict[str, Any] | None = None  # how `permgate test` can state it, if it can


class World:
    """The running gateway on a loop of its own, and every credential to try."""

    def __init__(self, gw: Gateway, loop: asyncio.AbstractEventLoop, folder: Path) -> None:
        self.gw = gw
        self.loop = loop
        self.folder = folder
        self.credentials: list[Credential] = []
        self.suite_cases: list[dict[str, Any]] = []
        self.seen: set[tuple[str, str]] = set()  # (credential kind, gateway reason)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)


def _jwt(gw: Gateway, subject: str, **claims: Any) -> str:
    return gw.jwt(subject, **claims)


async def _prepare(gw: Gateway) -> list[Credential]:
    """Credentials in every state: tokens valid, expired, revoked, of a disabled owner,
    of another account; JWTs valid, expired, of a revoked session, for another
    audience, of an unknown or disabled principal; none; garbage."""
    service, cli = gw.service, Actor.cli()
    await service.create_principal(
        cli, "acme", "sam", tenants=["any"], roles=[("reader", None), ("legacy", None)]
    )
    _, expiring = await service.create_token(
        cli, "bob", "expiring", ["quotes.read"], ["any"], expires_in=1
    )
    revoked_token, revoked = await service.create_token(
        cli, "bob", "revoked", ["quotes.read"], ["any"]
    )
    await service.revoke_token(cli, revoked_token.id)
    old_session = _jwt(gw, "sam", iat=int(time.time()) - 100)
    await service.set_principal_roles(cli, "sam", [("reader", None)])  # logs sam out
    await asyncio.sleep(1.1)  # the token expires; sam's next login is after the revocation
    await gw.runtime.deliver_changes()
    now = int(time.time())
    tokens = gw.tokens
    credentials = [
        Credential(f"token:{name}", tokens[name], name.split("-")[0], TOKEN_SPECS.get(name))
        for name in ("alice", "alice-readonly", "bob", "root", "carol", "gus")
    ]
    credentials += [
        Credential("token:expired", expiring, "bob"),
        Credential("token:revoked", revoked, "bob"),
        Credential("token:unknown", "pgt_0000000000000000_nonsense", None),
        Credential("missing", None),
        Credential("garbage", "not a credential at all", None),
    ]
    for who in ("alice", "bob", "root", "carol", "gus"):
        credentials.append(Credential(f"jwt:{who}", _jwt(gw, who), who, {"principal": who}))
    credentials += [
        Credential(
            "jwt:sam-new-session", _jwt(gw, "sam", iat=now + 1), "sam", {"principal": "sam"}
        ),
        Credential("jwt:sam-revoked-session", old_session, "sam"),
        Credential("jwt:expired", _jwt(gw, "alice", iat=now - 7200, exp=now - 3600), "alice"),
        Credential("jwt:wrong-audience", _jwt(gw, "alice", aud="another-api"), "alice"),
        Credential("jwt:unknown-principal", _jwt(gw, "nobody"), None),
    ]
    return credentials


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The harness gateway on a background loop, and a config for the CLI doors."""
    folder = tmp_path_factory.mktemp("agreement")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started: asyncio.Future[tuple[Gateway, list[Credential]]] = loop.create_future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with start_gateway(folder) as gw:
                started.set_result((gw, await _prepare(gw)))
                await stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    task = asyncio.run_coroutine_threadsafe(hold(), loop)
    gw, credentials = asyncio.run_coroutine_threadsafe(_wait(started), loop).result(timeout=90)
    state = World(gw, loop, folder)
    state.credentials = credentials
    public = gw.jwt_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    config = {
        "store": f"sqlite://{folder}/permgate.db",
        "endpoint_map": str(folder / "endpoint_map.yaml"),
        "auth": {
            "jwt": {
                "issuer": ISSUER,
                "audience": AUDIENCE,
                "keys": [public.decode()],
                "algorithms": ["RS256"],
            }
        },
    }
    (folder / "permgate.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    try:
        yield state
    finally:
        loop.call_soon_threadsafe(stop.set)
        with contextlib.suppress(Exception):
            task.result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _wait(future: asyncio.Future[T]) -> T:
    return await future


# -- generated requests ----------------------------------------------------------------

TENANTS = ["acme-prod", "acme-test", "acme-shadow", "globex-prod", "nope"]
HOSTILE = [
    "..", ".", "%2e%2e", "%2E", "a%2Fb", "a%5Cb", "x;y", "%00", "%41", "%zz",
    "%C0%AE", "", "%252e", "caf%C3%A9",
]  # fmt: skip
WORDS = ["q1", "Q-2", "quotes", "issue", "price", "search", "x"]
# The map's entries (method, path shape), and a few shapes it does not have.
ROUTES = [
    ("POST", "/policy/{t}/quotes"),
    ("GET", "/policy/{t}/quotes/{s}"),
    ("POST", "/policy/{t}/quotes/{s}/issue"),
    ("POST", "/policy/{t}/quotes/{s}/price"),
    ("POST", "/search/{t}/search"),
    ("GET", "/policy/{t}/ping"),
    ("GET", "/legacy/quotes"),
    ("POST", "/auth/tokens"),
    ("GET", "/health"),
    ("GET", "/{s}/{t}/{s}"),
    ("DELETE", "/policy/{t}"),
]
# (The HTTP parser refuses methods it does not know, "get" among them, before any door.)
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]


def _mostly(common: list[str], rare: list[str]) -> st.SearchStrategy[str]:
    """One of ``common`` four times in five, else one of ``rare``."""
    return st.one_of(*[st.sampled_from(common)] * 4, st.sampled_from(rare))


@st.composite
def method_and_target(draw: st.DrawFn) -> tuple[str, str]:
    """A map entry's method and shape, with tenants in and out of scope and now and
    then a hostile segment, another method, an unmapped path, an absolute-form
    target or a query."""
    method, shape = draw(st.sampled_from(ROUTES))
    # Hypothesis favours small and boundary values: the rare branches take a middle one.
    if draw(st.integers(0, 4)) == 2:
        method = draw(st.sampled_from(METHODS))
    if draw(st.integers(0, 19)) == 7:
        return method, "http://elsewhere.test/policy/acme-prod/quotes"
    tenant = draw(_mostly(TENANTS, HOSTILE[:4]))
    segment = draw(_mostly(WORDS, HOSTILE))
    path = shape.replace("{t}", tenant).replace("{s}", segment)
    query = draw(_mostly([""], ["?a=1", "?next=/../admin", "?a=%2e%2e"]))
    return method, path + query


@dataclass(frozen=True)
class Asked:
    method: str
    target: str
    tenant_header: str | None
    credential: Credential


def asked(world: World) -> st.SearchStrategy[Asked]:
    return st.builds(
        lambda route, tenant, credential: Asked(route[0], route[1], tenant, credential),
        method_and_target(),
        st.sampled_from([None, *TENANTS]),
        st.sampled_from(world.credentials),
    )


# -- the doors --------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayAnswer:
    status: int
    decision: str  # allow | deny | shadow_deny (the audit event's)
    reason: str


async def _through_gateway(gw: Gateway, case: Asked) -> GatewayAnswer:
    host, port = gw.url.removeprefix("http://").split(":")
    request_id = uuid.uuid4().hex
    headers = [("Host", "gw.test"), ("X-Request-Id", request_id), ("Content-Length", "0")]
    if case.credential.secret is not None:
        headers.append(("Authorization", f"Bearer {case.credential.secret}"))
    if case.tenant_header is not None:
        headers.append(("X-Tenant", case.tenant_header))
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request(case.method, case.target, headers))
        await writer.drain()
        answer = await asyncio.wait_for(read_response(reader, head=case.method == "HEAD"), 10)
    finally:
        writer.close()

    def event() -> dict[str, Any] | None:
        for line in reversed(gw.audit_lines()):
            record = json.loads(line)
            if record.get("request_id") == request_id:
                return record
        return None

    record = await eventually(event, f"the audit event of {case}")
    return GatewayAnswer(answer.status, record["decision"], record["reason"])


async def _through_admin_api(gw: Gateway, case: Asked) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {
        "token": case.credential.secret,
        "method": case.method,
        "path": case.target,
    }
    if case.tenant_header is not None:
        body["headers"] = {"X-Tenant": case.tenant_header}
    auth = {"Authorization": f"Bearer {gw.tokens['root']}"}
    url = f"{gw.admin_url}/v1/explain"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=auth) as answer,
    ):
        return answer.status, await answer.json()


def _through_cli(world: World, case: Asked) -> dict[str, Any]:
    argv = ["explain", "--token", case.credential.secret or "", case.method, case.target]
    if case.tenant_header is not None:
        argv += ["--tenant-header", case.tenant_header]
    argv += ["--json", "--config", str(world.folder / "permgate.yaml")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, f"explain exits 0 for every decision, not {code}"
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def _expected_status(answer: GatewayAnswer) -> int:
    if answer.reason in HygieneReason.__members__.values():
        return 400
    if answer.reason in AuthReason.__members__.values():
        return 401
    return 403 if answer.decision == "deny" else 200


@settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_explain_agrees_with_the_gateway(world: World, data: st.DataObject) -> None:
    """For any request and credential, the gateway's status and reason are what the
    admin API's explain and the CLI's explain report (a 400 or a 401 as a deny with the
    gateway's reason; a shadow deny as a deny on a shadow tenant)."""
    case = data.draw(asked(world))
    gateway = world.run(_through_gateway(world.gw, case))
    assert gateway.status == _expected_status(gateway), (case, gateway)
    explained = "allow" if gateway.decision == "allow" else "deny"
    world.seen.add((case.credential.name, f"{gateway.decision} {gateway.reason}"))

    cli = _through_cli(world, case)
    assert (cli["decision"], cli["reason"]) == (explained, gateway.reason), (case, gateway, cli)
    if gateway.decision == "shadow_deny":
        assert cli["enforcement"] == "shadow"

    if case.credential.secret is not None:  # the API needs a credential to explain
        status, body = world.run(_through_admin_api(world.gw, case))
        if case.credential.owner in OTHER_ACCOUNT:
            assert status == 404, body  # another account's credential is not found
        else:
            assert status == 200, body
            assert (body["decision"], body["reason"]) == (explained, gateway.reason), (
                case,
                gateway,
                body,
            )

    spec = case.credential.suite
    if spec is not None:
        world.suite_cases.append(
            {
                "name": f"{case.credential.name} {case.method} {case.target}",
                **({"token": spec} if "owner" in spec else spec),
                "method": case.method,
                "path": case.target,
                **({"headers": {"X-Tenant": case.tenant_header}} if case.tenant_header else {}),
                "expect": explained,
                "reason": gateway.reason,
            }
        )


def test_permgate_test_agrees_with_the_gateway(world: World) -> None:
    """Every generated request whose credential a suite can state (a valid token's
    grants, or a principal's fresh login) becomes a case expecting the gateway's
    decision and reason; `permgate test` passes them all."""
    if not world.suite_cases:
        test_explain_agrees_with_the_gateway(world)  # run alone: generate the cases
    cases = world.suite_cases
    assert len(cases) >= 20, "too few cases for a meaningful agreement check"
    reasons = {reason.split()[1] for _, reason in world.seen}
    # The search reached every stage: hygiene, authentication, route, tenant, permissions.
    assert {"ambiguous_path", "unmapped_route", "tenant_out_of_scope", "allowed"} <= reasons
    assert {"expired_token", "revoked_token", "session_revoked"} <= reasons
    (world.folder / "policy.yaml").write_text(yaml.safe_dump(POLICY), encoding="utf-8")
    suite = {"map": "endpoint_map.yaml", "policy": "policy.yaml", "cases": cases}
    path = world.folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["test", str(path)])
    assert (code, out.getvalue().splitlines()[-1:]) == (0, [f"{len(cases)} cases, 0 failed"]), (
        out.getvalue() + err.getvalue()
    )
