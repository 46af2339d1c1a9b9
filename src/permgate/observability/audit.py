"""Audit events: built by a processor chain, queued, written off the loop.

Shape of the flow::

    pipeline ── reserve() ──► [bounded queue] ── writer thread ──► sink.write(batch)
             ── emit_decision(outcome) ─┘   (a deque)   (batches gathered for 50 ms;
                  decision: one orjson line,             other events: processors →
                  rendered on the loop                   orjson line)

Nothing is ever silently dropped. The queue is bounded by ``audit.queue_size``,
counting every event not yet written (reserved, queued, or being written). The
pipeline reserves a slot when a request *starts*, so a full queue is felt before
anything is forwarded: with ``overflow: block`` the request waits (backpressure),
with ``overflow: reject`` it is refused with :class:`AuditOverloaded` (503). Once a
slot is held, :meth:`AuditLog.emit_decision` never blocks and never drops. A sink
that fails is retried (at-least-once: a batch that half-reached the disk may be
written twice); meanwhile the queue fills and the overflow policy applies.
``permgate_audit_events_dropped_total`` therefore stays 0: the only ways to lose
an event are a crash of the process, or :meth:`AuditLog.close` given a deadline that
a broken sink makes it miss, and the latter is counted and logged.

Requests refused with ``audit_overloaded`` hold no slot and get no audit event
(they are counted in ``permgate_decisions_total``); nothing was forwarded for them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import logging
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, cast

import orjson

from permgate.config import AuditSettings
from permgate.core.errors import PermgateError
from permgate.core.reasons import Refusal
from permgate.observability.outcome import RequestOutcome

if TYPE_CHECKING:
    from permgate.observability.metrics import Metrics

__all__ = [
    "AUDIT_EVENTS",
    "LINGER_SECONDS",
    "AuditLog",
    "AuditOverloaded",
    "AuditSink",
    "CaptureSink",
    "DecisionRenderer",
    "FileSink",
    "Processor",
    "StreamSink",
    "add_timestamp",
    "decision_event",
    "default_processors",
    "open_sink",
    "redactor",
    "render_event",
    "rfc3339",
    "scrubber",
]

log = logging.getLogger("permgate.audit")

Processor = Callable[[dict[str, Any]], dict[str, Any]]
"""One step of the audit chain (structlog's processor, minus logger and method name):
takes the event dict and returns the dict to pass on (the same one or a new one)."""

AUDIT_EVENTS: Final = (
    "decision",
    "admin.change",
    "map.reload",
    "enforcement.change",
    "auth.login",
)
REDACTED: Final = "[REDACTED]"
# The writer's cost is per batch (its GIL handoffs against a busy loop), not per event:
# Each batch costs the loop and the writer GIL handoffs (a few hundred µs of CPU between
# them under load), whatever its size: 50 ms instead of 5 ms measured several µs less CPU
# per request (bench/README.md). Envoy flushes its access logs every second.
LINGER_SECONDS: Final = 0.05
_RETRY_FIRST_SECONDS: Final = 0.1
_RETRY_MAX_SECONDS: Final = 5.0


class AuditOverloaded(PermgateError):
    """The audit queue is full and ``overflow`` is ``reject``: answer 503."""

    status_code = 503
    error = "unavailable"
    reason = Refusal.AUDIT_OVERLOADED


# --------------------------------------------------------------------------- processors


def rfc3339(timestamp: float) -> str:
    """``time.time()`` as RFC 3339 UTC with microseconds: ``2026-11-22T13:05:01.123456Z``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def add_timestamp(event: dict[str, Any]) -> dict[str, Any]:
    """Give every event a ``ts``; a float ``ts`` (epoch seconds) becomes RFC 3339."""
    ts = event.get("ts")
    if ts is None:
        event["ts"] = rfc3339(time.time())
    elif isinstance(ts, int | float) and not isinstance(ts, bool):
        event["ts"] = rfc3339(float(ts))
    return event


# Key names that carry credentials, compared lower-case with "-" read as "_".
_SENSITIVE_PARTS: Final = frozenset(
    {"authorization", "secret", "secrets", "password", "passwd", "credential", "credentials",
     "cookie", "apikey"}
)  # fmt: skip
_SENSITIVE_NAMES: Final = frozenset({"jwt", "set_cookie", "private_key"})
_SCALARS: Final = frozenset({int, float, bool, type(None)})
_KEY_CACHE_SIZE: Final = 4096
_UNSEEN: Final = object()


def _sensitive_key(key: str) -> bool:
    name = key.lower().replace("-", "_")
    # token, access_token, id_token…, x_api_key
    if name in _SENSITIVE_NAMES or name.endswith(("token", "api_key")):
        return True
    return not _SENSITIVE_PARTS.isdisjoint(name.split("_"))


def scrubber(token_prefix: str = "pgt_") -> Callable[[str], str]:
    """Replace anything shaped like a credential in a string: a permgate token secret
    (``<prefix>…``), a JWT (``eyJ….….…``) or a ``Bearer …`` value."""
    pattern = re.compile(
        rf"{re.escape(token_prefix)}[A-Za-z0-9_-]+"
        r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
        r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
    )

    def scrub(text: str) -> str:
        return pattern.sub(REDACTED, text) if pattern.search(text) else text

    return scrub


def redactor(token_prefix: str = "pgt_") -> Processor:
    """A processor that guarantees no credential reaches the sink.

    Drops every key (at any depth) named like a credential (``authorization``,
    ``secret``, ``token``, ``password``, ``credential``, ``cookie``…; ``token_id`` is
    kept: a token is named by its id) and scrubs, in every string and key, anything
    shaped like a permgate token secret (``<prefix>…``), a JWT (``eyJ….….…``) or a
    ``Bearer …`` value.
    """
    scrub = scrubber(token_prefix)
    # Key verdicts are cached: events reuse a small set of keys. None means "drop".
    key_verdicts: dict[str, str | None] = {}

    def key_verdict(key: str) -> str | None:
        verdict = key_verdicts.get(key, _UNSEEN)
        if verdict is _UNSEEN:
            verdict = None if _sensitive_key(key) else scrub(key)
            if len(key_verdicts) < _KEY_CACHE_SIZE:
                key_verdicts[key] = verdict
        return verdict  # type: ignore[return-value]

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is str:
            return scrub(value)
        if kind in _SCALARS:
            return value
        if kind is dict or isinstance(value, Mapping):
            result = {}
            for key, item in value.items():
                if isinstance(key, str):
                    key = key_verdict(key)
                    if key is None:
                        continue
                result[key] = walk(item)
            return result
        if isinstance(value, list | tuple | set | frozenset):
            return [walk(v) for v in value]
        if isinstance(value, str):  # a str subclass (e.g. a StrEnum member)
            return scrub(value)
        return value

    def redact_credentials(event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = walk(event)
        return result

    return redact_credentials


def default_processors(token_prefix: str = "pgt_") -> tuple[Processor, ...]:
    """The chain every event goes through, in order. Redaction is always last."""
    return (add_timestamp, redactor(token_prefix))


def render_event(event: dict[str, Any], processors: Sequence[Processor]) -> bytes:
    """Run the chain and serialize to one JSON line (newline included)."""
    for processor in processors:
        event = processor(event)
    try:
        return orjson.dumps(
            event, default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        )
    except TypeError:  # e.g. an integer beyond 64 bits: rare, so the slow path is fine
        return json.dumps(event, default=str, ensure_ascii=False).encode("utf-8") + b"\n"


def decision_event(outcome: RequestOutcome) -> dict[str, Any]:
    """The ``decision`` event of one request, with every field an audit consumer
    relies on."""
    principal = outcome.principal
    return {
        "ts": rfc3339(outcome.started),
        "event": "decision",
        "door": outcome.door,
        "decision_id": outcome.decision_id,
        "request_id": outcome.request_id,
        "trace_id": outcome.trace_id,
        "decision": outcome.decision,
        "cache_hit": outcome.cache_hit,
        "reason": outcome.reason,
        "detail": outcome.detail or None,
        "principal": (
            None
            if principal is None
            else {"id": principal.id, "kind": principal.kind, "account": principal.account}
        ),
        "token_id": outcome.token_id,
        "tenant": outcome.tenant,
        "endpoint": outcome.endpoint,
        "method": outcome.method,
        "path": outcome.path,
        "required": list(outcome.required),
        "missing": list(outcome.missing),
        "client_ip": outcome.client_ip,
        "status": outcome.status,
        "duration_ms": round(outcome.duration_s * 1000.0, 3),
        "upstream_error": outcome.upstream_error,
        "map_sha256": outcome.map_sha256,
    }


# Most distinct caller/route/verdict combinations whose fixed fields are kept rendered.
_FIXED_CACHE_SIZE: Final = 1024
_FRAGMENT = orjson.Fragment


class DecisionRenderer:
    """The ``decision`` event rendered on the event loop, straight to a JSON line.

    The generic chain (a walk over every key and value) cost about 50 µs a request
    under load; a decision event has a fixed shape whose only client-controlled text
    is the method, path, request id, tenant and detail, so exactly those are
    scrubbed, and the rest (closed sets, store ids, numbers) is written as is.

    Most fields repeat from request to request for one caller, route and verdict
    (door, decision, reason, detail, principal, token, tenant, endpoint, permissions,
    map): they are rendered once, as four pre-serialized JSON fragments keyed by their
    values (a bounded dict, cleared when full), each the value of the first key of its
    run of fields with the keys and values that follow it. One ``orjson.dumps`` of the
    per-request fields and those four fragments then writes the event with every key
    in its usual order: about half the cost of rendering all the fields each time.

    The scrubbing regex runs only when the texts, lower-cased together, contain the
    token prefix, ``eyj`` or ``bearer``: every credential the scrubber matches
    contains one of them, so a line without any needs no scrubbing, and that one check
    replaces the regex searches. The tenant and detail are checked (and scrubbed) once,
    when their fragment is rendered.
    """

    __slots__ = ("_fixed", "_needle", "_scrub", "_second_digits", "_second_text")

    def __init__(self, token_prefix: str = "pgt_") -> None:
        self._scrub = scrubber(token_prefix)
        self._needle = token_prefix.lower()
        self._second_digits = "?"  # no second's digits yet
        self._second_text = ""
        self._fixed: dict[tuple[Any, ...], tuple[orjson.Fragment, ...]] = {}

    def timestamp(self, when: float) -> str:
        """RFC 3339 UTC with microseconds; the date part is formatted once a second.

        The microseconds are the last six digits of the rounded count (no arithmetic, no
        format spec), the seconds the digits before them, compared as text."""
        digits = str(round(when * 1_000_000))
        if digits[:-6] != self._second_digits:
            if len(digits) < 7 or digits[0] == "-":  # before 1970-01-01T00:00:01
                second, micro = divmod(round(when * 1_000_000), 1_000_000)
                text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                return f"{text}.{micro:06d}Z"
            self._second_digits = digits[:-6]
            self._second_text = datetime.fromtimestamp(int(self._second_digits), UTC).strftime(
                "%Y-%m-%dT%H:%M:%S."
            )
        return self._second_text + digits[-6:] + "Z"

    def _suspect(self, text: str) -> bool:
        return self._needle in text or "eyj" in text or "bearer" in text

    def __call__(self, outcome: RequestOutcome) -> bytes:
        method, path, request_id = outcome.method, outcome.path, outcome.request_id
        probe = f"{method}\n{path}\n{request_id}".lower()  # _suspect, inlined
        if self._needle in probe or "eyj" in probe or "bearer" in probe:
            scrub = self._scrub
            method = scrub(method) if method else method
            path = scrub(path) if path else path
            request_id = scrub(request_id) if request_id else request_id
        principal = outcome.principal
        key = (
            outcome.door,
            outcome.decision,
            outcome.cache_hit,
            outcome.reason,
            outcome.detail,
            # Its fields, not the object: a frozen dataclass hashes every field, roles too.
            None if principal is None else principal.id,
            None if principal is None else principal.kind,
            None if principal is None else principal.account,
            outcome.token_id,
            outcome.tenant,
            outcome.endpoint,
            outcome.required,
            outcome.missing,
            outcome.upstream_error,
            outcome.map_sha256,
        )
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._render_fixed(outcome, key)
        event, decision, required, upstream_error = fixed
        return orjson.dumps(
            {
                "ts": self.timestamp(outcome.started),
                "event": event,  # "decision", door
                "decision_id": outcome.decision_id,
                "request_id": request_id,
                "trace_id": outcome.trace_id,
                "decision": decision,  # cache_hit, reason, detail … endpoint
                "method": method,
                "path": path,
                "required": required,  # missing
                "client_ip": outcome.client_ip,
                "status": outcome.status,
                "duration_ms": round(outcome.duration_s * 1000.0, 3),
                "upstream_error": upstream_error,  # map_sha256
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )

    def _render_fixed(
        self, outcome: RequestOutcome, key: tuple[Any, ...]
    ) -> tuple[orjson.Fragment, ...]:
        """The four fragments of the fields ``key`` holds, kept for the next requests."""
        tenant, detail = outcome.tenant, outcome.detail or None
        if self._suspect(f"{tenant}\n{detail}".lower()):
            tenant = self._scrub(tenant) if tenant else tenant
            detail = self._scrub(detail) if detail else detail
        principal = outcome.principal
        runs = (
            {"event": "decision", "door": outcome.door},
            {
                "decision": outcome.decision,
                "cache_hit": outcome.cache_hit,
                "reason": outcome.reason,
                "detail": detail,
                "principal": (
                    None
                    if principal is None
                    else {"id": principal.id, "kind": principal.kind, "account": principal.account}
                ),
                "token_id": outcome.token_id,
                "tenant": tenant,
                "endpoint": outcome.endpoint,
            },
            {"required": outcome.required, "missing": outcome.missing},
            {"upstream_error": outcome.upstream_error, "map_sha256": outcome.map_sha256},
        )
        # {"first":VALUE,"next":…} -> VALUE,"next":… : the first key stays in the event.
        fixed = tuple(
            _FRAGMENT(orjson.dumps(run)[len(orjson.dumps(next(iter(run)))) + 2 : -1])
            for run in runs
        )
        if len(self._fixed) >= _FIXED_CACHE_SIZE:
            self._fixed.clear()
        self._fixed[key] = fixed
        return fixed


# --------------------------------------------------------------------------- sinks


class AuditSink(Protocol):
    """Where rendered lines go. Every method is blocking and runs off the event loop."""

    def open(self) -> None: ...

    def write(self, lines: Sequence[bytes]) -> None:
        """Write whole lines, in order; raise OSError if they may not have been written."""
        ...

    def close(self) -> None: ...


class StreamSink:
    """Lines to a text or binary stream; ``None`` means ``sys.stdout`` at write time."""

    def __init__(self, stream: IO[Any] | None = None) -> None:
        self._stream = stream

    def open(self) -> None:
        pass

    def write(self, lines: Sequence[bytes]) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        data = b"".join(lines)
        buffer = getattr(stream, "buffer", None)
        if buffer is not None:
            stream.flush()  # keep order with anything written through the text layer
            buffer.write(data)
            buffer.flush()
        elif isinstance(stream, io.TextIOBase):
            stream.write(data.decode("utf-8"))
            stream.flush()
        else:  # a binary stream
            binary = cast("IO[bytes]", stream)
            binary.write(data)
            binary.flush()

    def close(self) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        with contextlib.suppress(ValueError, OSError):
            stream.flush()


class FileSink:
    """Lines appended to ``path``, rotated by size to ``path.1`` … ``path.N``.

    Rotation happens only between lines, so a line is never split and every line
    is in exactly one file; a single line longer than ``max_bytes`` gets a file of
    its own. The oldest file beyond ``backups`` is deleted (retention, not loss).
    Only one process may write a given path: give each worker its own file.
    A path that is not a regular file (a FIFO read by a log shipper, ``/dev/stdout``)
    is only appended to: never rotated (renaming it would move the pipe away from
    its reader) and never fsync'ed (the kernel refuses with EINVAL).
    """

    def __init__(self, path: str, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[bytes] | None = None
        self._size = 0
        self._regular = True

    def open(self) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open across writes
            st = os.fstat(self._file.fileno())
            self._size = st.st_size
            self._regular = stat.S_ISREG(st.st_mode)

    def write(self, lines: Sequence[bytes]) -> None:
        self.open()
        data = b"".join(lines)
        if not self._regular or self._size + len(data) <= self.max_bytes:
            self._write_chunk([data])  # the usual case: the batch fits, one write
            return
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            used = self._size + chunk_size
            if self._regular and used and used + len(line) > self.max_bytes:
                self._write_chunk(chunk)
                chunk, chunk_size = [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += len(line)
        self._write_chunk(chunk)

    def _write_chunk(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        assert self._file is not None
        data = b"".join(chunk)
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        for index in range(self.backups - 1, 0, -1):
            source = f"{self.path}.{index}"
            if os.path.exists(source):
                os.replace(source, f"{self.path}.{index + 1}")
        os.replace(self.path, f"{self.path}.1")
        self.open()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self._regular:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


class CaptureSink:
    """Keeps what would have been written, for tests (structlog's ``LogCapture`` idea).

    The whole chain runs, redaction included, so ``events`` is exactly what a SIEM
    would ingest, parsed back from the JSON lines.
    """

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.closed = False

    def open(self) -> None:
        pass

    def write(self, lines: Sequence[bytes]) -> None:
        self.lines.extend(lines)

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every written event, parsed, in order."""
        return [orjson.loads(line) for line in self.lines]


def open_sink(spec: str, settings: AuditSettings, *, stream: IO[Any] | None = None) -> AuditSink:
    """The sink named by ``audit.sink``: ``stdout`` (or ``stream``, e.g. stderr for CLI
    commands other than serve) or ``file:PATH``."""
    if spec == "stdout":
        return StreamSink(stream)
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileSink(
            spec[len("file:") :], max_bytes=settings.file_max_bytes, backups=settings.file_backups
        )
    raise ValueError(f"audit.sink: {spec!r}: expected stdout or file:PATH")


# --------------------------------------------------------------------------- the log


class AuditLog:
    """The bounded audit queue and its writer thread.

    Args:
        settings: ``audit`` section of the config (sink, queue_size, overflow, rotation).
        metrics: counts written events (and, never in normal operation, dropped ones).
        sink: overrides ``settings.sink`` (tests pass a :class:`CaptureSink`).
        stream: where the ``stdout`` sink writes (the CLI passes stderr outside serve).
        token_prefix: the auth token prefix, so secrets with it are scrubbed.
        processors: overrides :func:`default_processors`.
        batch_max: most events written by one sink call.
        linger: seconds the writer lets a batch gather before writing it.

    How an event travels: the loop renders a decision event (one ``orjson.dumps``) and
    appends the line to a deque; that is all it does per event. One writer thread,
    started with the log, drains the deque in batches and writes them. There is no
    hop between the loop and the thread per event or per batch: the loop wakes the
    thread only when it sleeps on an empty queue, and the thread wakes the loop only
    when a request waits for a slot or the log is closing. Handing every batch to a
    pool thread and back (``asyncio.to_thread``) cost about 20 µs of CPU per batch,
    which under load was most of an event's cost, since events came a few at a time.

    The thread lingers: woken by an event, it waits ``linger`` (50 ms) for more before
    writing. It does not linger when the queue is half full or a request waits for a
    slot (the bound is then what matters), nor while closing, and a request starting
    to wait or :meth:`close` cuts a linger short. Events waiting there count against
    the bound, are written by :meth:`close`, and are never dropped.

    Counting: the loop counts reserved slots and queued events, the thread counts
    written ones; each number has one writer, so no lock is needed. The bound is
    ``reserved + queued - written``.
    """

    def __init__(
        self,
        settings: AuditSettings,
        *,
        metrics: Metrics,
        sink: AuditSink | None = None,
        stream: IO[Any] | None = None,
        token_prefix: str = "pgt_",
        processors: Sequence[Processor] | None = None,
        batch_max: int = 512,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self.settings = settings
        self.sink = sink if sink is not None else open_sink(settings.sink, settings, stream=stream)
        self._metrics = metrics
        self._processors = tuple(
            processors if processors is not None else default_processors(token_prefix)
        )
        # Custom chains (tests, extensions) see every event; the default one renders
        # decisions on the loop (see DecisionRenderer).
        self._render_decision = DecisionRenderer(token_prefix) if processors is None else None
        self._capacity = settings.queue_size
        self._reject = settings.overflow == "reject"
        self._batch_max = batch_max
        self._linger = linger
        # Written by the loop only: slots reserved and not yet used, events ever queued.
        self._reserved = 0
        self._queued = 0
        # Written by the writer thread only: events ever written (or given up at close).
        self._written = 0
        # A queued event: a dict for the chain, or a decision line already rendered.
        # Appended on the loop, popped by the thread (deque operations are atomic).
        self._pending: collections.deque[dict[str, Any] | bytes] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_done: asyncio.Future[None] | None = None
        self._kick = threading.Event()  # wakes the thread when it sleeps on an empty queue
        self._idle = False  # the thread sleeps on _kick (or is about to)
        self._stop = False  # the thread exits once the queue is empty
        self._abandon = threading.Event()  # close gave up: the thread stops at once
        self._hurry = threading.Event()  # cuts the linger short: closing, or a waiter
        self._no_reserved: asyncio.Event | None = None
        self._closing = False
        self._finished = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the sink (errors surface at startup) and start the writer thread."""
        await asyncio.to_thread(self.sink.open)
        self._loop = asyncio.get_running_loop()
        self._thread_done = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="permgate-audit-writer", daemon=True)
        self._thread.start()

    async def close(self, timeout: float | None = None) -> None:
        """Write every queued event, then every event of a request still holding a
        slot, then close the sink. Used on SIGTERM after the listeners stopped.

        With ``timeout``, give up after that many seconds (a sink that keeps failing):
        what is left is counted in ``permgate_audit_events_dropped_total`` and logged.
        """
        if self._finished:
            return
        self._closing = True
        self._hurry.set()
        if self._thread is None:  # never started: nothing can write, start now
            await self.start()
        assert self._thread_done is not None
        try:
            await asyncio.wait_for(self._drain(), timeout)
        except TimeoutError:
            self._abandon.set()
            self._kick.set()
            lost = self._queued - self._written
            self._pending.clear()
            self._finished = True
            if lost:
                self._metrics.audit_dropped(lost)
                log.error("audit: %d event(s) not written before the shutdown deadline", lost)
            return  # the sink may be stuck in the writer thread: closing it could hang too
        self._finished = True
        self._check_finished()  # an event emitted while the thread was stopping
        await asyncio.to_thread(self.sink.close)

    async def _drain(self) -> None:
        """Wait until every reserved slot is used (a request waiting for a slot gets
        one as the thread writes, and is waited for too), then until the thread wrote
        everything and stopped."""
        while self._reserved or self._waiters:
            if self._reserved:
                self._no_reserved = asyncio.Event()
                await self._no_reserved.wait()
            else:
                await asyncio.sleep(0.01)  # the queue is full: the thread frees slots
        self._stop = True
        self._kick.set()
        assert self._thread_done is not None
        await asyncio.shield(self._thread_done)

    # ------------------------------------------------------------------ producers

    @property
    def queued(self) -> int:
        """Events not yet written, reserved slots included (what the bound applies to)."""
        return self._reserved + self._queued - self._written

    def try_reserve(self) -> bool:
        """Take one slot at once if one is free (not closing, below capacity, nobody
        waiting): the synchronous admission of the common case, with no coroutine to
        create and await. False: the caller falls back to :meth:`reserve`, which waits,
        refuses or raises as the overflow policy says."""
        if (
            self._reserved + self._queued - self._written < self._capacity
            and not self._waiters
            and not self._closing
        ):
            self._reserved += 1
            return True
        return False

    async def reserve(self) -> None:
        """Take one slot for the request now starting; its event is emitted at the end.

        Raises:
            AuditOverloaded: the queue is full and ``overflow`` is ``reject``, or the
                log is shutting down.
        """
        if self._closing:
            raise AuditOverloaded("the audit log is shutting down")
        if self._reserved + self._queued - self._written < self._capacity and not self._waiters:
            self._reserved += 1
            return
        if self._reject:
            raise AuditOverloaded(f"the audit queue is full ({self._capacity} events)")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._hurry.set()  # the thread must not linger while a request waits
        # The thread may have written just before it could see this waiter: look now.
        self._release_waiters()
        try:
            await waiter  # _release_waiters hands the slot over before resolving it
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._slot_given_back()
                self._release_waiters()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def emit_decision(self, outcome: RequestOutcome) -> None:
        """Queue the request's decision event in its reserved slot: never blocks or drops.

        Called without a reservation it still queues (over the bound rather than lose).
        """
        render = self._render_decision
        event = decision_event(outcome) if render is None else render(outcome)
        # _enqueue and _append inlined: this runs once per request.
        if self._reserved > 0:
            self._reserved -= 1
            if self._reserved == 0 and self._no_reserved is not None:
                self._no_reserved.set()
        self._pending.append(event)
        self._queued += 1
        if self._idle:  # read after the append (see _append)
            self._kick.set()
        if self._finished:
            self._check_finished()

    async def emit(self, event: Mapping[str, Any]) -> None:
        """Queue an ``admin.change``, ``map.reload`` or ``enforcement.change`` event,
        under the same capacity rule as requests (waits, or raises AuditOverloaded)."""
        checked = _checked(event)
        await self.reserve()
        self._enqueue(checked)

    def emit_nowait(self, event: Mapping[str, Any]) -> None:
        """Queue an event that must not wait or fail (a map reload already applied),
        over the bound if need be. Rare events only."""
        self._append(_checked(event))

    def _enqueue(self, event: dict[str, Any] | bytes) -> None:
        if self._reserved > 0:
            self._slot_given_back()
        self._append(event)

    def _append(self, event: dict[str, Any] | bytes) -> None:
        self._pending.append(event)
        self._queued += 1
        # Read after the append: if the thread went idle before it, it is told now;
        # if after, it sees the event when it looks at the queue once more.
        if self._idle:
            self._kick.set()
        if self._finished:
            self._check_finished()

    def _slot_given_back(self) -> None:
        self._reserved -= 1
        if self._reserved == 0 and self._no_reserved is not None:
            self._no_reserved.set()

    def _check_finished(self) -> None:
        if self._finished and self._pending:  # a bug in shutdown order: say it loudly
            lost = len(self._pending)
            self._pending.clear()
            self._queued -= lost
            self._metrics.audit_dropped(lost)
            log.error("audit: %d event(s) emitted after the audit log was closed", lost)

    def _release_waiters(self) -> None:
        """Hand free slots to waiting requests, in order (on the loop)."""
        waiters = self._waiters
        while waiters and self._reserved + self._queued - self._written < self._capacity:
            waiter = waiters.popleft()
            if not waiter.done():
                self._reserved += 1
                waiter.set_result(None)

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        """The writer thread: wait for events, let a batch gather, write it; until told
        to stop with nothing left, or to abandon."""
        pending = self._pending
        try:
            while not self._abandon.is_set():
                if not pending:
                    if self._stop:
                        return
                    self._idle = True
                    if not pending and not self._stop:  # nothing came in meanwhile
                        self._kick.wait()
                    self._kick.clear()
                    self._idle = False
                    continue
                if self._linger > 0 and self._should_linger():
                    self._hurry.wait(self._linger)  # one write for the whole batch
                batch = [pending.popleft() for _ in range(min(len(pending), self._batch_max))]
                self._write_batch(batch)
                if not self._closing:
                    self._hurry.clear()
        finally:
            self._call_loop(self._thread_finished)

    def _should_linger(self) -> bool:
        return (
            not self._closing
            and not self._waiters
            and len(self._pending) < self._batch_max
            and (self._reserved + self._queued - self._written) * 2 < self._capacity
        )

    def _write_batch(self, batch: list[dict[str, Any] | bytes]) -> None:
        """Render (once, even across retries) and write one batch; retry until written."""
        # Decision lines come rendered: only other events (rare) go through _render.
        rendered = [event if type(event) is bytes else self._render(event) for event in batch]
        # With several workers, metrics reach the shared files no later than the
        # audit events of the same requests reach the sink.
        try:
            self._metrics.publish()
        except Exception:  # metrics must never stop the audit
            log.exception("audit: could not publish the metrics before a batch")
        delay = _RETRY_FIRST_SECONDS
        while True:
            try:
                self.sink.write(rendered)
                break
            except Exception:
                log.exception("audit sink failed; retrying in %.1fs", delay)
                if self._abandon.wait(delay):
                    return  # close gave up: these were counted as dropped
                delay = min(delay * 2, _RETRY_MAX_SECONDS)
        if self._abandon.is_set():
            return  # counted as dropped already; do not count them twice
        self._written += len(batch)
        for name, written in _count_by_type(batch).items():
            self._metrics.audit_written(name, written)
        if self._waiters:
            self._call_loop(self._release_waiters)

    def _call_loop(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(callback)

    def _thread_finished(self) -> None:
        done = self._thread_done
        if done is not None and not done.done():
            done.set_result(None)

    def _render(self, event: dict[str, Any] | bytes) -> bytes:
        if isinstance(event, bytes):
            return event
        try:
            return render_event(dict(event), self._processors)
        except Exception as exc:  # keep the fact that something happened, not its content
            log.exception("audit: cannot render a %r event", event.get("event"))
            fallback = {
                "ts": rfc3339(time.time()),
                "event": str(event.get("event")),
                "audit_error": type(exc).__name__,
            }
            return orjson.dumps(fallback, option=orjson.OPT_APPEND_NEWLINE)


def _checked(event: Mapping[str, Any]) -> dict[str, Any]:
    name = event.get("event")
    if name not in AUDIT_EVENTS:
        raise ValueError(f"audit event type {name!r} is not one of {', '.join(AUDIT_EVENTS)}")
    return dict(event)


def _count_by_type(batch: Sequence[dict[str, Any] | bytes]) -> dict[str, int]:
    """Events by type; decisions (rendered lines, nearly all of them) counted at once."""
    others = [event for event in batch if type(event) is not bytes]
    counts: dict[str, int] = {}
    if len(others) < len(batch):
        counts["decision"] = len(batch) - len(others)
    for event in others:
        # A bytes subclass is a decision line too.
        name = "decision" if isinstance(event, bytes) else str(event.get("event"))
        counts[name] = counts.get(name, 0) + 1
    return counts
