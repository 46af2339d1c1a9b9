"""Trace context: forwarded unchanged, ``trace_id`` in audit, OpenTelemetry spans to a
collector when (and only when) ``tracing`` is configured.

The collector is a real OTLP/HTTP endpoint on loopback that decodes what it gets with
the OpenTelemetry protobuf definitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from harness import Gateway, eventually, free_port, start_gateway
from permgate.observability.tracing import trace_id_of

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
PATH = "/policy/acme-prod/quotes/q1"


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, decoded."""

    url: str = ""
    spans: list[Any] = field(default_factory=list)
    posts: int = 0

    async def receive(self, request: web.Request) -> web.Response:
        self.posts += 1
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return web.Response(status=200, content_type="application/x-protobuf")


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}"
    yield found
    await runner.cleanup()


@contextlib.asynccontextmanager
async def traced_gateway(
    tmp_path: Path, collector: Collector, ratio: float = 1.0
) -> AsyncIterator[Gateway]:
    tracing = {"otlp_endpoint": collector.url, "sample_ratio": ratio, "service_name": "pg-test"}
    async with start_gateway(tmp_path, tracing=tracing) as gw:
        yield gw


async def call(gw: Gateway, **headers: str) -> int:
    headers["Authorization"] = f"Bearer {gw.tokens['alice']}"
    async with aiohttp.ClientSession() as session, session.get(gw.url + PATH, headers=headers) as r:
        await r.read()
        return r.status


def attributes(span: Any) -> dict[str, Any]:
    found = {}
    for kv in span.attributes:
        value = kv.value
        found[kv.key] = getattr(value, value.WhichOneof("value"))
    return found


async def decisions(gw: Gateway) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        events = [json.loads(line) for line in gw.audit_lines()]
        return [e for e in events if e["event"] == "decision"]

    found: list[dict[str, Any]] = await eventually(read, "decision audit events")
    return found


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (SAMPLED, TRACE_ID),
        (NOT_SAMPLED, TRACE_ID),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-later-fields", TRACE_ID),
        (None, None),
        ("", None),
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", None),
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),
        (f"00_{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID[:-1]}g-{PARENT_ID}-01", None),
    ],
    ids=[
        "sampled", "not-sampled", "future-version", "absent", "empty", "upper-case",
        "zero-trace", "zero-parent", "version-ff", "v00-with-more", "bad-separator", "not-hex",
    ],
)  # fmt: skip
def test_trace_id_of(header: str | None, expected: str | None) -> None:
    """Only a well-formed W3C traceparent yields its trace id."""
    assert trace_id_of(header) == expected


async def test_trace_headers_pass_unchanged_and_trace_id_is_audited_when_tracing_is_off(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the tracing key, traceparent and tracestate reach the upstream as sent,
    the decision event carries the trace id, and no span is sent anywhere, whatever
    the OTEL_* variables say."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    async with start_gateway(tmp_path) as gw:
        assert gw.runtime.tracer is None
        assert await call(gw, traceparent=SAMPLED, tracestate=STATE) == 200
        assert await call(gw) == 200
        seen = gw.upstream.seen[0]["headers"]
        assert (seen["traceparent"], seen["tracestate"]) == (SAMPLED, STATE)
        events = await eventually(
            lambda: len(gw.audit_lines()) >= 2 and gw.audit_lines(), "two events"
        )
        trace_ids = [json.loads(line).get("trace_id") for line in events]
        # An event is written once its request is done, which may be after the client
        # saw the answer: the two events can land in either order.
        assert sorted(trace_ids[-2:], key=str) == sorted([TRACE_ID, None], key=str)
    await asyncio.sleep(1.5)  # longer than the exporter's batch delay would be
    assert collector.posts == 0


async def test_spans_join_the_callers_trace(tmp_path: Path, collector: Collector) -> None:
    """With tracing on, the collector gets a server span (child of the caller's span),
    a decision span and an upstream client span in the caller's trace; the upstream
    gets the same trace id with permgate's client span as parent, and tracestate as
    sent."""
    async with traced_gateway(tmp_path, collector) as gw:
        assert await call(gw, traceparent=SAMPLED, tracestate=STATE) == 200
        seen = gw.upstream.seen[0]["headers"]
        await eventually(lambda: len(collector.spans) >= 3, "three spans at the collector")
    assert sorted(span.name for span in collector.spans) == ["GET", "GET", "permgate.decision"]
    spans = {span.name: span for span in collector.spans}
    by_kind = {span.kind: span for span in collector.spans}
    server, client = by_kind[2], by_kind[3]  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
    decision = spans["permgate.decision"]
    assert {span.trace_id.hex() for span in collector.spans} == {TRACE_ID}
    assert server.parent_span_id.hex() == PARENT_ID
    assert decision.parent_span_id == server.span_id
    assert client.parent_span_id == server.span_id
    assert seen["traceparent"] == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    assert seen["tracestate"] == STATE
    assert attributes(decision) == {
        "permgate.decision": "allow",
        "permgate.reason": "allowed",
        "permgate.endpoint": "quotes.get",
    }
    server_attributes = attributes(server)
    assert server_attributes["http.request.method"] == "GET"
    assert server_attributes["url.path"] == PATH
    assert server_attributes["http.response.status_code"] == 200
    assert attributes(client)["http.response.status_code"] == 200


async def test_a_new_trace_is_sampled_by_ratio(tmp_path: Path, collector: Collector) -> None:
    """A request without a traceparent starts a trace when the ratio says so: at 1.0
    always, and the upstream gets permgate's trace."""
    async with traced_gateway(tmp_path, collector) as gw:
        assert await call(gw) == 200
        await eventually(lambda: len(collector.spans) >= 3, "three spans")
        forwarded = gw.upstream.seen[0]["headers"]["traceparent"]
    assert trace_id_of(forwarded) == collector.spans[0].trace_id.hex()


@pytest.mark.parametrize(
    ("ratio", "headers"),
    [(1.0, {"traceparent": NOT_SAMPLED, "tracestate": STATE}), (0.0, {})],
    ids=["caller-said-not-sampled", "ratio-zero"],
)
async def test_unsampled_requests_send_nothing_and_pass_headers_unchanged(
    tmp_path: Path, collector: Collector, ratio: float, headers: dict[str, str]
) -> None:
    """A caller's "not sampled" is followed (parent-based), and a ratio of 0 starts no
    trace: nothing is exported and the trace headers reach the upstream as sent."""
    async with traced_gateway(tmp_path, collector, ratio) as gw:
        assert await call(gw, **headers) == 200
        seen = gw.upstream.seen[0]["headers"]
        for name, value in headers.items():
            assert seen[name] == value
        if not headers:
            assert "traceparent" not in seen
        await asyncio.sleep(1.5)
    assert collector.spans == []


async def test_a_denied_request_has_its_decision_in_the_span(
    tmp_path: Path, collector: Collector
) -> None:
    """A refusal is traced too: server and decision spans say deny and why; there is
    no upstream span."""
    async with traced_gateway(tmp_path, collector) as gw:
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.url + PATH, headers={"traceparent": SAMPLED}) as response,
        ):
            assert response.status == 401
        await eventually(lambda: len(collector.spans) >= 2, "two spans")
        events = await decisions(gw)
    assert events[-1]["trace_id"] == TRACE_ID
    assert len(collector.spans) == 2
    decision = next(s for s in collector.spans if s.name == "permgate.decision")
    assert attributes(decision)["permgate.decision"] == "deny"
    assert attributes(decision)["permgate.reason"] == "missing_credentials"
