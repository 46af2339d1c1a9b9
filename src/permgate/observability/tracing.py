"""W3C trace context: the trace id for audit, and OpenTelemetry spans when configured.

Without a ``tracing`` key nothing here runs per request except
:func:`trace_id_of` (a dict lookup and, when the caller sent a ``traceparent``, a
few string checks): ``traceparent`` and ``tracestate`` are forwarded to the upstream
unchanged like any other header, and no span object is ever made. ``OTEL_*``
environment variables never turn tracing on: only the ``tracing`` key does.

With ``tracing`` (:class:`Tracer`), the OpenTelemetry SDK exports spans over
OTLP/HTTP to ``otlp_endpoint``/v1/traces, in batches from a background thread. The
sampling is parent-based with a ratio for new traces, and it is decided here, before
any span object exists: a request whose caller's ``traceparent`` says "not sampled",
or a new trace that the ratio drops, costs one random draw and is forwarded with its
headers unchanged. A sampled request gets

* a server span (OpenTelemetry's HTTP semantic-convention attributes), child of the
  caller's span when there is one;
* ``permgate.decision``, a child covering authentication and the decision, with
  ``permgate.decision``, ``permgate.reason`` and ``permgate.endpoint``;
* a client span for the upstream call, which the upstream receives as the parent in
  its ``traceparent`` (same trace id, ``tracestate`` unchanged).

The SDK is imported only when tracing is configured.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from permgate.config import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from permgate.observability.outcome import RequestOutcome

__all__ = ["RequestTrace", "Tracer", "trace_id_of"]

_HEX: Final = frozenset("0123456789abcdef")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` (version 00 layout; later versions
    may append fields), or None. Cheap: no SDK, no regular expression."""
    if traceparent is None or len(traceparent) < 55:
        return None
    value = traceparent.strip()
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if (
        value[2] != "-"
        or value[35] != "-"
        or value[52] != "-"
        or (len(value) > 55 and (version == "00" or value[55] != "-"))
        or version == "ff"
        or not _HEX.issuperset(version + trace_id + span_id + flags)
        or trace_id == _ZERO_TRACE
        or span_id == _ZERO_SPAN
    ):
        return None
    return trace_id


class Tracer:
    """Spans for sampled requests, exported over OTLP/HTTP. One per process; build it
    only when tracing is configured, and :meth:`close` it on the way out (the last
    batch is sent)."""

    def __init__(self, settings: TracingSettings, *, schedule_delay_ms: int = 1000) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            StatusCode,
            TraceFlags,
            set_span_in_context,
        )
        from opentelemetry.trace.span import TraceState

        self.ratio = settings.sample_ratio
        # Whether to sample is decided in start(); the SDK only follows the parent.
        self._provider: TracerProvider = TracerProvider(
            sampler=ParentBased(root=ALWAYS_ON),
            resource=Resource.create({"service.name": settings.service_name}),
        )
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces")
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)
        )
        self._tracer = self._provider.get_tracer("permgate")
        self._random = random.random
        # The API's names, bound once: the request path does no import lookups.
        self._kinds = (SpanKind.SERVER, SpanKind.INTERNAL, SpanKind.CLIENT)
        self._error = StatusCode.ERROR
        self._in_context = set_span_in_context
        self._remote_parent = NonRecordingSpan
        self._span_context = SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._trace_state = TraceState.from_header

    def start(
        self,
        headers: Mapping[str, str],
        *,
        method: str,
        path: str,
        scheme: str,
        host: str | None,
        client_ip: str | None,
    ) -> RequestTrace | None:
        """The request's trace when it is sampled, else None (and nothing made)."""
        traceparent = headers.get("traceparent")
        trace_id = trace_id_of(traceparent)
        parent = None
        if trace_id is not None:
            assert traceparent is not None
            value = traceparent.strip()
            if not int(value[53:55], 16) & 1:
                return None  # the caller did not sample it: neither do we
            state = headers.get("tracestate")
            remote = self._span_context(
                trace_id=int(trace_id, 16),
                span_id=int(value[36:52], 16),
                is_remote=True,
                trace_flags=self._sampled,
                trace_state=self._trace_state([state]) if state else None,
            )
            parent = self._in_context(self._remote_parent(remote))
        elif self._random() >= self.ratio:
            return None
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": scheme,
        }
        if host:
            name, sep, port = host.rpartition(":")
            if not sep or not port.isdigit() or (name.count(":") and not name.endswith("]")):
                name, port = host, ""  # no port, or a bare IPv6 address
            attributes["server.address"] = name.strip("[]")
            if port:
                attributes["server.port"] = int(port)
        if client_ip:
            attributes["client.address"] = client_ip
        if (agent := headers.get("User-Agent")) is not None:
            attributes["user_agent.original"] = agent
        span = self._tracer.start_span(
            method, context=parent, kind=self._kinds[0], attributes=attributes
        )
        return RequestTrace(self, span)

    def close(self) -> None:
        """Export what is queued and stop the exporter thread."""
        self._provider.shutdown()


class RequestTrace:
    """The spans of one sampled request."""

    __slots__ = ("_decided_ns", "_owner", "_started_ns", "_upstream", "server")

    def __init__(self, owner: Tracer, server: Span) -> None:
        self._owner = owner
        self.server = server
        self._started_ns = time.time_ns()
        self._decided_ns: int | None = None
        self._upstream: Span | None = None

    def decided(self) -> None:
        """The decision is made: the decision span ends here."""
        self._decided_ns = time.time_ns()

    def upstream_started(self, *, method: str, url: str) -> str:
        """Start the client span: the ``traceparent`` that makes it the upstream's
        parent (the caller replaces the client's with it; ``tracestate`` is carried
        unchanged)."""
        owner = self._owner
        if self._decided_ns is None:
            self._decided_ns = time.time_ns()
        span = owner._tracer.start_span(
            method,
            context=owner._in_context(self.server),
            kind=owner._kinds[2],
            attributes={"http.request.method": method, "url.full": url},
        )
        self._upstream = span
        ids = span.get_span_context()
        return f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01"

    def upstream_finished(self, status: int | None, error: str | None) -> None:
        span = self._upstream
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(self._owner._error, error)
        span.end()

    def finish(self, outcome: RequestOutcome) -> None:
        """End the decision and server spans with what happened."""
        owner = self._owner
        server = self.server
        decision = owner._tracer.start_span(
            "permgate.decision",
            context=owner._in_context(server),
            kind=owner._kinds[1],
            start_time=self._started_ns,
            attributes={
                "permgate.decision": outcome.decision,
                "permgate.reason": outcome.reason,
                "permgate.endpoint": outcome.endpoint,
            },
        )
        decision.end(end_time=self._decided_ns or time.time_ns())
        if self._upstream is not None and self._upstream.is_recording():
            self.upstream_finished(None, outcome.upstream_error)
        server.set_attribute("http.response.status_code", outcome.status)
        server.set_attribute("permgate.decision", outcome.decision)
        server.set_attribute("permgate.reason", outcome.reason)
        server.set_attribute("permgate.endpoint", outcome.endpoint)
        if outcome.status >= 500:
            server.set_attribute("error.type", str(outcome.status))
            server.set_status(owner._error)
        server.end()
