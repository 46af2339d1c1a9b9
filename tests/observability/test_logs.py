"""Log lines: credentials redacted whatever quotes them, the JSON and text shapes,
the format chosen by default, and a throttled warning's count of what it held back."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import orjson
import pytest

from permgate.observability.logs import (
    JsonFormatter,
    TextFormatter,
    Throttle,
    configure_logging,
    redact,
    resolve_format,
)

TOKEN_BODY = "Ab0_-" * 8 + "xyz"  # 43 characters of base64url
assert len(TOKEN_BODY) == 43

REDACTIONS = [
    (f"pgt_0123456789abcdef_{TOKEN_BODY}", "pgt_0123456789abcdef_[redacted]"),
    (
        f"GET /a/custom_0123456789abcdef_{TOKEN_BODY}/b",
        "GET /a/custom_0123456789abcdef_[redacted]/b",
    ),
    ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [redacted]"),
    ("authorization: bearer abc", "authorization: bearer [redacted]"),
    ("Basic Ym9iOmh1bnRlcjI=", "Basic [redacted]"),
    ("token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln here", "token [redacted] here"),
    ("postgresql://app:s3cret@db:5432/permgate", "postgresql://app:[redacted]@db:5432/permgate"),
    ("http://user:pw@upstream:8000", "http://user:[redacted]@upstream:8000"),
    ("host=db password=s3cret dbname=p", "host=db password=[redacted] dbname=p"),
    ("?api_key=k1&x=1", "?api_key=[redacted]&x=1"),
    ("postgresql://app@db/permgate", "postgresql://app@db/permgate"),
    ("GET /policy/acme-prod/quotes/q1 -> 200", "GET /policy/acme-prod/quotes/q1 -> 200"),
    ("request_id=0123456789abcdef0123456789abcdef", "request_id=0123456789abcdef0123456789abcdef"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    REDACTIONS,
    ids=[
        "an auth token keeps only its id",
        "a token with another prefix inside a path",
        "a bearer value",
        "a bearer value in lower case",
        "a basic value",
        "a JWT",
        "a password in a DSN",
        "a password in a URL",
        "a password= pair",
        "an api_key= pair",
        "a DSN without a password is unchanged",
        "an access line is unchanged",
        "a request id is unchanged",
    ],
)
def test_redact(text: str, expected: str) -> None:
    """Each credential shape is replaced by [redacted]; the rest is left as it was."""
    assert redact(text) == expected


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("permgate.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fixed_fields_then_the_extra_ones() -> None:
    """ts (UTC), level, logger, message, pid, and each field given with extra=."""
    line = JsonFormatter().format(_record("upstream %s down", "u", upstream="u", count=3))
    event = orjson.loads(line)
    assert list(event)[:5] == ["ts", "level", "logger", "message", "pid"]
    assert event["ts"].endswith("Z") and "T" in event["ts"]
    assert (event["level"], event["logger"], event["message"]) == (
        "warning",
        "permgate.test",
        "upstream u down",
    )
    assert (event["upstream"], event["count"]) == ("u", 3)


def test_a_json_line_stays_valid_json_when_it_is_redacted() -> None:
    """A secret inside a quoted, escaped message is replaced without breaking the line."""
    message = f'header "Authorization: Bearer {TOKEN_BODY}" and pgt_0123456789abcdef_{TOKEN_BODY}'
    event = orjson.loads(JsonFormatter().format(_record(message)))
    assert event["message"] == (
        'header "Authorization: Bearer [redacted]" and pgt_0123456789abcdef_[redacted]'
    )


def test_a_json_line_carries_the_traceback_as_one_field() -> None:
    """An exception is one field of the one line, never lines of its own."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "permgate.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in orjson.loads(line)["exc_info"]


def test_a_text_line_appends_the_extra_fields_as_key_value() -> None:
    """``TIME LEVEL logger: message key=value``."""
    line = TextFormatter().format(_record("GET /x -> 200", request_id="r1", status=200))
    assert line.endswith(" WARNING permgate.test: GET /x -> 200 request_id=r1 status=200")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


FORMATS = [
    ("json", io.StringIO(), "json"),
    ("text", io.StringIO(), "text"),
    (None, io.StringIO(), "json"),
    (None, _Terminal(), "text"),
    ("json", _Terminal(), "json"),
]


@pytest.mark.parametrize(
    ("configured", "stream", "chosen"),
    FORMATS,
    ids=[
        "json when asked",
        "text when asked",
        "unset, not a terminal: json",
        "unset, a terminal: text",
        "json when asked, even on a terminal",
    ],
)
def test_the_format_chosen(configured: str | None, stream: io.StringIO, chosen: str) -> None:
    """log_format wins; unset, a terminal gets text and anything else JSON lines."""
    assert resolve_format(configured, stream) == chosen


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access_level = logging.getLogger("aiohttp.access").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(access_level)


@pytest.mark.usefixtures("restore_logging")
def test_configuring_twice_writes_each_line_once() -> None:
    """A worker configures logging after its parent's settings: no line is doubled,
    and aiohttp's own access log (which quotes query strings) is off."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    configure_logging("INFO", "json", stream=stream)
    logging.getLogger("permgate.test").info("once")
    assert [orjson.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["once"]
    assert not logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_throttled_warning_is_said_once_per_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first at once; within the interval only counted; the next after it says
    how many were held back."""
    clock = _Clock()
    throttle = Throttle(logging.getLogger("permgate.test"), 30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="permgate.test"):
        said = [throttle.warn("upstream %s down", "u") for _ in range(5)]
        clock.now += 30.0
        said.append(throttle.warn("upstream %s down", "u"))
    assert said == [True, False, False, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "upstream u down",
        "upstream u down; 4 more since the last warning",
    ]
    assert caplog.records[1].__dict__["repeated"] == 4


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_fields_and_tracebacks_are_redacted_too(formatter: logging.Formatter) -> None:
    """A credential in an extra field (even inside a list) or in an exception's text
    never reaches the line, whatever the format."""
    try:
        raise ConnectionError("cannot reach postgresql://app:s3cret@db/permgate")
    except ConnectionError:
        record = logging.LogRecord(
            "permgate.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    record.__dict__.update(dsn="postgresql://app:s3cret@db/p", seen=[f"Bearer {TOKEN_BODY}"])
    line = formatter.format(record)
    assert "s3cret" not in line and TOKEN_BODY not in line
    assert "[redacted]" in line
