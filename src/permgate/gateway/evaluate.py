"""One evaluation behind every door: hygiene → route → public → authenticate →
tenant → permissions, written out once.

:meth:`Evaluator.evaluate` turns a request (method, raw target, headers, and the
identity a verified peer certificate gives) into an :class:`Evaluation`: a hygiene
refusal, an authentication failure, or a decision with its reasons. The inline
gateway (:mod:`permgate.gateway.pipeline`), ``explain`` (the CLI command and the admin API),
``permgate test`` and the admin API's own guard all call it and only render what it
says, so none of them can answer differently from the gateway.

The gateway's decision cache sits around the permission step through
:class:`DecisionMemo`: the evaluation asks it for a verdict once it knows the
credential, the endpoint and the tenant, and hands it every verdict it makes. The
memo stays the gateway's (other doors pass none and decide afresh).

No aiohttp here: the request is plain data, so every door can build one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Protocol

from multidict import CIMultiDict, MultiMapping

from permgate.core.decision import Decision, ScopeDetail, Subject, decide, resolve_tenant_id
from permgate.core.endpoints import EndpointMap, Match
from permgate.core.model import Tenant
from permgate.core.reasons import HygieneReason, Reason
from permgate.gateway import hygiene
from permgate.gateway.authn import Authenticator, AuthFailure, Identity
from permgate.gateway.fieldnames import AUTHORIZATION
from permgate.gateway.modelcache import ModelCache
from permgate.observability.outcome import UNMAPPED_ENDPOINT, DecisionLabel, RequestOutcome

__all__ = [
    "DecisionMemo",
    "EvalRequest",
    "Evaluation",
    "Evaluator",
    "MemoKey",
    "Verdict",
    "explanation",
    "map_tenant_headers",
    "tenant_claims",
    "what_if",
]

# The Host an explained request carries when its caller gives none: a what-if has no
# connection, and the gateway refuses an HTTP/1.1 request without a valid Host.
WHAT_IF_HOST: Final = "permgate.invalid"

# The decision cache's key: the credential (never the secret), the endpoint, the tenant.
MemoKey = tuple[str, str, str | None]


# EvalRequest and Evaluation are made once per request on the gateway's hot path: not
# frozen, because a frozen dataclass's __init__ costs a object.__setattr__ per field.
# Treat them as read-only all the same.
@dataclass(slots=True)
class EvalRequest:
    """A request as every door sees it.

    Args:
        method: the method, case-sensitive as the map matches it.
        target: the raw request-target, path and query, exactly as received.
        headers: the request's header block (repeated names kept).
        version: the HTTP version the request came with.
        peer_principal: the principal a verified client certificate names; it
            identifies the caller only when no bearer credential is presented
            (``explain --principal`` asserts one the same way).
        peer_claims: claims to read a ``claim`` tenant from for such a caller (what
            ``explain`` and ``permgate test`` pass as the tenant header's value).
    """

    method: str
    target: str
    headers: MultiMapping[str]
    version: tuple[int, int] = (1, 1)
    peer_principal: str | None = None
    peer_claims: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of the tenant and permission steps: what the gateway caches.

    ``shadow`` is true when the tenant is in shadow mode (a deny is then forwarded
    and recorded as ``shadow_deny``); ``enforcement`` is the tenant's mode when the
    tenant is the caller's account's, else None.
    """

    decision: Decision
    shadow: bool = False
    enforcement: str | None = None


class DecisionMemo(Protocol):
    """A decision cache around the permission step (see :mod:`permgate.gateway.pipeline`)."""

    def snapshot(self) -> Hashable:
        """What the verdict will be made from (the epochs), read before anything else."""
        ...

    def get(self, key: MemoKey, snapshot: Hashable) -> Verdict | None:
        """A verdict still valid under ``snapshot``, or None."""
        ...

    def put(self, key: MemoKey, snapshot: Hashable, verdict: Verdict) -> None:
        """Remember ``verdict`` if nothing changed since ``snapshot``."""
        ...


@dataclass(slots=True)
class Evaluation:
    """What the gateway does with one request, and why.

    Exactly one of ``refusal`` (hygiene), ``failure`` (authentication) and
    ``verdict`` (a decision) is set. ``status`` is the gateway's own answer: 400,
    401, 403, or 200 for a request it forwards (allowed, or denied in shadow mode).
    """

    status: int
    reason: str
    path: str
    query: str
    refusal: HygieneReason | None = None
    match: Match | None = None
    failure: AuthFailure | None = None
    identity: Identity | None = None
    verdict: Verdict | None = None
    # The caller with its account's roles, when the verdict was made (not cached) now.
    subject: Subject | None = None
    cache_hit: bool = False
    decision_seconds: float | None = None  # the tenant and permission steps alone

    @property
    def decision(self) -> Decision | None:
        """The route/tenant/permission decision, when one was made."""
        return None if self.verdict is None else self.verdict.decision

    @property
    def forwarded(self) -> bool:
        """Whether the gateway forwards the request (allowed, or shadow-denied)."""
        return self.status == 200

    @property
    def label(self) -> DecisionLabel:
        """``allow``, ``deny`` or ``shadow_deny``: the metric's and audit's decision."""
        return decision_label(self.verdict)

    @property
    def endpoint_id(self) -> str | None:
        """The routed endpoint's id, or None (refused before routing, or unmapped)."""
        return None if self.match is None else self.match.endpoint.id


def record_evaluation(outcome: RequestOutcome, evaluation: Evaluation) -> None:
    """Fill ``outcome`` from what the evaluation concluded, for every door alike: the
    endpoint label, the credential's failure, the caller, the decision and its reasons."""
    refused = evaluation.refusal
    if refused is not None:
        outcome.reason = refused
        return
    match = evaluation.match
    outcome.endpoint = UNMAPPED_ENDPOINT if match is None else match.endpoint.id
    failure = evaluation.failure
    if failure is not None:
        outcome.reason = outcome.auth_failure = failure.reason
        outcome.detail = failure.detail
        return
    identity = evaluation.identity
    if identity is not None:
        outcome.principal = identity.principal
        outcome.token_id = identity.token.id if identity.token is not None else None
        outcome.decision_s = evaluation.decision_seconds
        outcome.cache_hit = evaluation.cache_hit
    verdict = evaluation.verdict
    assert verdict is not None  # neither a hygiene refusal nor a 401
    decision = verdict.decision
    outcome.reason = decision.reason
    outcome.detail = decision.detail
    outcome.tenant = decision.tenant
    outcome.required = decision.required + decision.any_of
    outcome.missing = decision.missing
    outcome.decision = decision_label(verdict)


def decision_label(verdict: Verdict | None) -> DecisionLabel:
    """``allow``, ``deny`` (no verdict: refused before one was made) or ``shadow_deny``."""
    if verdict is None:
        return "deny"
    if verdict.decision.allowed:
        return "allow"
    return "shadow_deny" if verdict.shadow else "deny"


def map_tenant_headers(endpoint_map: EndpointMap) -> frozenset[str]:
    """Every header the map reads a tenant from (its entries and its defaults):
    duplicates of these are refused, and none reaches the upstream as the client sent it."""
    sources = [e.tenant for e in endpoint_map.endpoints]
    sources.append(endpoint_map.default_tenant)
    return frozenset(s.name for s in sources if s.kind == "header" and s.name is not None)


class Evaluator:
    """The evaluation for one endpoint map (a new map gets a new evaluator).

    Args:
        endpoint_map: the map to route against.
        model: the in-memory view of the store.
        authenticator: the gateway's credential checks (tokens, JWTs, certificates).
        clock: times the tenant and permission steps.
        check_target: refuse request-targets two parsers could read differently.
            Only the admin API turns it off: it routes its own handlers, no second
            parser reads the path, and its ids (SPIFFE ids hold ``/``) are addressed
            percent-encoded. The message and header checks apply to every door.
    """

    __slots__ = ("_authn", "_check_target", "_clock", "_model", "endpoint_map", "tenant_headers")

    def __init__(
        self,
        endpoint_map: EndpointMap,
        model: ModelCache,
        authenticator: Authenticator,
        *,
        clock: Callable[[], float] = time.perf_counter,
        check_target: bool = True,
    ) -> None:
        self._check_target = check_target
        self.endpoint_map = endpoint_map
        self.tenant_headers: frozenset[str] = map_tenant_headers(endpoint_map)
        self._model = model
        self._authn = authenticator
        self._clock = clock

    async def evaluate(self, request: EvalRequest, memo: DecisionMemo | None = None) -> Evaluation:
        """Evaluate ``request``: every step once, in the gateway's order.

        Raises :class:`~permgate.core.errors.StoreUnavailable` when the store is needed
        and unreachable (the gateway answers 503).
        """
        routed = self._routed(request, memo)
        if isinstance(routed, Evaluation):
            return routed
        path, query, match, snapshot = routed
        try:
            identity = await self._authn.authenticate(
                request.headers.get(AUTHORIZATION), request.peer_principal
            )
        except AuthFailure as failure:
            return Evaluation(401, failure.reason, path, query, match=match, failure=failure)
        if request.peer_claims is not None and identity.claims is None:
            identity = replace(identity, claims=request.peer_claims)

        started = self._clock()
        key = self._key(identity, match, request.headers)
        verdict = memo.get(key, snapshot) if memo is not None else None
        subject: Subject | None = None
        hit = verdict is not None
        if verdict is None:  # no coroutine on the cached path: it is the hot one
            verdict, subject = await self._decide(identity, match, key, memo, snapshot)
        return self._decided(path, query, match, identity, verdict, subject, hit, started)

    def evaluate_cached(self, request: EvalRequest, memo: DecisionMemo) -> Evaluation | None:
        """:meth:`evaluate` when nothing it needs would wait, else None (then call
        :meth:`evaluate`): the same steps, on the credential the authenticator holds
        in memory and the verdict ``memo`` holds for it, without a coroutine. The
        gateway's common case: a known token on a route it was just decided for."""
        routed = self._routed(request, memo)
        if isinstance(routed, Evaluation):
            return routed
        path, query, match, snapshot = routed
        authorization = request.headers.get(AUTHORIZATION)
        if authorization is None:
            return None
        identity = self._authn.remembered(authorization)
        if identity is None:
            return None
        if request.peer_claims is not None and identity.claims is None:
            identity = replace(identity, claims=request.peer_claims)
        started = self._clock()
        verdict = memo.get(self._key(identity, match, request.headers), snapshot)
        if verdict is None:
            return None
        return self._decided(path, query, match, identity, verdict, None, True, started)

    def _routed(
        self, request: EvalRequest, memo: DecisionMemo | None
    ) -> Evaluation | tuple[str, str, Match, Hashable]:
        """Hygiene, route and public: the evaluation when it ends there (a 400, an
        unmapped route, a public endpoint), else what the next steps start from."""
        headers = request.headers
        method = request.method
        target = request.target
        path, sep, query = target.partition("?")  # hygiene.split_target, inlined
        query = sep + query
        # check_message, then check_target, then check_headers: the first refusal wins.
        problem = hygiene.check_message(request.version, headers)
        if problem is None and self._check_target:
            problem = hygiene.check_target(method, target)
        if problem is None:
            problem = hygiene.check_headers(headers, self.tenant_headers)
        if problem is not None:
            return Evaluation(400, problem, path, query, refusal=problem)

        # Read before the first await: the verdict is cached only under these.
        snapshot = None if memo is None else memo.snapshot()
        endpoint_map = self.endpoint_map
        match = endpoint_map.match(method, path)
        if match is None or match.endpoint.public:
            decision = decide(endpoint_map, match, None, None, None)
            status = 200 if decision.allowed else 403
            return Evaluation(
                status, decision.reason, path, query, match=match, verdict=Verdict(decision)
            )
        return path, query, match, snapshot

    def _decided(
        self,
        path: str,
        query: str,
        match: Match,
        identity: Identity,
        verdict: Verdict,
        subject: Subject | None,
        hit: bool,
        started: float,
    ) -> Evaluation:
        """The evaluation of an authenticated caller's verdict."""
        decision = verdict.decision
        status = 200 if decision.allowed or verdict.shadow else 403
        # Positional: keywords cost a fifth of a microsecond here, on every request.
        return Evaluation(
            status,
            decision.reason,
            path,
            query,
            None,  # refusal
            match,
            None,  # failure
            identity,
            verdict,
            subject,
            hit,
            self._clock() - started,
        )

    async def permit(
        self,
        identity: Identity,
        match: Match,
        headers: Mapping[str, str],
        memo: DecisionMemo | None = None,
        snapshot: Hashable = None,
    ) -> tuple[Verdict, Subject | None, bool]:
        """The tenant and permission steps for an authenticated caller: the verdict,
        the subject it was made for (None when it came from ``memo``), and whether it
        came from ``memo``. ``snapshot`` is the memo's, read before authentication."""
        key = self._key(identity, match, headers)
        verdict = memo.get(key, snapshot) if memo is not None else None
        if verdict is not None:
            return verdict, None, True
        verdict, subject = await self._decide(identity, match, key, memo, snapshot)
        return verdict, subject, False

    @staticmethod
    def _key(identity: Identity, match: Match, headers: Mapping[str, str]) -> MemoKey:
        """The request's cache key: the credential, the endpoint and the request's
        tenant (its last part, which the permission step reads)."""
        endpoint = match.endpoint
        tenant_id = resolve_tenant_id(endpoint, match.params, headers, identity.claims)
        return (identity.credential_key, endpoint.id, tenant_id)

    async def _decide(
        self,
        identity: Identity,
        match: Match,
        key: MemoKey,
        memo: DecisionMemo | None,
        snapshot: Hashable,
    ) -> tuple[Verdict, Subject]:
        """Steps 4 and 5 afresh, from the model; the verdict goes to ``memo``."""
        tenant_id = key[2]
        principal = identity.principal
        roles = await self._model.roles(principal.account)
        tenant: Tenant | None = (
            await self._model.tenant(tenant_id) if tenant_id is not None else None
        )
        subject = Subject(principal, roles, identity.token)
        decision = decide(self.endpoint_map, match, subject, tenant, tenant_id)
        # Shadow mode is the tenant's opt-in, and never reaches across accounts.
        own = tenant is not None and tenant.account == principal.account
        enforcement = tenant.enforcement if own and tenant is not None else None
        verdict = Verdict(decision, enforcement == "shadow", enforcement)
        if memo is not None:
            memo.put(key, snapshot, verdict)
        return verdict, subject


def what_if(
    method: str,
    target: str,
    headers: Mapping[str, str] | Collection[tuple[str, str]] = (),
    *,
    credential: str | None = None,
    principal: str | None = None,
    claims: Mapping[str, object] | None = None,
) -> EvalRequest:
    """The request an explaining door evaluates: what a client would send.

    ``credential`` (an auth token or a JWT) goes in ``Authorization: Bearer``;
    ``principal`` is asserted as a verified peer would be (no bearer credential), with
    ``claims`` to read a ``claim`` tenant from. A request without ``Host`` gets a
    placeholder one, as every HTTP/1.1 client sends one.
    """
    block: CIMultiDict[str] = CIMultiDict(headers)
    if credential is not None:
        block.add("Authorization", f"Bearer {credential}")
    if "Host" not in block:
        block["Host"] = WHAT_IF_HOST
    return EvalRequest(method, target, block, peer_principal=principal, peer_claims=claims)


def tenant_claims(endpoint_map: EndpointMap, value: str | None) -> dict[str, object] | None:
    """Claims naming ``value`` under every claim the map reads a tenant from: how a
    what-if for a principal says which tenant a JWT of its would carry."""
    if value is None:
        return None
    sources = [e.tenant for e in endpoint_map.endpoints]
    sources.append(endpoint_map.default_tenant)
    return {s.name: value for s in sources if s.kind == "claim" and s.name is not None}


def explanation(evaluation: Evaluation, method: str) -> dict[str, object]:
    """What ``explain`` (the CLI and the admin API) answers for an evaluation: a
    ``decision`` (``allow`` or ``deny``; a shadow deny is a deny, with a note), the
    gateway's ``reason`` and what lies behind it."""
    body: dict[str, object] = {
        "decision": "allow" if evaluation.label == "allow" else "deny",
        "reason": str(evaluation.reason),
        "endpoint": evaluation.endpoint_id,
        "tenant": None,
        "required": [],
        "any_of": [],
        "missing_permissions": [],
        "detail": "",
        "principal": None,
        "token_id": None,
        "enforcement": None,
    }
    identity = evaluation.identity
    if identity is not None:
        body["principal"] = identity.principal.id
        body["token_id"] = None if identity.token is None else identity.token.id
    if evaluation.refusal is not None:
        body["detail"] = "the gateway refuses this request with 400 before routing"
        return body
    if evaluation.failure is not None:
        body["detail"] = f"the gateway answers 401 {evaluation.failure.reason}"
        return body
    verdict = evaluation.verdict
    assert verdict is not None
    decision = verdict.decision
    detail = ""
    if decision.reason == Reason.UNMAPPED_ROUTE:
        detail = f"no entry of the endpoint map matches {method} {evaluation.path}"
    elif decision.reason == Reason.TENANT_OUT_OF_SCOPE:
        # Another account's tenant is reported exactly like an unknown one.
        other = decision.detail == ScopeDetail.OTHER_ACCOUNT
        detail = str(ScopeDetail.UNKNOWN_TENANT if other else decision.detail)
    elif decision.reason == Reason.MISSING_PERMISSION:
        detail = "not covered by the caller's grants: " + ", ".join(decision.missing)
    if verdict.shadow and not decision.allowed:
        detail = (
            f"{detail}; " if detail else ""
        ) + "tenant is in shadow mode: the gateway forwards and records shadow_deny"
    body.update(
        tenant=decision.tenant,
        required=list(decision.required),
        any_of=list(decision.any_of),
        missing_permissions=list(decision.missing),
        detail=detail,
        enforcement=verdict.enforcement,
    )
    return body
