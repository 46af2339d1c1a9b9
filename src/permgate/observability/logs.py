"""Log lines of ``permgate serve``: text for a person at a terminal, JSON for a collector.

One handler on the root logger writes to stderr:

- ``text``: ``2026-01-31 12:00:00,123 INFO permgate.access: GET /x -> 200 request_id=...``
  (the message, then the record's own fields as ``key=value``)
- ``json``: one object per line, ``ts`` (RFC 3339, UTC, ``Z``), ``level``, ``logger``,
  ``message``, ``pid``, then the record's own fields (``extra=``), e.g. ``request_id``.

Unset, the format is text when stderr is a terminal and JSON otherwise. The message,
every field and any traceback pass through :func:`redact` as the line is written:
whatever they happen to quote (an exception's text, a URL, a request path), no
credential reaches the log.

:class:`Throttle` keeps a recurring warning (an unreachable upstream under a flood of
requests) to one line per interval, with the count of what it held back.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal

import orjson

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "Throttle",
    "configure_logging",
    "redact",
    "resolve_format",
]

LogFormat = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES: Final = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime"}

_REDACTED: Final = "[redacted]"
# Credentials a line might quote; each stops at a quote, a space or a separator.
_SECRETS: Final = re.compile(
    r"(?P<scheme>\b(?i:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"  # an Authorization value
    r"|(?P<token>[a-z0-9]{16}_)[A-Za-z0-9_-]{43}"  # an auth token: keep its id only
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # a JWT
    r"|(?P<userinfo>://[^/\s:@\"]*:)[^/\s@\"]+@"  # a password in a URL
    r"|(?P<key>\b(?i:password|passwd|pwd|secret|token|api_key|apikey)=)[^\s&;\"]+"
)


def _replace(match: re.Match[str]) -> str:
    if match["userinfo"] is not None:
        return f"{match['userinfo']}{_REDACTED}@"
    kept = match["scheme"] or match["token"] or match["key"] or ""
    return f"{kept}{_REDACTED}"


# A token is at least 16 + 1 + 43 characters of these: shorter text cannot hold one.
_LONG_RUN: Final = re.compile(r"[A-Za-z0-9_-]{60}")


def redact(text: str) -> str:
    """``text`` with every credential it quotes replaced by ``[redacted]``."""
    # Cheap substring tests first: an access line is redacted on every request, and
    # the full pattern costs tens of microseconds on a long line.
    if "=" not in text and "eyJ" not in text and "://" not in text:
        lowered = text.lower()
        if "bearer" not in lowered and "basic" not in lowered and _LONG_RUN.search(text) is None:
            return text
    return _SECRETS.sub(_replace, text)


def _redacted(value: Any) -> Any:
    """``value`` (a field of a log line) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    return value


def resolve_format(log_format: str | None, stream: IO[str]) -> LogFormat:
    """The configured format, or (unset) text on a terminal and JSON lines otherwise."""
    if log_format == "json":
        return "json"
    if log_format == "text":
        return "text"
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message key=value ...``, then any traceback, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        text = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{key}={_redacted(value)}" for key, value in fields.items())
        if record.exc_info:
            text += "\n" + redact(self.formatException(record.exc_info))
        if record.stack_info:
            text += "\n" + redact(self.formatStack(record.stack_info))
        return text


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds, ``Z`` as in the audit events."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring), redacted."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        for key, value in _fields(record).items():
            event.setdefault(key, _redacted(value))
        if record.exc_info:
            event["exc_info"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            event["stack_info"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(event, default=lambda value: redact(str(value))).decode()


def configure_logging(
    level: str, log_format: str | None, *, stream: IO[str] | None = None
) -> LogFormat:
    """Route every logger to one handler on ``stream`` (stderr) in the chosen format.

    Replaces the root logger's handlers, so calling it again (a worker after its
    parent's settings) does not double every line. Returns the format chosen.
    """
    stream = sys.stderr if stream is None else stream
    chosen = resolve_format(log_format, stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log quotes the raw request line, query string included;
    # permgate writes its own access line (request id, decision, no query string).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return chosen


class Throttle:
    """Says a recurring warning at most once per ``interval`` seconds.

    The first occurrence is logged at once; later ones within the interval are only
    counted, and the next line logged says how many were held back (``repeated``).
    """

    __slots__ = ("_clock", "_interval", "_logger", "_next", "held_back")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self.held_back = 0

    def warn(self, message: str, *args: object, extra: Mapping[str, object] | None = None) -> bool:
        """Log ``message`` unless one was logged in the last interval; True if logged."""
        now = self._clock()
        if now < self._next:
            self.held_back += 1
            return False
        fields = dict(extra or {})
        if self.held_back:
            fields["repeated"] = self.held_back
            message += "; %d more since the last warning"
            args = (*args, self.held_back)
        self._logger.warning(message, *args, extra=fields)
        self.held_back = 0
        self._next = now + self._interval
        return True
