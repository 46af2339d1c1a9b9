"""The inline gateway: evaluate a request, then forward it or refuse it.

The evaluation (hygiene → route → authenticate → tenant → permissions) is
:mod:`permgate.gateway.evaluate`'s, the same every door calls; this module keeps the decision
cache around it, renders its answer, forwards what it allows and records the outcome.
Every request, whatever its fate, produces exactly one :class:`RequestOutcome`,
handed to the observer once, from which the metrics and the audit event are made.

The hot path of a repeated request (a known token, a cached decision) does no I/O:
the route is a trie walk, the credential a dict lookup plus a hash comparison, the
decision a cache hit keyed on the model's and the map's epochs.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from permgate.core.endpoints import EndpointMap
from permgate.core.errors import PermgateError, StoreUnavailable
from permgate.core.reasons import FRAMING_REASONS, Refusal
from permgate.gateway import hygiene
from permgate.gateway.authn import (
    Authenticator,
    Identity,
    PrincipalFrom,
    certificate_principal,
)
from permgate.gateway.decision_cache import DecisionCache
from permgate.gateway.evaluate import EvalRequest, Evaluation, Evaluator, record_evaluation
from permgate.gateway.fieldnames import HOST, TRACEPARENT
from permgate.gateway.http1 import Exchange
from permgate.gateway.lookuplimit import LOOKUP_CLIENT
from permgate.gateway.modelcache import ModelCache
from permgate.gateway.proxy import ClientRequestError, Upstream, UpstreamError, UpstreamTiming
from permgate.gateway.responses import Answer, closing, forbidden, refusal, unauthenticated
from permgate.observability.outcome import RequestOutcome
from permgate.observability.tracing import RequestTrace, Tracer, trace_id_of

__all__ = ["Gateway", "Observer", "failed"]

# What _relay returns while a callback relay answers (and records) the request.
_RELAYED: Final = Answer(0)


class _Pending:
    """A forward that could not start in callbacks (the body still coming, no idle
    pooled connection): :meth:`Gateway._forward` awaits it."""

    __slots__ = ("headers", "path_qs", "t_up", "timing", "trace")

    def __init__(
        self,
        path_qs: str,
        headers: hygiene.ForwardHeaders,
        timing: UpstreamTiming,
        t_up: float,
        trace: RequestTrace | None,
    ) -> None:
        self.path_qs = path_qs
        self.headers = headers
        self.timing = timing
        self.t_up = t_up
        self.trace = trace


class _Served:
    """One admitted request's bookkeeping until it is recorded: what two partials
    carried, in one object whose bound methods are the callbacks (``record`` for the
    end of the request, ``relayed`` for the end of a callback relay)."""

    # timing, t_up and relay_trace are set by Gateway._relay, before a relay may end.
    __slots__ = ("exchange", "gateway", "outcome", "relay_trace", "t0", "t_up", "timing", "trace")

    timing: UpstreamTiming
    t_up: float
    relay_trace: RequestTrace | None

    def __init__(
        self,
        gateway: Gateway,
        exchange: Exchange,
        outcome: RequestOutcome,
        t0: float,
        trace: RequestTrace | None,
    ) -> None:
        self.gateway = gateway
        self.exchange = exchange
        self.outcome = outcome
        self.t0 = t0
        self.trace = trace

    def record(self) -> None:
        """Whatever happened, the request's audit slot is used exactly once."""
        exchange = self.exchange
        outcome = self.outcome
        if exchange.answered:
            outcome.status = exchange.status
        else:  # no answer went out: the client left
            outcome.status = 499
            outcome.reason = outcome.reason or Refusal.CLIENT_GONE
        gateway = self.gateway
        outcome.duration_s = gateway._clock() - self.t0
        gateway._observer.record(outcome)
        if self.trace is not None:
            self.trace.finish(outcome)

    def relayed(self, error: PermgateError | None) -> None:
        """The end of a callback relay: what forward()'s caller does, then the record."""
        exchange = self.exchange
        outcome = self.outcome
        try:
            if error is None:
                self.gateway._forwarded(outcome, self.timing, self.relay_trace, exchange.status)
            else:
                gateway = self.gateway
                answer = gateway._not_forwarded(exchange, outcome, self.t_up, error)
                if not exchange.answered and not exchange.gone:
                    answer.send(exchange)
        except Exception:
            log.exception("request %s failed", outcome.request_id)
            outcome.decision, outcome.reason = "deny", Refusal.INTERNAL_ERROR
        finally:
            self.record()


log = logging.getLogger("permgate.pipeline")

_UPSTREAM_REASONS: Final = {
    "connect": Refusal.UPSTREAM_UNAVAILABLE,
    "timeout": Refusal.UPSTREAM_TIMEOUT,
}
# The sampled request's spans, read only when tracing is configured.
_TRACE: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "permgate_trace", default=None
)


class Observer(Protocol):
    """Where outcomes go: metrics and audit (see :mod:`permgate.observability`)."""

    async def admit(self) -> None:
        """Called before any work: may wait (audit backpressure) or raise a
        :class:`PermgateError` with status 503 (audit ``reject`` policy)."""
        ...

    def admit_now(self) -> bool:
        """:meth:`admit` when it would neither wait nor refuse: True, admitted; False,
        nothing was done (call :meth:`admit`)."""
        ...

    def record(self, outcome: RequestOutcome) -> None:
        """Called exactly once per admitted request, after the response."""
        ...

    def refused(self, outcome: RequestOutcome) -> None:
        """Called for a request refused before admission (metrics only, no slot)."""
        ...


class Gateway:
    """The gateway listener's handler.

    Args:
        endpoint_map: the map to route against; replaced with :meth:`swap_map`.
        model: the in-memory view of the store (tenants, principals, tokens, roles).
        authenticator: turns an ``Authorization`` header into an :class:`Identity`.
        upstream: the pooled client to the protected API.
        observer: metrics and audit.
        forward_credential: pass the client's ``Authorization`` on to the upstream.
        tracer: spans for sampled requests, or None (tracing off: no span is made).
        principal_from: with client certificates verified by the listener, which of
            their fields is the principal id of a request without a bearer credential.
    """

    def __init__(
        self,
        *,
        endpoint_map: EndpointMap,
        model: ModelCache,
        authenticator: Authenticator,
        upstream: Upstream,
        observer: Observer,
        forward_credential: bool = False,
        decision_ttl_seconds: float = 30.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.perf_counter,
        tracer: Tracer | None = None,
        principal_from: PrincipalFrom | None = None,
    ) -> None:
        self._tracer = tracer
        self._principal_from = principal_from
        self._model = model
        self._authn = authenticator
        self._upstream = upstream
        self._observer = observer
        self._forward_credential = forward_credential
        self.memo = DecisionCache(model, ttl_seconds=decision_ttl_seconds, max_entries=max_entries)
        self._clock = clock
        self.endpoint_map = endpoint_map
        self.evaluator = Evaluator(endpoint_map, model, authenticator, clock=clock)
        self._strip = _lower(self.evaluator.tenant_headers)
        self._protected = _protected_headers(self.evaluator.tenant_headers, forward_credential)

    # -- map ---------------------------------------------------------------------

    def swap_map(self, endpoint_map: EndpointMap) -> None:
        """Replace the map atomically; every cached decision becomes stale at once."""
        evaluator = Evaluator(endpoint_map, self._model, self._authn, clock=self._clock)
        self._strip = _lower(evaluator.tenant_headers)
        self._protected = _protected_headers(evaluator.tenant_headers, self._forward_credential)
        self.endpoint_map = endpoint_map
        self.evaluator = evaluator
        self.memo.new_map()

    # -- the handler -------------------------------------------------------------

    async def refuse_unreadable(self, client_ip: str | None, status: int, reason: str) -> bytes:
        """Answer a request the HTTP server could not read (bad framing or syntax, an
        oversized head, a stalled client): counted and audited like any deny, the
        connection closed. Nothing of what the client sent is known, so nothing of it
        is echoed or recorded."""
        started = time.time()
        t0 = self._clock()
        request_id = hygiene.new_id()
        outcome = RequestOutcome(
            request_id=request_id,
            decision_id=hygiene.new_id(),
            method="",
            path="",
            client_ip=client_ip,
            started=started,
            map_sha256=self.endpoint_map.sha256,
            reason=reason,
            status=status,
        )
        error = "request_timeout" if status == 408 else "bad_request"
        answer = refusal(status, error, reason, request_id).render()
        try:
            await self._observer.admit()
        except PermgateError:
            outcome.duration_s = self._clock() - t0
            self._observer.refused(outcome)  # no audit slot: counted in metrics
            return answer
        outcome.duration_s = self._clock() - t0
        self._observer.record(outcome)
        return answer

    def handle(self, exchange: Exchange) -> Coroutine[Any, Any, None] | None:
        """Serve one request; never raises for a request-level problem.

        The common case is served without a coroutine: no tracing, a verdict the cache
        holds for a credential the authenticator remembers, a free audit slot, and a
        refusal answered or a forward relayed in callbacks. Then nothing is returned.
        Anything that may wait returns the coroutine that serves the request (the
        listener runs it): :meth:`serve`, the whole path, or the forward that waits."""
        if self._tracer is not None:
            return self.serve(exchange)
        started = time.time()
        t0 = self._clock()
        evaluator = self.evaluator
        request = self._eval_request(exchange, exchange.target)
        try:
            evaluation = evaluator.evaluate_cached(request, self.memo)
        except Exception:  # whatever it is, the whole path says it (a 500, logged)
            evaluation = None
        # The evaluation above only read memory: a request that cannot go on from it now
        # is served by the whole path, from the start.
        if evaluation is None or not self._observer.admit_now():
            return self.serve(exchange)
        outcome = self._outcome(exchange, started)
        served = _Served(self, exchange, outcome, t0, None)
        answer: Answer | _Pending | None = None
        try:
            answer = self._evaluated(served, evaluator, evaluation)
        except Exception as exc:
            answer = failed(outcome, exc)
        if answer is _RELAYED:  # the relay records it when it ends
            return None
        if isinstance(answer, _Pending):  # a body still coming, or no idle connection
            return self._forward_then_record(served, answer)
        try:
            self._send(exchange, answer)
        finally:
            served.record()
        return None

    async def serve(self, exchange: Exchange) -> None:
        """The whole path of one request, for whatever may wait: tracing, admission
        under audit backpressure, a credential or verdict not in memory, a forward that
        waits for the body or a connection."""
        started = time.time()
        t0 = self._clock()
        headers = exchange.headers
        outcome = self._outcome(exchange, started)
        trace: RequestTrace | None = None
        if self._tracer is not None:
            trace = self._tracer.start(
                headers,
                method=exchange.method,
                path=outcome.path,
                scheme=exchange.scheme,
                host=headers.get(HOST),
                client_ip=outcome.client_ip,
            )
            _TRACE.set(trace)
        try:
            await self._observer.admit()
        except PermgateError as exc:
            # No audit slot was granted, so no event: the refusal is counted in metrics.
            outcome.reason = Refusal.AUDIT_OVERLOADED
            outcome.status = exc.status_code
            outcome.duration_s = self._clock() - t0
            self._observer.refused(outcome)
            if trace is not None:
                trace.finish(outcome)
            refusal(exc.status_code, exc.error, Refusal.AUDIT_OVERLOADED, outcome.request_id).send(
                exchange
            )
            return
        answer: Answer | None = None
        served = _Served(self, exchange, outcome, t0, trace)
        try:
            try:
                evaluator = self.evaluator
                request = self._eval_request(exchange, exchange.target)
                evaluation = (
                    evaluator.evaluate_cached(request, self.memo) if trace is None else None
                )
                if evaluation is None:
                    LOOKUP_CLIENT.set(outcome.client_ip or "")  # unknown keys: shared per client
                    # The evaluator and the cache's snapshot are read together, before
                    # any await: a map swap cannot slip between them.
                    evaluation = await evaluator.evaluate(request, self.memo)
                done = self._evaluated(served, evaluator, evaluation)
                if isinstance(done, _Pending):  # a body still coming, or no idle connection
                    done = await self._forward(exchange, outcome, done)
                answer = done
            except Exception as exc:
                answer = failed(outcome, exc)
            self._send(exchange, answer)
        finally:
            if answer is not _RELAYED:  # else the relay records it when it ends
                served.record()

    async def _forward_then_record(self, served: _Served, pending: _Pending) -> None:
        """The rest of the common case when its forward has to wait."""
        exchange = served.exchange
        outcome = served.outcome
        answer: Answer | None = None
        try:
            try:
                answer = await self._forward(exchange, outcome, pending)
            except Exception as exc:
                answer = failed(outcome, exc)
            self._send(exchange, answer)
        finally:
            served.record()

    def _outcome(self, exchange: Exchange, started: float) -> RequestOutcome:
        """The request's record, filled as it goes (see :class:`RequestOutcome`)."""
        headers = exchange.headers
        return RequestOutcome(
            hygiene.request_id(headers),
            hygiene.new_id(),
            exchange.method,
            exchange.target.partition("?")[0],
            exchange.client_ip,
            started,
            map_sha256=self.endpoint_map.sha256,
            trace_id=trace_id_of(headers.get(TRACEPARENT)),
        )

    @staticmethod
    def _send(exchange: Exchange, answer: Answer | None) -> None:
        """Write ``answer`` unless it is relayed, went out already, or the client left."""
        if answer is None or answer is _RELAYED or exchange.answered or exchange.gone:
            return
        answer.send(exchange)

    def _eval_request(self, exchange: Exchange, raw_target: str) -> EvalRequest:
        certificate_id = None
        if self._principal_from is not None and exchange.peercert is not None:
            # Only a certificate the listener verified is there (see permgate.runtime.tls).
            certificate_id = certificate_principal(exchange.peercert, self._principal_from)
        return EvalRequest(
            exchange.method, raw_target, exchange.headers, exchange.version, certificate_id
        )

    def _evaluated(
        self, served: _Served, evaluator: Evaluator, evaluation: Evaluation
    ) -> Answer | _Pending | None:
        """What an evaluation makes of the request: a refusal, ``_RELAYED`` (being
        relayed in callbacks, which call ``served.record`` at the end), or a ``_Pending``
        forward that must wait (:meth:`_forward`)."""
        outcome = served.outcome
        outcome.map_sha256 = evaluator.endpoint_map.sha256
        record_evaluation(outcome, evaluation)
        refused = evaluation.refusal
        if refused is not None:
            answer = refusal(400, "bad_request", refused, outcome.request_id)
            if refused in FRAMING_REASONS:
                return closing(answer)  # what follows on this connection is in doubt
            return answer
        failure = evaluation.failure
        if failure is not None:
            return unauthenticated(failure, outcome.request_id)
        if self._tracer is not None and (trace := _TRACE.get()) is not None:
            trace.decided()
        if not evaluation.forwarded:  # neither allowed nor denied in shadow mode
            assert evaluation.verdict is not None
            return forbidden(evaluation.verdict.decision, outcome.request_id)
        identity = evaluation.identity
        match = evaluation.match
        tenant_header = None
        if identity is not None and match is not None:
            source = match.endpoint.tenant
            tenant_header = source.name if source.kind == "header" else None
        return self._relay(served, identity, tenant_header)

    def _relay(
        self, served: _Served, identity: Identity | None, tenant_header: str | None
    ) -> Answer | _Pending:
        """Forward an allowed (or shadow-denied) request. Every tenant header the map
        declares is removed, and the endpoint's own (when its tenant comes from one) is
        set again to the decided tenant: the upstream sees no other tenant.

        The common case (the body here, a pooled connection idle) is relayed in
        callbacks: no Task, no Future; the outcome is recorded when it ends
        (``_RELAYED``). Else the ``_Pending`` forward is :meth:`_forward`'s to await."""
        exchange = served.exchange
        outcome = served.outcome
        path_qs = exchange.target
        if identity is None:
            identity_headers = {"X-Request-Id": outcome.request_id}
        else:
            principal = identity.principal
            identity_headers = {
                "X-Request-Id": outcome.request_id,
                "X-Permgate-Principal": principal.id,
                "X-Permgate-Principal-Kind": principal.kind,
            }
            tenant = outcome.tenant
            if tenant is not None:
                identity_headers["X-Permgate-Tenant"] = tenant
                if tenant_header is not None:
                    identity_headers[tenant_header] = tenant
            token = identity.token
            if token is not None:
                identity_headers["X-Permgate-Token-Id"] = token.id
        headers = hygiene.forward_headers(
            exchange.headers,
            client_ip=exchange.client_ip or "",
            scheme=exchange.scheme,
            # Checked by hygiene.check_message (HTTP/1.0 may omit it).
            host=exchange.headers.get(HOST),
            drop_credential=not self._forward_credential,
            identity=identity_headers,
            protected=self._protected,
            strip=self._strip,
        )
        # The client may wait for "100 Continue" before it sends its body.
        if exchange.expect_continue:
            exchange.send_continue()
        trace = _TRACE.get() if self._tracer is not None else None
        if trace is not None:
            traceparent = trace.upstream_started(
                method=exchange.method, url=self._upstream.spec + path_qs
            )
            headers.replace("traceparent", traceparent)
        timing = served.timing = UpstreamTiming()
        t_up = served.t_up = self._clock()
        served.relay_trace = trace
        if self._upstream.relay(
            exchange, path_qs=path_qs, headers=headers, timing=timing, done=served.relayed
        ):
            return _RELAYED
        return _Pending(path_qs, headers, timing, t_up, trace)

    async def _forward(
        self, exchange: Exchange, outcome: RequestOutcome, pending: _Pending
    ) -> Answer | None:
        """The forward that waits: for the rest of the body, or for a connection."""
        timing = pending.timing
        try:
            status = await self._upstream.forward(
                exchange, path_qs=pending.path_qs, headers=pending.headers, timing=timing
            )
        except (ClientRequestError, UpstreamError) as exc:
            return self._not_forwarded(exchange, outcome, pending.t_up, exc)
        self._forwarded(outcome, timing, pending.trace, status)
        return None

    def _forwarded(
        self,
        outcome: RequestOutcome,
        timing: UpstreamTiming,
        trace: RequestTrace | None,
        status: int,
    ) -> None:
        outcome.upstream_s = timing.head_seconds
        if timing.error is not None and not timing.client_gone:
            outcome.upstream_error = timing.error.kind  # failed mid-answer: client cut off
        if trace is not None:
            trace.upstream_finished(status, outcome.upstream_error)

    def _not_forwarded(
        self, exchange: Exchange, outcome: RequestOutcome, t_up: float, exc: PermgateError
    ) -> Answer:
        """The answer to a request whose answer never started."""
        outcome.upstream_s = self._clock() - t_up
        if isinstance(exc, UpstreamError):
            outcome.upstream_error = exc.kind
            outcome.reason = _UPSTREAM_REASONS.get(exc.kind, Refusal.UPSTREAM_UNAVAILABLE)
            outcome.detail = str(exc)  # refused, timed out, TLS handshake failed: why
            error = "gateway_timeout" if exc.status_code == 504 else "bad_gateway"
            return refusal(exc.status_code, error, outcome.reason, outcome.request_id)
        # The client stalled or broke its body: its fault, not the upstream's.
        reason = exc.reason if isinstance(exc, ClientRequestError) else Refusal.INTERNAL_ERROR
        outcome.reason = Refusal.CLIENT_GONE if exchange.gone else reason
        answer = refusal(exc.status_code, exc.error, reason, outcome.request_id)
        return closing(answer)  # the rest of the body will never be read


def failed(outcome: RequestOutcome, exc: Exception) -> Answer:
    """The answer to a request whose evaluation or forward raised ``exc``, at any door:
    503 when the store could not be reached, else 500 (logged); a deny either way."""
    outcome.decision = "deny"
    if isinstance(exc, StoreUnavailable):
        outcome.reason = Refusal.STORE_UNAVAILABLE
        return refusal(503, "unavailable", Refusal.STORE_UNAVAILABLE, outcome.request_id)
    log.error("request %s failed", outcome.request_id, exc_info=exc)
    outcome.reason = Refusal.INTERNAL_ERROR
    return refusal(500, "internal", Refusal.INTERNAL_ERROR, outcome.request_id)


def _lower(names: frozenset[str]) -> frozenset[str]:
    return frozenset(name.lower() for name in names)


def _protected_headers(tenant_headers: frozenset[str], forward_credential: bool) -> frozenset[str]:
    """Headers the decision read, which a client's ``Connection`` list must not strip:
    the upstream would read another tenant (its default) than the one authorized."""
    names = {name.lower() for name in tenant_headers}
    if forward_credential:
        names.add("authorization")
    return frozenset(names)
