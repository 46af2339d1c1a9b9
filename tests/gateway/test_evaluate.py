"""The one evaluation (permgate.gateway.evaluate) and the one closed set of reasons
(permgate.core.reasons): the order of the steps, the decision cache around them, and
reason strings that never change."""

from __future__ import annotations

import subprocess
import sys

import pytest
from multidict import CIMultiDict

from harness import Gateway
from permgate.core.decision import Reason as DecisionReason
from permgate.core.reasons import (
    ALL_REASONS,
    AUTH_REASONS,
    FRAMING_REASONS,
    HYGIENE_REASONS,
    AuthReason,
    HygieneReason,
    Reason,
    Refusal,
)
from permgate.gateway import hygiene
from permgate.gateway.authn import AUTH_FAILURE_REASONS, AuthFailure
from permgate.gateway.evaluate import EvalRequest, Evaluator, explanation, what_if
from permgate.manage.service import Actor

# -- reasons ----------------------------------------------------------------------------

# The strings are the audit field, the metric label and the JSON reason: they never change.
REASON_STRINGS = [
    pytest.param(Reason, {"allowed", "public", "unmapped_passthrough", "unmapped_route",
                          "unauthenticated", "tenant_out_of_scope", "missing_permission"},
                 id="decision"),
    pytest.param(AuthReason, {"missing_credentials", "invalid_token", "expired_token",
                              "revoked_token", "session_revoked", "unknown_principal",
                              "disabled_principal"}, id="authentication"),
    pytest.param(HygieneReason, {"ambiguous_path", "absolute_form", "invalid_target",
                                 "duplicate_header", "ambiguous_header", "conflicting_length",
                                 "unsupported_transfer_coding", "invalid_host",
                                 "unsupported_http_version", "malformed_request",
                                 "headers_too_large", "request_timeout"}, id="hygiene"),
    pytest.param(Refusal, {"store_unavailable", "audit_overloaded", "upstream_unavailable",
                           "upstream_timeout", "client_gone", "internal_error"}, id="refusal"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "strings"), REASON_STRINGS)
def test_reason_strings_are_unchanged(family: type, strings: set[str]) -> None:
    """Each family holds exactly today's strings."""
    assert {str(member) for member in family} == strings  # type: ignore[attr-defined]


def test_reason_families_are_disjoint_and_in_the_closed_set() -> None:
    """No string belongs to two families, and ALL_REASONS holds every one of them."""
    families = [set(Reason), set(AuthReason), set(HygieneReason), set(Refusal)]
    union = set().union(*families)
    assert sum(len(f) for f in families) == len(union)
    assert union <= ALL_REASONS


def test_older_names_derive_from_the_one_set() -> None:
    """The names modules exported before (authn's tuple, hygiene's sets, decision's
    enum) are the closed set itself, not copies."""
    assert AUTH_FAILURE_REASONS == AUTH_REASONS == tuple(AuthReason)
    assert hygiene.REASONS is HYGIENE_REASONS
    assert hygiene.FRAMING_REASONS is FRAMING_REASONS
    assert DecisionReason is Reason
    assert AuthFailure(AuthReason.EXPIRED_TOKEN).reason == "expired_token"


def test_evaluate_imports_no_web_framework() -> None:
    """permgate.gateway.evaluate is a request-path building block: importing it loads no aiohttp,
    so a door without a web server (the CLI) can call it."""
    probe = (
        "import sys, permgate.gateway.evaluate; "
        "print(any(k == 'aiohttp' or k.startswith('aiohttp.') for k in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# -- the order of the steps -------------------------------------------------------------


def _evaluator(gw: Gateway) -> Evaluator:
    runtime = gw.runtime
    return Evaluator(runtime.gateway.endpoint_map, runtime.model, runtime.authenticator)


ORDER = [
    pytest.param("GET", "/policy/acme-prod/%2e%2e/quotes", None, 400, "ambiguous_path",
                 id="hygiene-before-authentication"),
    pytest.param("GET", "/nowhere", None, 403, "unmapped_route",
                 id="route-before-authentication"),
    pytest.param("GET", "/health", "garbage", 200, "public", id="public-needs-no-credential"),
    pytest.param("GET", "/policy/acme-prod/quotes/q1", None, 401, "missing_credentials",
                 id="authentication-before-tenant"),
    pytest.param("GET", "/policy/globex-prod/quotes/q1", "alice", 403, "tenant_out_of_scope",
                 id="tenant-before-permissions"),
    pytest.param("POST", "/policy/acme-prod/quotes", "alice-readonly", 403,
                 "missing_permission", id="permissions"),
    pytest.param("GET", "/policy/acme-shadow/quotes/q1", "alice-readonly", 200,
                 "tenant_out_of_scope", id="shadow-deny-is-forwarded"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "target", "token", "status", "reason"), ORDER)
async def test_steps_run_in_the_gateways_order(
    gw: Gateway, method: str, target: str, token: str | None, status: int, reason: str
) -> None:
    """Each step answers before the next one runs: hygiene, route, public,
    authenticate, tenant, permissions; a shadow tenant's deny is forwarded."""
    secret = None if token is None else gw.tokens.get(token, token)
    evaluation = await _evaluator(gw).evaluate(what_if(method, target, credential=secret))
    assert (evaluation.status, evaluation.reason) == (status, reason)


async def test_the_memo_serves_the_second_request(gw: Gateway) -> None:
    """With the gateway's decision cache around it, the second identical request is a
    hit; without one, every evaluation decides afresh."""
    gateway = gw.runtime.gateway
    request = what_if("GET", "/policy/acme-prod/quotes/q1", credential=gw.tokens["alice"])
    first = await gateway.evaluator.evaluate(request, gateway.memo)
    again = await gateway.evaluator.evaluate(request, gateway.memo)
    alone = await gateway.evaluator.evaluate(request)
    assert (first.cache_hit, again.cache_hit, alone.cache_hit) == (False, True, False)
    assert again.verdict == first.verdict and again.label == "allow"


@pytest.mark.parametrize(("method", "target", "token", "status", "reason"), ORDER)
async def test_evaluate_cached_agrees_with_evaluate_once_both_are_warm(
    gw: Gateway, method: str, target: str, token: str | None, status: int, reason: str
) -> None:
    """Once the credential and the verdict are in memory, the evaluation without a
    coroutine gives evaluate()'s answer; before that it says only "would wait" (None),
    except for answers that need neither (a 400, an unmapped or public route)."""
    gateway = gw.runtime.gateway
    secret = None if token is None else gw.tokens.get(token, token)
    request = what_if(method, target, credential=secret)
    cold = gateway.evaluator.evaluate_cached(request, gateway.memo)
    slow = await gateway.evaluator.evaluate(request, gateway.memo)
    await gateway.evaluator.evaluate(request, gateway.memo)  # the credential remembered
    warm = gateway.evaluator.evaluate_cached(request, gateway.memo)
    assert (slow.status, slow.reason) == (status, reason)
    if slow.identity is None:  # decided before authentication, or a 401: nothing cached
        assert cold is not None or slow.failure is not None
        assert warm is None if slow.failure is not None else warm is not None
        for done in (cold, warm):
            if done is not None:
                assert (done.status, done.reason, done.verdict) == (status, reason, slow.verdict)
        return
    assert cold is None
    assert warm is not None
    assert (warm.status, warm.reason, warm.verdict, warm.cache_hit) == (
        status,
        reason,
        slow.verdict,
        True,
    )
    assert warm.identity == slow.identity and warm.match == slow.match


async def test_evaluate_cached_waits_after_a_revocation(gw: Gateway) -> None:
    """A change to the model (a revoked token) takes the credential and the verdict
    out of memory at once: the next evaluation is the one that may wait, and refuses."""
    gateway = gw.runtime.gateway
    secret = gw.tokens["alice"]
    request = what_if("GET", "/policy/acme-prod/quotes/q1", credential=secret)
    for _ in range(2):
        await gateway.evaluator.evaluate(request, gateway.memo)
    assert gateway.evaluator.evaluate_cached(request, gateway.memo) is not None
    token_id = secret.removeprefix("pgt_").split("_")[0]
    await gw.service.revoke_token(Actor.cli(), token_id)
    await gw.runtime.deliver_changes()
    assert gateway.evaluator.evaluate_cached(request, gateway.memo) is None
    evaluation = await gateway.evaluator.evaluate(request, gateway.memo)
    assert (evaluation.status, evaluation.reason) == (401, "revoked_token")


async def test_a_request_without_host_is_refused_like_the_gateway(gw: Gateway) -> None:
    """An HTTP/1.1 request without Host is a hygiene refusal (what_if adds one, as
    every client does)."""
    bare = EvalRequest("GET", "/health", CIMultiDict())
    evaluation = await _evaluator(gw).evaluate(bare)
    assert (evaluation.status, evaluation.reason) == (400, "invalid_host")


async def test_explanation_of_an_authentication_failure_is_a_deny(gw: Gateway) -> None:
    """explain's answer for a 401 is decision deny with the gateway's reason."""
    request = what_if("GET", "/policy/acme-prod/quotes/q1", credential="pgt_nope_x")
    answer = explanation(await _evaluator(gw).evaluate(request), "GET")
    assert (answer["decision"], answer["reason"]) == ("deny", "invalid_token")
    assert answer["detail"] == "the gateway answers 401 invalid_token"
