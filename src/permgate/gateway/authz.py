"""The decision service: permgate behind an existing proxy or mesh, on ``authz_listen``.

Three doors, one evaluation. Each door turns what it receives into the original
request (method, raw target, headers) and hands it to the gateway's own
:class:`~permgate.gateway.evaluate.Evaluator` with the gateway's decision cache; it forwards
nothing, it only answers:

- ``ANY /envoy/<original path and query>``: Envoy's and Istio's HTTP ext_authz (configured
  with ``path_prefix: /envoy``), the original method and headers as Envoy passes them;
- ``GET /forward-auth``: nginx ``auth_request`` (``X-Original-Method`` +
  ``X-Original-URI``), Traefik ``forwardAuth`` and Caddy ``forward_auth``
  (``X-Forwarded-Method`` + ``X-Forwarded-Uri``). The original method is never
  guessed: nginx sends every auth subrequest as GET, so a check without a method header
  is a configuration error, and one that names the method or the target twice (both
  header families, a repeated header, a ``_`` or ``.`` spelling a proxy passed through
  from the client) is refused;
- ``POST /access/v1/evaluation`` and ``/access/v1/evaluations``: OpenID AuthZEN 1.0, for
  applications that authenticate their users themselves. The caller authenticates and
  needs ``decisions.evaluate``; it can only ask about principals of its own account.

The two proxy doors are honoured only from peers in ``authz_trusted_proxies``. Their
answers: 200 with every identity header present (empty when it does not apply, so a
client-sent copy never survives a proxy that copies only what it receives), or the
gateway's JSON refusals (400, 401, 403, 503). A deny on a tenant in shadow mode is
answered as an allow and recorded as ``shadow_deny``. Every answer is one outcome for
the gateway's observer (metrics, audit with its ``door``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final

import orjson
from multidict import CIMultiDict, MultiMapping

from permgate.core.endpoints import EndpointMap
from permgate.core.errors import PermgateError, StoreUnavailable
from permgate.core.reasons import DoorReason, Reason, Refusal
from permgate.gateway import hygiene
from permgate.gateway.authn import Authenticator, Identity
from permgate.gateway.evaluate import (
    EvalRequest,
    Evaluation,
    Evaluator,
    record_evaluation,
    what_if,
)
from permgate.gateway.http1 import BodyBroken, BodyTimeout, Exchange
from permgate.gateway.modelcache import ModelCache
from permgate.gateway.pipeline import Gateway, Observer, failed
from permgate.gateway.responses import (
    Answer,
    closing,
    forbidden,
    json_response,
    refusal,
    unauthenticated,
)
from permgate.maps.loader import parse_map
from permgate.observability.outcome import Door, RequestOutcome
from permgate.observability.tracing import trace_id_of

__all__ = [
    "AUTHZEN_MAP",
    "IDENTITY_HEADERS",
    "DecisionService",
    "TrustedProxies",
    "forwarded_request",
    "identity_headers",
]

log = logging.getLogger("permgate.authz")

ENVOY_PREFIX: Final = "/envoy"
FORWARD_AUTH: Final = "/forward-auth"
EVALUATION: Final = "/access/v1/evaluation"
EVALUATIONS: Final = "/access/v1/evaluations"

# Always on a 200, in this order: what a proxy copies to the upstream.
IDENTITY_HEADERS: Final = (
    "X-Permgate-Principal",
    "X-Permgate-Principal-Kind",
    "X-Permgate-Tenant",
    "X-Permgate-Token-Id",
    "X-Request-Id",
)
# Echoed to the caller unchanged, so the proxy's trace continues.
_TRACE_HEADERS: Final = ("traceparent", "tracestate")
_TRACE_MAX: Final = 512

# The forwarded-request headers: (family, what it names) by canonical lower-case name.
_FORWARDED: Final[dict[str, tuple[str, str]]] = {
    "x-forwarded-method": ("forwarded", "method"),
    "x-forwarded-uri": ("forwarded", "uri"),
    "x-original-method": ("original", "method"),
    "x-original-uri": ("original", "uri"),
}
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# The AuthZEN caller's own requirement, checked by the same evaluation as any endpoint.
AUTHZEN_MAP: Final[EndpointMap] = parse_map(
    """
version: 1
defaults:
  tenant: none
unmapped: deny
endpoints:
  - {id: authzen.evaluation, method: POST, path: /access/v1/evaluation,
     permissions: [decisions.evaluate]}
  - {id: authzen.evaluations, method: POST, path: /access/v1/evaluations,
     permissions: [decisions.evaluate]}
""",
    "permgate/gateway/authz.py (the AuthZEN caller's map)",
)
_SEMANTICS: Final = frozenset({"execute_all", "deny_on_first_deny", "permit_on_first_permit"})
_MAX_EVALUATIONS: Final = 1000
_MAX_KNOWN_PEERS: Final = 4096
# The largest AuthZEN body read (aiohttp's client_max_size, as before).
MAX_BODY: Final = 1024 * 1024


class TrustedProxies:
    """The peers whose forwarded-request headers are honoured (``authz_trusted_proxies``)."""

    __slots__ = ("_known", "_networks")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)
        self._known: dict[str, bool] = {}  # peers seen: parsing an address costs µs

    def __contains__(self, peer: object) -> bool:
        if not isinstance(peer, str):
            return False  # a Unix socket peer, or none at all: not an address we trust
        known = self._known.get(peer)
        if known is None:
            known = self._trusted(peer)
            if len(self._known) < _MAX_KNOWN_PEERS:
                self._known[peer] = known
        return known

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def forwarded_request(headers: MultiMapping[str]) -> tuple[str, str] | DoorReason:
    """The original ``(method, target)`` a forward-auth check names, or why not.

    Exactly one header family (``X-Forwarded-*`` or ``X-Original-*``), each header
    once, spelled with dashes only; the method one HTTP token (a proxy that merged two
    copies into ``GET, POST`` sent it twice).
    """
    found: dict[str, list[str]] = {"method": [], "uri": []}
    families: set[str] = set()
    for name, value in headers.items():
        lowered = name.lower()
        canonical = lowered.replace("_", "-").replace(".", "-")
        spec = _FORWARDED.get(canonical)
        if spec is None:
            continue
        if canonical != lowered:
            return DoorReason.AMBIGUOUS_FORWARDED_REQUEST
        family, what = spec
        families.add(family)
        found[what].append(value)
    if len(families) > 1 or len(found["method"]) > 1 or len(found["uri"]) > 1:
        return DoorReason.AMBIGUOUS_FORWARDED_REQUEST
    if not found["method"]:
        return DoorReason.MISSING_FORWARDED_METHOD
    if not found["uri"]:
        return DoorReason.MISSING_FORWARDED_URI
    method = found["method"][0].strip()
    if _TOKEN.fullmatch(method) is None:
        return DoorReason.AMBIGUOUS_FORWARDED_REQUEST
    return method, found["uri"][0]


def identity_headers(evaluation: Evaluation, request_id: str) -> dict[str, str]:
    """The identity of a forwarded (200) answer, every header present: empty values
    where one does not apply (a public endpoint, no token, no tenant)."""
    identity = evaluation.identity
    decision = evaluation.decision
    principal = identity.principal if identity is not None else None
    token = identity.token if identity is not None else None
    return {
        "X-Permgate-Principal": principal.id if principal is not None else "",
        "X-Permgate-Principal-Kind": principal.kind if principal is not None else "",
        "X-Permgate-Tenant": (decision.tenant or "") if decision is not None else "",
        "X-Permgate-Token-Id": token.id if token is not None else "",
        "X-Request-Id": request_id,
    }


def render_check(evaluation: Evaluation, request_id: str) -> Answer:
    """A proxy door's answer: 200 with the identity headers, or the gateway's refusal."""
    if evaluation.refusal is not None:
        return refusal(400, "bad_request", evaluation.refusal, request_id)
    if evaluation.failure is not None:
        return unauthenticated(evaluation.failure, request_id)
    decision = evaluation.decision
    assert decision is not None
    if not evaluation.forwarded:
        return forbidden(decision, request_id)
    return Answer(200, b"", identity_headers(evaluation, request_id), content_type=None)


class DecisionService:
    """The ``authz_listen`` handler (served by :class:`permgate.gateway.http1.Listener`).

    Args:
        gateway: the gateway whose evaluator and decision cache every door uses (its map
            swaps are seen at once; it is never asked to forward anything).
        observer: the gateway's metrics and audit.
        authenticator: the AuthZEN caller's credential checks (the gateway's).
        model: the in-memory view of the store (the AuthZEN subject's account).
        trusted_proxies: CIDRs whose forwarded-request headers are honoured.
        body_timeout: how long an AuthZEN body may pause (``upstream_timeout_seconds``).
    """

    def __init__(
        self,
        *,
        gateway: Gateway,
        observer: Observer,
        authenticator: Authenticator,
        model: ModelCache,
        trusted_proxies: Iterable[str],
        clock: Callable[[], float] = time.perf_counter,
        body_timeout: float = 30.0,
    ) -> None:
        self._gateway = gateway
        self._body_timeout = body_timeout
        self._observer = observer
        self._model = model
        self._trusted = TrustedProxies(trusted_proxies)
        self._caller = Evaluator(AUTHZEN_MAP, model, authenticator, clock=clock)
        self._clock = clock

    def handle(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Serve one request on the decision listener; never raises for a bad one.
        None when answered without waiting (the proxy doors' common case: an audit
        slot free, the credential and the verdict in memory), else the coroutine that
        finishes it (:class:`~permgate.gateway.http1.Handler`)."""
        raw = exchange.target
        if raw.startswith(ENVOY_PREFIX + "/"):
            return self._check(exchange, "envoy")
        path = raw.partition("?")[0]
        if path == FORWARD_AUTH:
            return self._check(exchange, "forward_auth")
        if path in (EVALUATION, EVALUATIONS):
            return self._serve_authzen(exchange, batch=path == EVALUATIONS)
        _send(exchange, self._not_found(exchange))
        return None

    async def _serve_authzen(self, exchange: Exchange, *, batch: bool) -> None:
        _send(exchange, await self._authzen(exchange, batch=batch))

    def _not_found(self, exchange: Exchange) -> Answer:
        return json_response(
            404,
            {
                "error": "not_found",
                "detail": f"the decision listener serves {ENVOY_PREFIX}/..., {FORWARD_AUTH}, "
                f"{EVALUATION} and {EVALUATIONS}",
                "request_id": hygiene.request_id(exchange.headers),
            },
        )

    async def refuse_unreadable(self, client_ip: str | None, status: int, reason: str) -> bytes:
        """Answer a request the HTTP server could not read, as the gateway does: the JSON
        shape, counted and audited (its door unknown: ``door`` is null), connection
        closed, nothing of the request echoed or recorded."""
        t0 = self._clock()
        outcome = RequestOutcome(
            request_id=hygiene.new_id(),
            decision_id=hygiene.new_id(),
            method="",
            path="",
            client_ip=client_ip,
            started=time.time(),
            map_sha256=self._gateway.evaluator.endpoint_map.sha256,
            reason=reason,
            door=None,
        )
        error = "request_timeout" if status == 408 else "bad_request"
        response = refusal(status, error, reason, outcome.request_id).render()
        try:
            await self._observer.admit()
        except PermgateError:
            self._finish(outcome, status, t0, recorded=False)
            return response
        self._finish(outcome, status, t0, recorded=True)
        return response

    # -- the proxy doors ---------------------------------------------------------------

    def _check(self, exchange: Exchange, door: Door) -> Coroutine[Any, Any, None] | None:
        """A proxy door's check: answered here when nothing has to wait, else the
        coroutine that waits (for an audit slot, the store) and answers."""
        t0 = self._clock()
        outcome = self._outcome(exchange, hygiene.request_id(exchange.headers), door)
        if not self._observer.admit_now():
            return self._check_when_admitted(exchange, outcome, door, t0)
        answer = self._answer_check(exchange, outcome, door)
        if isinstance(answer, EvalRequest):  # the credential or the verdict must be fetched
            return self._check_when_evaluated(exchange, outcome, answer, t0)
        self._conclude(exchange, outcome, answer, t0, recorded=True)
        return None

    async def _check_when_admitted(
        self, exchange: Exchange, outcome: RequestOutcome, door: Door, t0: float
    ) -> None:
        refused = await self._admit(outcome)
        if refused is not None:
            self._conclude(exchange, outcome, refused, t0, recorded=False)
            return
        answer = self._answer_check(exchange, outcome, door)
        if isinstance(answer, EvalRequest):
            answer = await self._evaluate(answer, outcome)
        self._conclude(exchange, outcome, answer, t0, recorded=True)

    async def _check_when_evaluated(
        self, exchange: Exchange, outcome: RequestOutcome, request: EvalRequest, t0: float
    ) -> None:
        answer = await self._evaluate(request, outcome)
        self._conclude(exchange, outcome, answer, t0, recorded=True)

    def _conclude(
        self,
        exchange: Exchange,
        outcome: RequestOutcome,
        answer: Answer,
        t0: float,
        *,
        recorded: bool,
    ) -> None:
        """Record the check (audit only when it had its slot), then answer it."""
        _echo_trace(exchange.headers, answer)
        answer.headers["X-Request-Id"] = outcome.request_id
        self._finish(outcome, answer.status, t0, recorded=recorded)
        _send(exchange, answer)

    async def _admit(self, outcome: RequestOutcome) -> Answer | None:
        """None when the request has its audit slot, else the refusal to answer."""
        try:
            await self._observer.admit()
        except PermgateError as exc:
            outcome.reason = Refusal.AUDIT_OVERLOADED
            return refusal(exc.status_code, exc.error, outcome.reason, outcome.request_id)
        return None

    def _finish(self, outcome: RequestOutcome, status: int, t0: float, *, recorded: bool) -> None:
        outcome.status = status
        outcome.duration_s = self._clock() - t0
        if recorded:
            self._observer.record(outcome)
        else:  # no audit slot was granted: counted in metrics only
            self._observer.refused(outcome)

    def _answer_check(
        self, exchange: Exchange, outcome: RequestOutcome, door: Door
    ) -> Answer | EvalRequest:
        """The answer, or the request to :meth:`_evaluate` when its evaluation must
        wait: the same steps either way (:meth:`Evaluator.evaluate_cached`)."""
        request_id = outcome.request_id
        if exchange.client_ip not in self._trusted:
            outcome.reason = DoorReason.UNTRUSTED_PROXY
            outcome.detail = "the peer is not in authz_trusted_proxies"
            return refusal(403, "forbidden", DoorReason.UNTRUSTED_PROXY, request_id)
        if door == "envoy":
            method, target = exchange.method, exchange.target[len(ENVOY_PREFIX) :]
        else:
            named = forwarded_request(exchange.headers)
            if isinstance(named, DoorReason):
                outcome.reason = named
                return refusal(400, "bad_request", named, request_id)
            method, target = named
        outcome.method = method
        outcome.path = hygiene.split_target(target)[0]
        request = EvalRequest(method, target, exchange.headers, exchange.version)
        gateway = self._gateway
        evaluator = gateway.evaluator  # read with the memo's snapshot, before any await
        outcome.map_sha256 = evaluator.endpoint_map.sha256
        try:
            evaluation = evaluator.evaluate_cached(request, gateway.memo)
        except Exception as exc:
            return failed(outcome, exc)
        if evaluation is None:
            return request
        record_evaluation(outcome, evaluation)
        return render_check(evaluation, request_id)

    async def _evaluate(self, eval_request: EvalRequest, outcome: RequestOutcome) -> Answer:
        gateway = self._gateway
        evaluator = gateway.evaluator  # read with the memo's snapshot, before any await
        outcome.map_sha256 = evaluator.endpoint_map.sha256
        try:
            evaluation = await evaluator.evaluate(eval_request, gateway.memo)
        except Exception as exc:
            return failed(outcome, exc)
        record_evaluation(outcome, evaluation)
        return render_check(evaluation, outcome.request_id)

    def _outcome(self, exchange: Exchange, request_id: str, door: Door | None) -> RequestOutcome:
        return RequestOutcome(
            request_id=request_id,
            decision_id=hygiene.new_id(),
            method="",
            path="",
            client_ip=exchange.client_ip,
            started=time.time(),
            map_sha256=self._gateway.evaluator.endpoint_map.sha256,
            trace_id=trace_id_of(exchange.headers.get("traceparent")),
            door=door,
        )

    # -- AuthZEN -----------------------------------------------------------------------

    async def _authzen(self, exchange: Exchange, *, batch: bool) -> Answer:
        """The caller is checked like a request to a ``tenant: none`` endpoint needing
        ``decisions.evaluate``; then each evaluation is one decision, one outcome."""
        t0 = self._clock()
        request_id = hygiene.request_id(exchange.headers)
        outcome = self._outcome(exchange, request_id, "authzen")
        outcome.method = exchange.method
        outcome.path = hygiene.split_target(exchange.target)[0]
        response = await self._admit(outcome)
        if response is not None:
            self._finish(outcome, response.status, t0, recorded=False)
        else:
            response, items, caller = await self._authzen_caller(exchange, outcome, batch=batch)
            if response is None:
                assert caller is not None
                answers = await self._authzen_items(exchange, items, caller, request_id, t0)
                body: object = {"evaluations": answers} if batch else answers[0]
                response = Answer(200, orjson.dumps(body))
            else:  # the caller's own refusal: one outcome
                self._finish(outcome, response.status, t0, recorded=True)
        _echo_trace(exchange.headers, response)
        response.headers["X-Request-Id"] = request_id
        return response

    async def _authzen_caller(
        self, exchange: Exchange, outcome: RequestOutcome, *, batch: bool
    ) -> tuple[Answer | None, list[dict[str, Any]], Identity | None]:
        request_id = outcome.request_id
        try:
            evaluation = await self._caller.evaluate(
                EvalRequest(exchange.method, exchange.target, exchange.headers, exchange.version)
            )
        except StoreUnavailable:
            outcome.reason = Refusal.STORE_UNAVAILABLE
            return refusal(503, "unavailable", Refusal.STORE_UNAVAILABLE, request_id), [], None
        record_evaluation(outcome, evaluation)
        outcome.map_sha256 = AUTHZEN_MAP.sha256
        if evaluation.status != 200:
            return render_check(evaluation, request_id), [], None
        try:
            body = orjson.loads(await _read_body(exchange, self._body_timeout))
            items = _authzen_items(body, batch=batch)
        except (BodyTimeout, BodyBroken) as exc:
            # The body stalled or broke its framing: the connection's rest is in doubt.
            timeout = isinstance(exc, BodyTimeout)
            outcome.decision = "deny"
            outcome.reason = hygiene.REQUEST_TIMEOUT if timeout else hygiene.MALFORMED_REQUEST
            error = "request_timeout" if timeout else "bad_request"
            answer = refusal(408 if timeout else 400, error, outcome.reason, request_id)
            return closing(answer), [], None
        except (ValueError, _TooLarge) as exc:
            outcome.decision, outcome.reason = "deny", DoorReason.INVALID_EVALUATION_REQUEST
            if isinstance(exc, _TooLarge):
                detail = "the body is too large"  # at most MAX_BODY bytes
            else:
                detail = str(exc) if isinstance(exc, _Invalid) else "the body is not a JSON object"
            outcome.detail = detail
            return (
                json_response(
                    400,
                    {
                        "error": "bad_request",
                        "reason": DoorReason.INVALID_EVALUATION_REQUEST,
                        "detail": detail,
                        "request_id": request_id,
                    },
                ),
                [],
                None,
            )
        # The caller's slot is used by the first evaluation's outcome.
        assert evaluation.identity is not None
        return None, items, evaluation.identity

    async def _authzen_items(
        self,
        exchange: Exchange,
        items: list[dict[str, Any]],
        caller: Identity,
        request_id: str,
        t0: float,
    ) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        semantic = items[0].get("_semantic", "execute_all") if items else "execute_all"
        for index, item in enumerate(items):
            outcome = self._outcome(exchange, request_id, "authzen")
            # The caller's audit slot goes to the first decision; each other its own.
            refused = await self._admit(outcome) if index > 0 else None
            if refused is not None:
                self._finish(outcome, refused.status, t0, recorded=False)
                answers.append(_false(Refusal.AUDIT_OVERLOADED))
                continue
            answer = await self._authzen_one(item, caller, outcome)
            self._finish(outcome, 200, t0, recorded=True)
            answers.append(answer)
            if (semantic == "deny_on_first_deny" and not answer["decision"]) or (
                semantic == "permit_on_first_permit" and answer["decision"]
            ):
                break
        return answers

    async def _authzen_one(
        self, item: dict[str, Any], caller: Identity, outcome: RequestOutcome
    ) -> dict[str, Any]:
        subject_type, subject_id = item["subject_type"], item["subject_id"]
        method, target = item["method"], item["target"]
        outcome.method, outcome.path = method, hygiene.split_target(target)[0]
        asked_by = f"asked by {caller.principal.id}"
        principal = await self._model.principal(subject_id)
        if (
            principal is None
            or principal.account != caller.principal.account
            or principal.kind != subject_type
        ):
            # An unknown subject and another account's get the very same answer.
            outcome.reason = Reason.TENANT_OUT_OF_SCOPE
            why = "unknown subject" if principal is None else "subject outside the caller's account"
            outcome.detail = f"{why}; {asked_by}"
            return _false(Reason.TENANT_OUT_OF_SCOPE)
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in item["headers"] if k.lower() != "authorization"
        )
        eval_request = what_if(
            method, target, headers, principal=principal.id, claims=item["claims"]
        )
        response = await self._evaluate(eval_request, outcome)
        outcome.detail = f"{outcome.detail}; {asked_by}" if outcome.detail else asked_by
        if response.status == 200:
            return {"decision": True}
        answer = _false(outcome.reason)
        if outcome.missing:
            answer["context"]["missing_permissions"] = list(outcome.missing)
        return answer


class _Invalid(ValueError):
    """An AuthZEN request body that does not say what to evaluate (the message says why)."""


class _TooLarge(Exception):
    """An AuthZEN request body over :data:`MAX_BODY` bytes."""


async def _read_body(exchange: Exchange, timeout: float) -> bytes:
    """The whole request body, or :class:`_TooLarge` past :data:`MAX_BODY` bytes (the
    rest is not read: the connection closes after the answer)."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = exchange.take_body()
        if chunk is not None:
            size += len(chunk)
            if size > MAX_BODY:
                exchange.close_after = True
                raise _TooLarge
            parts.append(chunk)
            continue
        if exchange.body_done:
            return b"".join(parts)
        await exchange.wait_body(timeout)


def _false(reason: str) -> dict[str, Any]:
    return {"decision": False, "context": {"reason": str(reason)}}


def _authzen_items(body: object, *, batch: bool) -> list[dict[str, Any]]:
    """The evaluations a body asks for, each with its defaults from the top level."""
    if not isinstance(body, dict):
        raise _Invalid("the body must be a JSON object")
    defaults = {
        key: body[key] for key in ("subject", "action", "resource", "context") if key in body
    }
    listed = body.get("evaluations") if batch else None
    if listed is None or listed == []:
        requests = [defaults]
    elif not isinstance(listed, list):
        raise _Invalid("evaluations: must be a list")
    elif len(listed) > _MAX_EVALUATIONS:
        raise _Invalid(f"evaluations: at most {_MAX_EVALUATIONS} per request")
    else:
        requests = []
        for index, entry in enumerate(listed):
            if not isinstance(entry, dict):
                raise _Invalid(f"evaluations[{index}]: must be an object")
            requests.append({**defaults, **entry})
    semantic = "execute_all"
    options = body.get("options")
    if batch and isinstance(options, dict) and "evaluations_semantic" in options:
        semantic = options["evaluations_semantic"]
        if semantic not in _SEMANTICS:
            raise _Invalid(f"options.evaluations_semantic: one of {', '.join(sorted(_SEMANTICS))}")
    items = [
        _authzen_item(request, index if batch else None) for index, request in enumerate(requests)
    ]
    if items:
        items[0]["_semantic"] = semantic
    return items


def _authzen_item(request: Mapping[str, Any], index: int | None) -> dict[str, Any]:
    where = "" if index is None else f"evaluations[{index}]."
    subject = _object(request, "subject", where)
    action = _object(request, "action", where)
    resource = _object(request, "resource", where)
    context = request.get("context", {})
    if not isinstance(context, dict):
        raise _Invalid(f"{where}context: must be an object")
    subject_type = _text(subject, "type", f"{where}subject")
    if subject_type not in ("user", "client"):
        raise _Invalid(f"{where}subject.type: must be user or client (the principal's kind)")
    if _text(resource, "type", f"{where}resource") != "route":
        raise _Invalid(f"{where}resource.type: must be route")
    method = _text(action, "name", f"{where}action")
    if _TOKEN.fullmatch(method) is None:
        raise _Invalid(f"{where}action.name: must be an HTTP method")
    headers = context.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise _Invalid(f"{where}context.headers: must map header names to strings")
    claims = context.get("claims")
    if claims is not None and not isinstance(claims, dict):
        raise _Invalid(f"{where}context.claims: must be an object")
    return {
        "subject_type": subject_type,
        "subject_id": _text(subject, "id", f"{where}subject"),
        "method": method,
        "target": _text(resource, "id", f"{where}resource"),
        "headers": list(headers.items()),
        "claims": claims,
    }


def _object(request: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = request.get(key)
    if not isinstance(value, dict):
        raise _Invalid(f"{where}{key}: must be an object")
    return value


def _text(value: Mapping[str, Any], key: str, where: str) -> str:
    text = value.get(key)
    if not isinstance(text, str) or not text or len(text) > 8192:
        raise _Invalid(f"{where}.{key}: must be a non-empty string")
    return text


def _send(exchange: Exchange, answer: Answer) -> None:
    if not exchange.gone:
        answer.send(exchange)


def _echo_trace(headers: MultiMapping[str], response: Answer) -> None:
    """``traceparent``/``tracestate`` back to the caller, when sent once and sane."""
    for name in _TRACE_HEADERS:
        values = headers.getall(name, ())
        if len(values) == 1 and len(values[0]) <= _TRACE_MAX and values[0].isprintable():
            response.headers[name] = values[0]
