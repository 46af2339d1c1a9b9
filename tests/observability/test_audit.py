"""Audit events: fields, redaction, the bounded queue, sinks, rotation."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import eventually
from permgate.config import AuditSettings
from permgate.core.model import Principal
from permgate.observability.audit import (
    AuditLog,
    AuditOverloaded,
    CaptureSink,
    DecisionRenderer,
    FileSink,
    StreamSink,
    decision_event,
    default_processors,
    redactor,
    render_event,
)
from permgate.observability.metrics import Metrics
from permgate.observability.outcome import RequestOutcome

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
FIELDS = {
    "ts", "event", "decision_id", "request_id", "decision", "cache_hit", "reason", "principal",
    "token_id", "tenant", "endpoint", "method", "path", "required", "missing", "client_ip",
    "status", "duration_ms", "map_sha256",
}  # fmt: skip
SECRET = "pgt_0123456789abcdef_" + "A" * 43
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
ALICE = Principal(id="alice", account="acme", kind="user")
ALICE_JSON = {"id": "alice", "kind": "user", "account": "acme"}


def outcome(**fields: Any) -> RequestOutcome:
    base: dict[str, Any] = {
        "request_id": "req-1",
        "decision_id": "dec-1",
        "method": "POST",
        "path": "/policy/acme-prod/quotes",
        "client_ip": "10.0.0.1",
        "started": 1_800_000_000.123456,
        "endpoint": "quotes.create",
        "principal": ALICE,
        "tenant": "acme-prod",
        "required": ("quotes.write",),
        "map_sha256": "f" * 64,
        "duration_s": 0.0042,
        "decision_s": 3e-6,
    }
    return RequestOutcome(**(base | fields))


def audit_settings(**fields: Any) -> AuditSettings:
    return AuditSettings(**({"queue_size": 100, "overflow": "block"} | fields))


async def capture_log(**fields: Any) -> tuple[AuditLog, CaptureSink, Metrics]:
    sink, metrics = CaptureSink(), Metrics()
    log = AuditLog(audit_settings(**fields), metrics=metrics, sink=sink)
    await log.start()
    return log, sink, metrics


class BlockingSink(CaptureSink):
    """A sink whose every write waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, lines: Sequence[bytes]) -> None:
        self.entered.set()
        if not self.gate.wait(timeout=30):
            raise OSError("test gate never opened")
        super().write(lines)


class FlakySink(CaptureSink):
    """A sink that fails its first ``failures`` writes, like a full disk that recovers."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def write(self, lines: Sequence[bytes]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().write(lines)


# --------------------------------------------------------------------------- fields


async def test_allowed_decision_event_has_every_field() -> None:
    """An allow is written with every decision field, ts in RFC 3339 UTC, principal as an object."""
    log, sink, _ = await capture_log()
    await log.reserve()
    log.emit_decision(outcome(decision="allow", reason="allowed", status=201))
    await log.close()
    (event,) = sink.events
    assert event.keys() >= FIELDS
    assert TS.fullmatch(event["ts"])
    assert event["ts"] == "2027-01-15T08:00:00.123456Z"
    assert event["principal"] == {"id": "alice", "kind": "user", "account": "acme"}
    assert (event["event"], event["decision"], event["reason"]) == ("decision", "allow", "allowed")
    assert event["duration_ms"] == 4.2


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"reason": "missing_permission", "missing": ("quotes.write",), "status": 403},
            {"decision": "deny", "missing": ["quotes.write"], "status": 403},
        ),
        (
            {"reason": "tenant_out_of_scope", "detail": "unknown_tenant", "status": 403},
            {"reason": "tenant_out_of_scope", "detail": "unknown_tenant"},
        ),
        (
            {"reason": "unmapped_route", "endpoint": "unmapped", "principal": None, "status": 403},
            {"endpoint": "unmapped", "principal": None},
        ),
        (
            {"reason": "invalid_token", "principal": None, "decision_s": None, "status": 401},
            {"reason": "invalid_token", "status": 401, "cache_hit": False},
        ),
        (
            {"reason": "ambiguous_path", "endpoint": "unrouted", "principal": None, "status": 400},
            {"reason": "ambiguous_path", "endpoint": "unrouted"},
        ),
        (
            {"decision": "shadow_deny", "reason": "missing_permission", "status": 200},
            {"decision": "shadow_deny", "status": 200},
        ),
        (
            {"decision": "allow", "reason": "allowed", "token_id": "0123456789abcdef"},
            {"token_id": "0123456789abcdef", "principal": ALICE_JSON},
        ),
        (
            {"decision": "allow", "reason": "allowed", "upstream_error": "timeout", "status": 504},
            {"upstream_error": "timeout", "status": 504},
        ),
    ],
    ids=[
        "missing-permission",
        "tenant-unknown",
        "unmapped",
        "unauthenticated",
        "hygiene",
        "shadow-deny",
        "token-use",
        "upstream-timeout",
    ],
)
def test_decision_event_fields_per_outcome(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Each kind of outcome becomes an event whose fields say what happened."""
    line = render_event(decision_event(outcome(**fields)), default_processors())
    event = orjson.loads(line)
    assert event.keys() >= FIELDS
    assert {key: event[key] for key in expected} == expected


async def test_admin_change_keeps_actor_before_after_and_drops_secret_hash() -> None:
    """An admin change carries who, what, before and after; a token's hash never appears."""
    log, sink, _ = await capture_log()
    after = {"id": "0123456789abcdef", "owner": "alice", "secret_hash": "9f86d081884c7d65"}
    await log.emit(
        {"event": "admin.change", "actor": "root", "action": "tokens.create", "before": None,
         "after": after, "secret": SECRET}
    )  # fmt: skip
    await log.close()
    (event,) = sink.events
    assert (event["actor"], event["action"], event["before"]) == ("root", "tokens.create", None)
    assert event["after"] == {"id": "0123456789abcdef", "owner": "alice"}
    assert "secret" not in event
    assert TS.fullmatch(event["ts"])


async def test_unknown_event_type_is_refused() -> None:
    """Only the four event types exist; a typo is a programming error, raised at once."""
    log, _, _ = await capture_log()
    with pytest.raises(ValueError, match=r"admin\.change"):
        await log.emit({"event": "admin.changed"})
    await log.close()


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"authorization": f"Bearer {SECRET}", "a": 1}, {"a": 1}),
        ({"Authorization": "x", "Token": "y", "PASSWORD": "z", "credential": "w"}, {}),
        ({"client_secret": "s", "access_token": "t", "x-api-key": "k", "cookie": "c"}, {}),
        ({"token_id": "0123456789abcdef"}, {"token_id": "0123456789abcdef"}),
        ({"detail": f"got {SECRET} here"}, {"detail": "got [REDACTED] here"}),
        ({"detail": f"jwt={JWT};"}, {"detail": "jwt=[REDACTED];"}),
        ({"detail": "header was bearer abc.def-ghi"}, {"detail": "header was [REDACTED]"}),
        ({"nested": [{"password": "p", "ok": SECRET}]}, {"nested": [{"ok": "[REDACTED]"}]}),
        ({SECRET: 1}, {"[REDACTED]": 1}),
        ({"path": "/policy/acme/quotes"}, {"path": "/policy/acme/quotes"}),
    ],
    ids=[
        "authorization-key",
        "key-case",
        "key-variants",
        "token-id-kept",
        "token-secret-in-text",
        "jwt-in-text",
        "bearer-in-text",
        "nested",
        "secret-as-key",
        "ordinary-kept",
    ],
)
def test_redactor_removes_credentials(event: dict[str, Any], expected: dict[str, Any]) -> None:
    """Credential keys are dropped and credential-shaped strings scrubbed, at any depth."""
    assert redactor()(event) == expected


def test_redactor_follows_a_custom_token_prefix() -> None:
    """With auth.token_prefix changed, secrets with that prefix are the ones scrubbed."""
    assert redactor("acme_")({"d": "x acme_0123456789abcdef_Zz"}) == {"d": "x [REDACTED]"}


B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
TOKEN_SECRETS = st.builds(
    lambda tid, body: f"pgt_{tid}_{body}",
    st.text(alphabet="0123456789abcdef", min_size=16, max_size=16),
    st.text(alphabet=B64_ALPHABET, min_size=43, max_size=43),
)
JWTS = st.builds(
    lambda h, p, s: f"eyJ{h}.eyJ{p}.{s}",
    st.text(alphabet=B64_ALPHABET, min_size=8, max_size=40),
    st.text(alphabet=B64_ALPHABET, min_size=8, max_size=80),
    st.text(alphabet=B64_ALPHABET, min_size=8, max_size=40),
)
OPAQUE = st.text(alphabet=B64_ALPHABET, min_size=24, max_size=40).map(lambda s: "zz" + s)
SENSITIVE_KEYS = st.sampled_from(
    ["authorization", "Authorization", "token", "secret", "password", "credential",
     "client_secret", "access_token", "X-Api-Key", "refresh_token", "credentials"]
)  # fmt: skip
NOISE = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)


@st.composite
def events_with_secrets(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    """An event dict with credentials hidden at random places, and the credentials."""
    shaped = draw(st.lists(TOKEN_SECRETS | JWTS, min_size=1, max_size=3))
    opaque = draw(st.lists(OPAQUE, min_size=1, max_size=2))
    embedded = st.builds(lambda a, s, b: a + s + b, NOISE, st.sampled_from(shaped), NOISE)
    bearer = st.builds(lambda s: f"Bearer {s}", st.sampled_from(opaque))
    leaves = NOISE | embedded | bearer | st.integers() | st.none() | st.booleans()
    hidden = st.dictionaries(SENSITIVE_KEYS, st.sampled_from(opaque) | embedded, min_size=1)
    tree = st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(NOISE | embedded, children, max_size=3)
            | st.builds(lambda d, h: d | h, st.dictionaries(NOISE, children, max_size=3), hidden)
        ),
        max_leaves=12,
    )
    event = draw(st.dictionaries(st.sampled_from(["path", "detail", "after", "x"]), tree))
    event |= draw(hidden)
    event["event"] = "admin.change"
    return event, shaped + opaque


@settings(max_examples=150, deadline=None)
@given(events_with_secrets())
def test_no_credential_survives_the_chain(case: tuple[dict[str, Any], list[str]]) -> None:
    """Whatever the event holds and wherever, no token secret, JWT or bearer value is written."""
    event, credentials = case
    line = render_event(event, default_processors()).decode()
    for credential in credentials:
        assert credential not in line


async def test_audit_log_applies_redaction() -> None:
    """Events go through the chain in the log itself, not only when rendered by hand."""
    log, sink, _ = await capture_log()
    await log.reserve()
    log.emit_decision(outcome(path=f"/x/{SECRET}", detail=f"Bearer {JWT}"))
    await log.close()
    text = b"".join(sink.lines).decode()
    assert SECRET not in text
    assert JWT not in text


# --------------------------------------------------------------------------- the queue


async def test_block_makes_producers_wait_and_loses_nothing() -> None:
    """With a stuck sink and queue_size 3 the 4th request waits, then every event is written."""
    sink, metrics = BlockingSink(), Metrics()
    log = AuditLog(audit_settings(queue_size=3), metrics=metrics, sink=sink)
    await log.start()
    try:
        for n in range(3):
            await log.reserve()
            log.emit_decision(outcome(request_id=f"r{n}"))
        await asyncio.to_thread(sink.entered.wait, 5)

        async def late_request() -> None:
            await log.reserve()
            log.emit_decision(outcome(request_id="r3"))

        late = asyncio.create_task(late_request())
        await asyncio.sleep(0.1)
        assert not late.done()
        assert log.queued == 3
    finally:
        sink.gate.set()
    await asyncio.wait_for(late, 5)
    await log.close()
    assert [e["request_id"] for e in sink.events] == ["r0", "r1", "r2", "r3"]
    assert metrics.registry.get_sample_value("permgate_audit_events_dropped_total") == 0


async def test_reject_refuses_the_fourth_reservation_with_503() -> None:
    """With overflow reject and queue_size 3, the 4th reserve raises audit_overloaded (503)."""
    sink = BlockingSink()
    log = AuditLog(audit_settings(queue_size=3, overflow="reject"), metrics=Metrics(), sink=sink)
    await log.start()
    try:
        for _ in range(3):
            await log.reserve()
        with pytest.raises(AuditOverloaded) as raised:
            await log.reserve()
        assert (raised.value.status_code, raised.value.error, raised.value.reason) == (
            503,
            "unavailable",
            "audit_overloaded",
        )
        for n in range(3):
            log.emit_decision(outcome(request_id=f"r{n}"))
    finally:
        sink.gate.set()
    await log.close()
    assert len(sink.events) == 3


async def test_slots_free_up_once_events_are_written() -> None:
    """After the sink catches up, reject mode accepts requests again."""
    log, sink, _ = await capture_log(queue_size=2, overflow="reject")
    for _ in range(10):
        await log.reserve()
        log.emit_decision(outcome())
        await asyncio.sleep(0.01)
    await log.close()
    assert len(sink.events) == 10


async def test_close_drains_every_queued_event() -> None:
    """close() returns only when every queued event is on the sink (SIGTERM)."""
    sink, metrics = BlockingSink(), Metrics()
    log = AuditLog(audit_settings(queue_size=1000), metrics=metrics, sink=sink)
    await log.start()
    for n in range(500):
        await log.reserve()
        log.emit_decision(outcome(request_id=f"r{n}"))
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    sink.gate.set()
    await asyncio.wait_for(closing, 10)
    assert [e["request_id"] for e in sink.events] == [f"r{n}" for n in range(500)]
    assert sink.closed
    written = metrics.registry.get_sample_value(
        "permgate_audit_events_total", {"event": "decision"}
    )
    assert written == 500


async def test_close_waits_for_requests_still_holding_a_slot() -> None:
    """A request that reserved before shutdown still gets its event written."""
    log, sink, _ = await capture_log()
    await log.reserve()
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    log.emit_decision(outcome(request_id="in-flight"))
    await asyncio.wait_for(closing, 5)
    assert [e["request_id"] for e in sink.events] == ["in-flight"]


async def test_close_under_load_writes_every_admitted_request() -> None:
    """Shutdown mid-traffic: every request that got a slot is written; the rest were refused."""
    sink = FlakySink(failures=1)
    log = AuditLog(audit_settings(queue_size=50), metrics=Metrics(), sink=sink)
    await log.start()
    admitted: list[str] = []

    async def request(n: int) -> None:
        try:
            await log.reserve()
        except AuditOverloaded:
            return
        admitted.append(f"r{n}")
        await asyncio.sleep(0.001 * (n % 7))  # the upstream takes a while
        log.emit_decision(outcome(request_id=f"r{n}"))

    tasks = [asyncio.create_task(request(n)) for n in range(400)]
    await asyncio.sleep(0.005)
    await asyncio.wait_for(log.close(), 10)
    await asyncio.gather(*tasks)
    assert admitted
    assert sorted(e["request_id"] for e in sink.events) == sorted(admitted)


async def test_reserve_is_refused_while_closing() -> None:
    """New requests after shutdown began are refused instead of queued behind it."""
    log, _, _ = await capture_log()
    await log.close()
    with pytest.raises(AuditOverloaded):
        await log.reserve()


async def test_cancelled_waiter_gives_its_place_back() -> None:
    """A request cancelled while waiting for a slot takes no slot with it."""
    sink = BlockingSink()
    log = AuditLog(audit_settings(queue_size=1), metrics=Metrics(), sink=sink)
    await log.start()
    await log.reserve()
    waiter = asyncio.create_task(log.reserve())
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    log.emit_decision(outcome())
    sink.gate.set()
    await log.close()
    assert log.queued == 0
    assert len(sink.events) == 1


async def test_try_reserve_takes_a_free_slot_and_counts_it() -> None:
    """The synchronous admission takes a slot like reserve(), and its event is written."""
    log, sink, _ = await capture_log(queue_size=2)
    assert log.try_reserve()
    assert log.queued == 1
    log.emit_decision(outcome(request_id="fast"))
    await log.close()
    assert log.queued == 0
    assert [e["request_id"] for e in sink.events] == ["fast"]


async def test_try_reserve_is_false_when_the_queue_is_full() -> None:
    """No free slot: False, nothing taken (the caller awaits reserve() instead)."""
    sink = BlockingSink()
    log = AuditLog(audit_settings(queue_size=2), metrics=Metrics(), sink=sink)
    await log.start()
    try:
        assert log.try_reserve()
        await log.reserve()
        assert not log.try_reserve()
        assert log.queued == 2
        for n in range(2):
            log.emit_decision(outcome(request_id=f"r{n}"))
    finally:
        sink.gate.set()
    await log.close()
    assert len(sink.events) == 2


async def test_try_reserve_is_false_while_a_request_waits() -> None:
    """A request waiting for a slot keeps its turn: a slot freed meanwhile is not taken
    past it (the moment between the writer's write and the loop handing it over)."""
    log, sink, _ = await capture_log(queue_size=2)
    waiter = asyncio.get_running_loop().create_future()
    log._waiters.append(waiter)  # waiting, with a slot already free again
    assert not log.try_reserve()
    assert log.queued == 0
    log._release_waiters()  # the loop hands the free slot to the waiting request
    assert waiter.done() and log.queued == 1
    assert log.try_reserve()  # nobody waits any more
    log.emit_decision(outcome(request_id="waited"))
    log.emit_decision(outcome(request_id="next"))
    await log.close()
    assert [e["request_id"] for e in sink.events] == ["waited", "next"]


async def test_try_reserve_is_false_while_closing() -> None:
    """Shutting down: False even with free slots (reserve() then refuses with 503)."""
    log, _, _ = await capture_log()
    await log.close()
    assert not log.try_reserve()
    assert log.queued == 0
    with pytest.raises(AuditOverloaded):
        await log.reserve()


async def test_failing_sink_is_retried_until_it_recovers() -> None:
    """A sink error (disk full) delays events but loses none."""
    sink, metrics = FlakySink(failures=2), Metrics()
    log = AuditLog(audit_settings(), metrics=metrics, sink=sink)
    await log.start()
    for n in range(5):
        await log.reserve()
        log.emit_decision(outcome(request_id=f"r{n}"))
    await asyncio.wait_for(log.close(), 10)
    assert [e["request_id"] for e in sink.events] == [f"r{n}" for n in range(5)]
    assert metrics.registry.get_sample_value("permgate_audit_events_dropped_total") == 0


async def test_close_deadline_counts_what_a_dead_sink_kept() -> None:
    """If the sink never recovers, close(timeout) returns and the loss is counted, not silent."""
    sink, metrics = BlockingSink(), Metrics()
    log = AuditLog(audit_settings(), metrics=metrics, sink=sink)
    await log.start()
    for _ in range(3):
        await log.reserve()
        log.emit_decision(outcome())
    try:
        await log.close(timeout=0.2)
    finally:
        sink.gate.set()
    assert metrics.registry.get_sample_value("permgate_audit_events_dropped_total") == 3


async def test_events_written_are_counted_by_type() -> None:
    """permgate_audit_events_total counts what reached the sink, per event type."""
    log, _, metrics = await capture_log()
    await log.reserve()
    log.emit_decision(outcome())
    await log.emit({"event": "enforcement.change", "tenant": "acme-prod"})
    log.emit_nowait({"event": "map.reload", "result": "ok"})
    await log.close()
    for event in ("decision", "enforcement.change", "map.reload"):
        sample = metrics.registry.get_sample_value("permgate_audit_events_total", {"event": event})
        assert sample == 1


# --------------------------------------------------------------------------- sinks


@pytest.mark.parametrize("stream", [io.StringIO(), io.BytesIO()], ids=["text", "binary"])
async def test_stream_sink_writes_one_json_object_per_line(stream: io.IOBase) -> None:
    """The stdout sink (or stderr, for CLI commands) writes newline-delimited JSON."""
    log = AuditLog(audit_settings(), metrics=Metrics(), sink=StreamSink(stream))  # type: ignore[arg-type]
    await log.start()
    for n in range(3):
        await log.reserve()
        log.emit_decision(outcome(request_id=f"r{n}"))
    await log.close()
    raw = stream.getvalue()  # type: ignore[attr-defined]
    text = raw.decode() if isinstance(raw, bytes) else raw
    lines = text.splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == ["r0", "r1", "r2"]


async def test_stdout_sink_defaults_to_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """sink: stdout writes to the process's standard output."""
    log = AuditLog(audit_settings(sink="stdout"), metrics=Metrics())
    await log.start()
    await log.emit({"event": "enforcement.change", "tenant": "acme-prod"})
    await log.close()
    assert orjson.loads(capsys.readouterr().out)["tenant"] == "acme-prod"


def read_rotated(path: Path) -> list[bytes]:
    """Every line of path.N … path.1, path: oldest first."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: int(p.suffix[1:]))
    files = [*reversed(rotated), path]
    return [line for f in files for line in f.read_bytes().splitlines(keepends=True)]


async def test_rotation_keeps_every_line_exactly_once(tmp_path: Path) -> None:
    """Across path, path.1 … path.N every line is present once, whole, and in order."""
    path = tmp_path / "audit.jsonl"
    settings = audit_settings(sink=f"file:{path}", file_max_bytes=600, file_backups=100)
    log = AuditLog(settings, metrics=Metrics())
    await log.start()
    for n in range(200):
        await log.emit({"event": "enforcement.change", "seq": n, "pad": "x" * (n % 37)})
    await log.close()
    files = list(tmp_path.iterdir())
    assert len(files) > 10
    assert all(f.stat().st_size <= 600 for f in files)
    lines = read_rotated(path)
    assert all(line.endswith(b"\n") for line in lines)
    assert [orjson.loads(line)["seq"] for line in lines] == list(range(200))


def test_rotation_retains_only_the_configured_backups(tmp_path: Path) -> None:
    """With file_backups N there are at most N rotated files; the newest lines survive."""
    path = tmp_path / "audit.jsonl"
    sink = FileSink(str(path), max_bytes=100, backups=2)
    sink.write([b'{"n":%d,"pad":"%s"}\n' % (n, b"y" * 60) for n in range(10)])
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "audit.jsonl.1",
        "audit.jsonl.2",
    ]
    assert [orjson.loads(line)["n"] for line in read_rotated(path)] == [7, 8, 9]


def test_a_line_longer_than_the_limit_gets_its_own_file(tmp_path: Path) -> None:
    """An oversized line is written whole, never split across files."""
    path = tmp_path / "audit.jsonl"
    sink = FileSink(str(path), max_bytes=50, backups=5)
    big = b'{"big":"' + b"z" * 200 + b'"}\n'
    sink.write([b'{"a":1}\n', big, b'{"b":2}\n'])
    sink.close()
    assert read_rotated(path) == [b'{"a":1}\n', big, b'{"b":2}\n']


def test_file_sink_appends_and_counts_what_is_already_there(tmp_path: Path) -> None:
    """A restart appends to the existing file and rotates by its real size."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"old":1}\n' * 9)  # 90 bytes
    sink = FileSink(str(path), max_bytes=100, backups=3)
    sink.write([b'{"new":1}\n', b'{"new":2}\n'])
    sink.close()
    assert (tmp_path / "audit.jsonl.1").read_bytes().count(b"\n") == 10
    assert path.read_bytes() == b'{"new":2}\n'


async def test_unwritable_file_sink_fails_at_start(tmp_path: Path) -> None:
    """A sink path that cannot be opened is reported at startup, not at the first request."""
    settings = audit_settings(sink=f"file:{tmp_path}/missing-dir/audit.jsonl")
    log = AuditLog(settings, metrics=Metrics())
    with pytest.raises(FileNotFoundError):
        await log.start()


_SECRET = "pgt_0123456789abcdef_" + "S" * 43
_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"path": f"/policy/acme-prod/quotes/{_SECRET}", "request_id": _SECRET[:60]},
        {"tenant": _JWT, "detail": f"Bearer {_SECRET}", "method": "GET"},
        {"started": 1700000000.9999996},
    ],
    ids=["plain", "secret-in-path-and-request-id", "jwt-and-bearer", "rounding"],
)
def test_fast_decision_line_equals_the_generic_chain(fields: dict[str, Any]) -> None:
    """The on-loop renderer writes exactly what the processor chain would."""
    sample = outcome(**fields)
    fast = DecisionRenderer()(sample)
    generic = render_event(decision_event(sample), default_processors())
    assert orjson.loads(fast) == orjson.loads(generic)
    assert _SECRET not in fast.decode() and _JWT not in fast.decode()


def test_one_renderer_keeps_every_line_equal_to_the_generic_chain() -> None:
    """The fields kept rendered between requests (caller, route, verdict) never leak
    into a request whose fields differ, and a secret in them is scrubbed every time."""
    render = DecisionRenderer()
    samples = [
        outcome(request_id=f"r{n}", started=1_800_000_000.5 + n, duration_s=n / 7, **fields)
        for n in range(3)
        for fields in (
            {},
            {"tenant": _JWT, "detail": f"Bearer {_SECRET}"},
            {"principal": None, "door": None, "reason": "invalid_token"},
            {"decision": "allow", "cache_hit": True, "required": ("a.b", "c.d"), "missing": ()},
            {"upstream_error": "connect", "status": 502, "trace_id": "ab" * 16},
            {"path": f"/x/{_SECRET}", "client_ip": None},
        )
    ]
    for sample in samples:
        fast = render(sample)
        assert orjson.loads(fast) == orjson.loads(
            render_event(decision_event(sample), default_processors())
        )
        assert _SECRET not in fast.decode() and _JWT not in fast.decode()


def test_renderer_cache_stays_bounded() -> None:
    """Free text in the kept fields (a refusal's detail) cannot grow the cache forever."""
    render = DecisionRenderer()
    for n in range(3000):
        line = orjson.loads(render(outcome(detail=f"unknown key id k{n}")))
        assert line["detail"] == f"unknown key id k{n}"
    assert 0 < len(render._fixed) <= 1024


# --------------------------------------------------------------------------- the writer thread


async def test_burst_of_concurrent_requests_loses_no_event(tmp_path: Path) -> None:
    """Thousands of concurrent requests through a small blocking queue into a file:
    every event is in the file exactly once and nothing is counted as dropped."""
    metrics = Metrics()
    sink = FileSink(str(tmp_path / "audit.log"), max_bytes=1 << 30, backups=1)
    log = AuditLog(audit_settings(queue_size=64), metrics=metrics, sink=sink)
    await log.start()

    async def request(n: int) -> None:
        await log.reserve()
        await asyncio.sleep(0)  # the request's own work
        log.emit_decision(outcome(request_id=f"r{n}"))

    await asyncio.gather(*(request(n) for n in range(3000)))
    await log.close()
    lines = (tmp_path / "audit.log").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["request_id"] for line in lines) == sorted(
        f"r{n}" for n in range(3000)
    )
    assert metrics.registry.get_sample_value("permgate_audit_events_dropped_total") == 0
    written = metrics.registry.get_sample_value(
        "permgate_audit_events_total", {"event": "decision"}
    )
    assert written == 3000


async def test_close_writes_events_still_gathering_at_once() -> None:
    """Events the writer is letting gather into a batch are written by close() right
    away: shutdown neither loses them nor waits out the linger."""
    sink = CaptureSink()
    log = AuditLog(audit_settings(queue_size=1000), metrics=Metrics(), sink=sink, linger=60.0)
    await log.start()
    for n in range(10):
        await log.reserve()
        log.emit_decision(outcome(request_id=f"r{n}"))
    await asyncio.sleep(0.05)  # the writer is lingering on them now
    await asyncio.wait_for(log.close(), 10)
    assert [e["request_id"] for e in sink.events] == [f"r{n}" for n in range(10)]
    assert sink.closed


async def test_writer_does_not_linger_when_the_queue_is_half_full() -> None:
    """With half the bound in use the writer writes at once instead of gathering: the
    bound, not the batch size, is then what matters."""
    sink = CaptureSink()
    log = AuditLog(audit_settings(queue_size=4), metrics=Metrics(), sink=sink, linger=60.0)
    await log.start()
    for n in range(2):
        await log.reserve()
        log.emit_decision(outcome(request_id=f"r{n}"))
    await eventually(lambda: len(sink.lines) == 2, "the two events written without lingering")
    await log.close()


async def test_request_waiting_for_a_slot_is_admitted_when_the_thread_writes() -> None:
    """The writer thread wakes a request waiting for a slot as soon as it wrote."""
    sink = BlockingSink()
    log = AuditLog(audit_settings(queue_size=1), metrics=Metrics(), sink=sink, linger=60.0)
    await log.start()
    await log.reserve()
    log.emit_decision(outcome(request_id="first"))
    waiting = asyncio.create_task(log.reserve())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    sink.gate.set()
    await asyncio.wait_for(waiting, 5)
    log.emit_decision(outcome(request_id="second"))
    await log.close()
    assert [e["request_id"] for e in sink.events] == ["first", "second"]


async def test_close_waits_for_a_request_admitted_while_closing() -> None:
    """A request that was waiting for a slot when shutdown began gets one as the sink
    catches up, and its event is written before close() returns."""
    sink = BlockingSink()
    log = AuditLog(audit_settings(queue_size=1), metrics=Metrics(), sink=sink)
    await log.start()
    await log.reserve()
    log.emit_decision(outcome(request_id="first"))

    async def late() -> None:
        await log.reserve()
        await asyncio.sleep(0.05)
        log.emit_decision(outcome(request_id="late"))

    late_request = asyncio.create_task(late())
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(log.close())
    await asyncio.sleep(0.05)
    sink.gate.set()
    await asyncio.wait_for(asyncio.gather(late_request, closing), 10)
    assert [e["request_id"] for e in sink.events] == ["first", "late"]
