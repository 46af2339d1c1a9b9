"""``permgate explain`` gives the gateway's answer: any bearer credential (auth token
or JWT, checked as the gateway checks it), hygiene refusals and authentication
failures as a deny with the gateway's reason, exit 0 for every decision."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from harness import AUDIENCE, ISSUER, rsa_key
from permgate.cli import main
from permgate.manage.service import Actor, ModelService
from permgate.store import open_store

POLICY = textwrap.dedent(
    """\
    accounts:
      - id: acme
        tenants:
          - {id: acme-prod, type: PRODUCTION}
        roles:
          - {name: agent, display_name: Agent, permissions: [quote.create, quote.read]}
        principals:
          - {id: alice, roles: [agent], tenants: [acme-prod]}
          - {id: bob, roles: [agent, read-only], tenants: [acme-prod]}
    """
)
MAP = textwrap.dedent(
    """\
    version: 1
    defaults:
      tenant: {path_param: tenantLocator}
    endpoints:
      - {id: quotes.create, method: POST, path: "/policy/{tenantLocator}/quotes",
         permissions: [quote.create]}
    """
)


class Setup:
    """A store with the policy applied, the map, a config accepting JWTs of one key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key, public = rsa_key()
        self.dsn = f"sqlite://{folder / 'permgate.db'}"
        (folder / "policy.yaml").write_text(POLICY)
        (folder / "map.yaml").write_text(MAP)
        config = {
            "store": self.dsn,
            "endpoint_map": str(folder / "map.yaml"),
            "auth": {"jwt": {"issuer": ISSUER, "audience": AUDIENCE, "keys": [public],
                             "algorithms": ["RS256"]}},
        }  # fmt: skip
        (folder / "permgate.yaml").write_text(yaml.safe_dump(config))

    def jwt(self, subject: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="RS256")

    def explain(self, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
        code = main(["explain", *argv, "--json", "--config", str(self.folder / "permgate.yaml")])
        out, err = capsys.readouterr()
        assert code == 0, err
        result: dict[str, Any] = json.loads(out)
        return result


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Setup:
    """The applied policy; bob's sessions revoked (a role removed) after his old login."""
    state = Setup(tmp_path)
    config = str(tmp_path / "permgate.yaml")
    assert main(["apply", str(tmp_path / "policy.yaml"), "--config", config]) == 0
    capsys.readouterr()

    async def revoke_bob() -> None:
        store = await open_store(state.dsn)
        try:
            await ModelService(store).set_principal_roles(Actor.cli(), "bob", [("agent", None)])
        finally:
            await store.close()

    asyncio.run(revoke_bob())
    return state


async def _token(dsn: str, owner: str, *, revoke: bool = False) -> str:
    store = await open_store(dsn)
    try:
        service = ModelService(store)
        token, secret = await service.create_token(
            Actor.cli(), owner, "ci", ["quote.create"], ["acme-prod"]
        )
        if revoke:
            await service.revoke_token(Actor.cli(), token.id)
        return secret
    finally:
        await store.close()


def test_a_jwt_is_explained_like_the_gateway_checks_it(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """--token takes a JWT: verified with the configured key, mapped to its principal."""
    result = setup.explain(
        capsys, "--token", setup.jwt("alice"), "POST", "/policy/acme-prod/quotes"
    )
    assert (result["decision"], result["reason"], result["principal"]) == (
        "allow",
        "allowed",
        "alice",
    )


JWT_FAILURES = [
    pytest.param({"sub": "bob", "iat": int(time.time()) - 3600}, "session_revoked",
                 id="session-revoked"),
    pytest.param({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200},
                 "expired_token", id="expired"),
    pytest.param({"aud": "another-api"}, "invalid_token", id="wrong-audience"),
    pytest.param({"sub": "nobody"}, "unknown_principal", id="unknown-principal"),
]  # fmt: skip


@pytest.mark.parametrize(("claims", "reason"), JWT_FAILURES)
def test_a_refused_jwt_is_a_deny_with_the_gateways_reason(
    setup: Setup, capsys: pytest.CaptureFixture[str], claims: dict[str, Any], reason: str
) -> None:
    """A JWT the gateway answers 401 is a deny with the 401's reason (exit 0)."""
    credential = setup.jwt(str(claims.pop("sub", "alice")), **claims)
    result = setup.explain(capsys, "--token", credential, "POST", "/policy/acme-prod/quotes")
    assert (result["decision"], result["reason"]) == ("deny", reason)


def test_a_revoked_auth_token_is_a_deny(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    """An auth token revoked in the store: deny revoked_token, as the gateway's 401."""
    secret = asyncio.run(_token(setup.dsn, "alice", revoke=True))
    result = setup.explain(capsys, "--token", secret, "POST", "/policy/acme-prod/quotes")
    assert (result["decision"], result["reason"]) == ("deny", "revoked_token")


HOSTILE = [
    pytest.param("/policy/acme-prod/../quotes", "ambiguous_path", id="dot-segment"),
    pytest.param("/policy/acme-prod%2Fx/quotes", "ambiguous_path", id="encoded-slash"),
    pytest.param("http://elsewhere/policy/acme-prod/quotes", "absolute_form", id="absolute"),
]


@pytest.mark.parametrize(("target", "reason"), HOSTILE)
def test_a_hygiene_refusal_is_a_deny(
    setup: Setup, capsys: pytest.CaptureFixture[str], target: str, reason: str
) -> None:
    """A target the gateway refuses with 400 is a deny with the 400's reason, even for
    a principal who may call the endpoint."""
    result = setup.explain(capsys, "--principal", "alice", "POST", target)
    assert (result["decision"], result["reason"]) == ("deny", reason)


def test_text_output_names_the_decision_and_reason(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json the first line is ``decision: reason`` and the exit code is 0."""
    config = str(setup.folder / "permgate.yaml")
    old = setup.jwt("bob", iat=int(time.time()) - 3600)
    code = main(["explain", "--token", old, "POST", "/policy/acme-prod/quotes", "--config", config])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == "deny: session_revoked"
