"""Request hygiene: refuse what two parsers could read differently.

The path that is authorized must be the path the upstream receives, byte for byte.
So before routing, every request-target and header block goes through
:func:`check_target` and :func:`check_headers`; either returns a stable reason id
(answered with 400) or None. After the decision, :func:`forward_headers` builds the
header block the upstream sees.

Layering of the checks. The listener's request parser (llhttp, strict mode) already
refuses, before any handler runs, raw control characters, DEL and
non-ASCII bytes anywhere in the target (path and query), a target that is neither
origin-form, absolute-form with an authority, nor ``OPTIONS *``/CONNECT
authority-form, duplicated ``Content-Length`` (even equal values), a non-numeric
``Content-Length``, ``Content-Length`` together with ``Transfer-Encoding``, a
duplicated ``Transfer-Encoding: chunked``, duplicated ``Host``, a missing ``Host``,
obs-fold and whitespace before a colon (the gateway listener answers those with the
same JSON refusal, counted and audited: :mod:`permgate.gateway.http1`). These
functions check those cases again
anyway (it costs nothing on the fast path) so that permgate stays safe if the
parser is swapped or run in lax mode; tests/test_hygiene.py records which layer
answered each case.

Decisions a reviewer should know about:

- Every absolute-form target (``GET http://host/p``) is refused, whatever its
  authority: a sidecar is never a forward proxy and legitimate clients send
  origin-form. That is simpler and stricter than comparing with ``Host``.
- A percent-encoded *unreserved* character (``%41``, ``%2e``, ``%7E``...) is refused:
  RFC 3986 §2.3 makes ``/a/%77hoami`` equal to ``/a/whoami``, but the router
  compares raw segments, so it would match ``/a/{id}`` while the upstream serves
  ``/a/whoami``. No conforming URI producer emits such escapes.
- Encoded ``;`` (``%3B``) is refused like a raw one (Spring's StrictHttpFirewall does
  the same), and so is ``%25`` followed by two hex digits: a double-decoding upstream
  would read ``%252e`` as ``.``.
- A decoded segment with non-ASCII text must be stable under NFKC, so look-alikes
  such as ``．．`` (fullwidth dots) cannot become ``..`` in a normalising upstream.
- The query is never routed on; it is refused only for characters no request line
  may carry (controls, space, DEL, non-ASCII) and for ``#``.
- ``X-Forwarded-*`` and ``Forwarded`` from the client are discarded and set fresh:
  permgate is the edge of the pod, so nothing before it is trusted.
- ``Host`` must be RFC 9110 ``host[:port]``, and stricter: a name is made of
  unreserved characters only (no percent-encoding, no sub-delims, no userinfo), an
  IP literal is a plain IPv6 address, a port is 1 to 5 digits up to 65535. An upstream
  that rebuilds its URL from ``Host`` + path (Starlette's ``request.url``, most
  frameworks) must not read a path, a query or another authority out of it. An empty
  ``Host`` is refused too (RFC 9110 §4.2.1: an ``http`` URI never has an empty host);
  HTTP/1.0 may omit it.
- Only HTTP/1.0 and HTTP/1.1 are served: llhttp reads ``GET /`` (HTTP/0.9) and
  ``HTTP/2.0`` request lines as requests. An HTTP/1.0 message with
  ``Transfer-Encoding`` has faulty framing (RFC 9112 §6.1) and is refused.
- Refusals for :data:`FRAMING_REASONS` end the connection: once the framing is in
  doubt, the bytes after the answer cannot be trusted to start a new request.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Collection, Mapping
from typing import Final

from multidict import MultiMapping

from permgate.core.reasons import FRAMING_REASONS, HYGIENE_REASONS, HygieneReason
from permgate.gateway.fieldnames import (
    AUTHORIZATION,
    CONNECTION,
    CONTENT_LENGTH,
    HOST,
    TRANSFER_ENCODING,
    X_REQUEST_ID,
)

__all__ = [
    "ABSOLUTE_FORM",
    "AMBIGUOUS_HEADER",
    "AMBIGUOUS_PATH",
    "CONFLICTING_LENGTH",
    "DUPLICATE_HEADER",
    "FRAMING_REASONS",
    "HEADERS_TOO_LARGE",
    "HOP_BY_HOP",
    "INVALID_HOST",
    "INVALID_TARGET",
    "MALFORMED_REQUEST",
    "REASONS",
    "REQUEST_TIMEOUT",
    "UNSUPPORTED_TRANSFER_CODING",
    "UNSUPPORTED_VERSION",
    "ForwardHeaders",
    "check_headers",
    "check_host",
    "check_message",
    "check_target",
    "connection_listed",
    "forward_headers",
    "request_id",
    "split_target",
]

# --------------------------------------------------------------------------- reasons
# Each is the ``reason`` of a 400 ``{"error":"bad_request",...}`` answer; the closed
# set is :class:`permgate.core.reasons.HygieneReason` (these names are its members).
AMBIGUOUS_PATH: Final = HygieneReason.AMBIGUOUS_PATH
ABSOLUTE_FORM: Final = HygieneReason.ABSOLUTE_FORM
INVALID_TARGET: Final = HygieneReason.INVALID_TARGET
DUPLICATE_HEADER: Final = HygieneReason.DUPLICATE_HEADER
AMBIGUOUS_HEADER: Final = HygieneReason.AMBIGUOUS_HEADER
CONFLICTING_LENGTH: Final = HygieneReason.CONFLICTING_LENGTH
UNSUPPORTED_TRANSFER_CODING: Final = HygieneReason.UNSUPPORTED_TRANSFER_CODING
INVALID_HOST: Final = HygieneReason.INVALID_HOST
UNSUPPORTED_VERSION: Final = HygieneReason.UNSUPPORTED_VERSION
MALFORMED_REQUEST: Final = HygieneReason.MALFORMED_REQUEST
HEADERS_TOO_LARGE: Final = HygieneReason.HEADERS_TOO_LARGE
REQUEST_TIMEOUT: Final = HygieneReason.REQUEST_TIMEOUT
REASONS: Final = HYGIENE_REASONS

# --------------------------------------------------------------------------- targets
# The common request in one match: origin-form, no '%', no ';', no '\\', no dot
# segment, no empty segment except a trailing slash, and a query without '#',
# space, controls or non-ASCII. Anything else takes the slow path below.
_CLEAN_TARGET: Final = re.compile(
    r"(?:/(?!\.\.?(?:[/?]|\Z))[A-Za-z0-9\-._~!$&'()*+,=:@|{}\[\]^`\"<>]+)*/?"
    r"(?:\?[\x21\x22\x24-\x7e]*)?\Z"
)
# Raw characters refused anywhere in the path: '\\', ';', '#', space, controls, DEL and
# every non-ASCII character (including the surrogates aiohttp uses for invalid UTF-8).
_BAD_RAW_PATH: Final = re.compile(r"[\\;#\x00-\x20\x7f-\U0010ffff]")
_BAD_RAW_QUERY: Final = re.compile(r"[#\x00-\x20\x7f-\U0010ffff]")
_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})?")
_VALID_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")

_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
# Bytes that must never appear percent-encoded in a path: controls and DEL (NUL
# truncation), '/' and '\\' (segment confusion), ';' (matrix parameters), and the
# unreserved set (equivalent to the raw character, so the router would be fooled).
_FORBIDDEN_ESCAPED: Final = frozenset(range(0x20)) | {0x7F, 0x2F, 0x5C, 0x3B} | _UNRESERVED


def split_target(raw_target: str) -> tuple[str, str]:
    """Split a raw request-target into its path and its query (with the ``?``, or "")."""
    path, sep, query = raw_target.partition("?")
    return path, sep + query


def check_target(method: str, raw_target: str) -> HygieneReason | None:
    """None if ``raw_target`` (aiohttp's ``request.raw_path``) is clean, else a reason id."""
    if _CLEAN_TARGET.match(raw_target) is not None and raw_target[:1] == "/":
        return None
    if raw_target[:1] != "/":
        if method != "CONNECT" and _SCHEME.match(raw_target) is not None:
            return ABSOLUTE_FORM
        # 'OPTIONS *' and CONNECT's authority-form: nothing a sidecar forwards.
        return INVALID_TARGET
    path, query = split_target(raw_target)
    if query and _BAD_RAW_QUERY.search(query) is not None:
        return INVALID_TARGET
    return _check_path(path)


def _check_path(path: str) -> HygieneReason | None:
    """The slow path: look at every segment, decoded, for a second reading."""
    if _BAD_RAW_PATH.search(path) is not None:
        return AMBIGUOUS_PATH
    segments = path[1:].split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            if index != last:  # '//' anywhere; a single trailing '/' is fine
                return AMBIGUOUS_PATH
            continue
        text = _decode_segment(segment) if "%" in segment else segment
        if text is None or text in (".", ".."):
            return AMBIGUOUS_PATH
        if not text.isascii() and unicodedata.normalize("NFKC", text) != text:
            return AMBIGUOUS_PATH
    return None


def _decode_segment(segment: str) -> str | None:
    """Percent-decode one segment as strict UTF-8; None when it could be read two ways."""
    decoded = bytearray()
    start = 0
    for escape in _ESCAPE.finditer(segment):
        digits = escape.group(1)
        if digits is None:  # '%zz' or a truncated '%4'
            return None
        byte = int(digits, 16)
        if byte in _FORBIDDEN_ESCAPED:
            return None
        decoded += segment[start : escape.start()].encode("ascii")
        decoded.append(byte)
        start = escape.end()
    decoded += segment[start:].encode("ascii")
    try:
        # Strict UTF-8 refuses overlong forms (%C0%AE), surrogates and truncation.
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _VALID_ESCAPE.search(text) is not None:  # '%252e': a second decode would differ
        return None
    return text


# --------------------------------------------------------------------------- message
# host[:port]: a name of unreserved characters, or an IPv6 literal; 1-5 port digits.
_HOST: Final = re.compile(r"(?:[A-Za-z0-9._~-]+|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?")
_HOST_CACHE: Final[dict[str, bool]] = {}
_HOST_CACHE_MAX: Final = 1024


def check_host(values: list[str], version: tuple[int, int]) -> HygieneReason | None:
    """None if the ``Host`` field lines ``values`` are one valid ``host[:port]`` (or
    absent on HTTP/1.0), else :data:`INVALID_HOST`."""
    if not values:
        return INVALID_HOST if version >= (1, 1) else None
    if len(values) > 1:
        return INVALID_HOST
    value = values[0]
    valid = _HOST_CACHE.get(value)
    if valid is None:
        valid = _valid_host(value)
        if len(_HOST_CACHE) < _HOST_CACHE_MAX:
            _HOST_CACHE[value] = valid
    return None if valid else INVALID_HOST


def _valid_host(value: str) -> bool:
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    literal, port = match.groups()
    if port is not None and int(port) > 65535:
        return False
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
    return True


def check_message(version: tuple[int, int], headers: MultiMapping[str]) -> HygieneReason | None:
    """None if the protocol version, the framing headers it allows and ``Host`` are
    acceptable, else a reason id (checked before the target and the other headers)."""
    if version != (1, 1):
        if version != (1, 0):
            return UNSUPPORTED_VERSION
        if TRANSFER_ENCODING in headers:
            return UNSUPPORTED_TRANSFER_CODING
    hosts = headers.getall(HOST, [])
    # The common case without check_host's frame: one Host already found valid.
    if len(hosts) == 1 and _HOST_CACHE.get(hosts[0]) is True:
        return None
    return check_host(hosts, version)


# --------------------------------------------------------------------------- headers
_AUTHORIZATION: Final = "authorization"


def check_headers(
    headers: MultiMapping[str], tenant_headers: str | Collection[str] | None
) -> HygieneReason | None:
    """None if no security-relevant header can be read two ways, else a reason id.

    ``tenant_headers`` names the header(s) the endpoint map reads tenants from: one
    name, every name the map uses (this runs before routing), or None.
    """
    if isinstance(tenant_headers, str):
        tenant_headers = (tenant_headers,)
    elif tenant_headers is None:
        tenant_headers = ()
    getall = headers.getall
    if len(getall(AUTHORIZATION, ())) > 1:
        return DUPLICATE_HEADER
    for tenant_header in tenant_headers:
        if len(getall(tenant_header, ())) > 1:
            return DUPLICATE_HEADER
    lengths = getall(CONTENT_LENGTH, ())
    if lengths:
        if len(lengths) > 1 or TRANSFER_ENCODING in headers:
            return CONFLICTING_LENGTH
        if not (lengths[0].isascii() and lengths[0].isdigit()):
            return CONFLICTING_LENGTH
    else:
        codings = getall(TRANSFER_ENCODING, ())
        # Only plain chunked: permgate re-frames the body, so another coding
        # (gzip, chunked) would reach the upstream undeclared.
        if codings and (len(codings) > 1 or codings[0].strip().lower() != "chunked"):
            return UNSUPPORTED_TRANSFER_CODING
    if "_" in "".join(headers):
        # 'X_Tenant' is 'X-Tenant' to CGI, WSGI, Django, PHP: the upstream could read a
        # tenant or credential the decision never saw.
        guarded = {_AUTHORIZATION, *(name.lower() for name in tenant_headers)}
        for name in headers:
            if "_" in name and name.lower().replace("_", "-") in guarded:
                return AMBIGUOUS_HEADER
    return None


HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
# Headers some framework reads to change the method or the URL it routes on.
_OVERRIDES: Final = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
        "x-original-url",
        "x-original-uri",
        "x-original-path",
        "x-rewrite-url",
        "x-rewrite-uri",
        "x-envoy-original-path",
        "x-envoy-original-url",
    }
)
# Client-address claims: permgate is the edge, it sets the truth itself.
_CLIENT_ADDRESS: Final = frozenset(
    {"forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "x-cluster-client-ip"}
)
# 'Expect: 100-continue' is answered by the gateway's own server; forwarding it would
# make the upstream wait for a body that aiohttp's client is already sending.
_DROPPED: Final = HOP_BY_HOP | _OVERRIDES | _CLIENT_ADDRESS | {"expect", "x-request-id"}
# Prefixes (lower-case, dash-form) of names that permgate alone sets.
_OWN_PREFIXES: Final = ("x-permgate-", "x-forwarded-")
# A client's Connection list may not strip the message's framing or its Host.
_PROTECTED_FROM_CONNECTION: Final = frozenset({"host", "content-length"})


def connection_listed(
    headers: MultiMapping[str], protected: Collection[str] = ()
) -> frozenset[str]:
    """The lower-cased field names a ``Connection`` header declares hop-by-hop, minus
    the framing, ``Host`` and the lower-cased names in ``protected``."""
    values = headers.getall(CONNECTION, ())
    if not values:
        return frozenset()
    names = {token.strip().lower() for value in values for token in value.split(",")}
    names.discard("")
    return frozenset(names - _PROTECTED_FROM_CONNECTION).difference(protected)


def forward_headers(
    headers: MultiMapping[str],
    *,
    client_ip: str,
    scheme: str,
    host: str | None,
    drop_credential: bool,
    identity: Mapping[str, str],
    protected: Collection[str] = (),
    strip: Collection[str] = (),
) -> ForwardHeaders:
    """The header block the upstream receives (see :class:`ForwardHeaders`).

    The client's headers minus hop-by-hop ones and those its ``Connection`` lists
    (never ``Host``, ``Content-Length`` nor the lower-cased names in ``protected``:
    the headers the decision read, such as the tenant header, must reach the upstream
    as they were authorized),
    minus method/URL overrides, client-address claims, ``Expect``, every
    ``X-Permgate-*``/``X-Request-Id``/``X-Forwarded-*`` spelling (any case, ``_`` for
    ``-``) and, when ``drop_credential``, ``Authorization``. Then permgate's own:
    ``X-Forwarded-For/-Proto/-Host`` and ``identity`` (the ``X-Permgate-*`` headers and
    ``X-Request-Id``, built by the caller) — added last, so no client list removes them.
    ``identity`` names outside those two families replace any client value.
    ``strip`` (lower-cased names) are removed whatever their spelling's case: the
    tenant headers the map declares, which carry only what ``identity`` re-adds.
    ``X-Forwarded-Host`` is set only from a ``host`` the caller validated.
    """
    listed = connection_listed(headers, protected)
    cache = _NAME_CACHE
    kept: list[tuple[str, str]] = []
    forward = ForwardHeaders(kept)
    # An identity name a client header may carry too (one outside permgate's own
    # families, which never pass, and not stripped anyway): the client's goes.
    replaced: set[str] | None = None
    for name, value in identity.items():
        key = cache[name] if name in cache else _classify(name)
        if key is None:
            continue
        if key in _FRAMING_NOTED:  # a tenant read from Host, set again to the tenant
            forward.note(key, value)
        if key not in strip:
            replaced = replaced or set()
            replaced.add(key)
    for name, value in headers.items():
        try:
            key = cache[name]
        except KeyError:
            key = _classify(name)
        if key is None or (listed and key in listed):
            continue
        if drop_credential and key == _AUTHORIZATION:
            continue
        if strip and key in strip:
            continue
        if replaced is not None and key in replaced:
            continue
        kept.append((name, value))
        if key in _FRAMING_NOTED:
            forward.note(key, value)
    kept.append(("X-Forwarded-For", client_ip))
    kept.append(("X-Forwarded-Proto", scheme))
    if host:
        kept.append(("X-Forwarded-Host", host))
    kept.extend(identity.items())
    return forward


class ForwardHeaders:
    """The header block the upstream receives: its ``lines`` (name, value) in order,
    as :func:`forward_headers` made them, and what the request's framing needs of them
    (noted as they were chosen: no mapping is built, nor searched, for one request)."""

    __slots__ = ("content_length", "has_host", "lines")

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self.lines = lines
        self.has_host = False  # a Host line is among them
        self.content_length: str | None = None  # the value of their Content-Length line

    def replace(self, name: str, value: str) -> None:
        """Set ``name`` (any case) to the one ``value`` (a propagated trace context's
        ``traceparent``)."""
        key = name.lower()
        self.lines[:] = [line for line in self.lines if line[0].lower() != key]
        self.lines.append((name, value))
        if key in _FRAMING_NOTED:
            self.note(key, value)

    def note(self, key: str, value: str) -> None:
        """A line named ``key`` (lower-case, one of :data:`_FRAMING_NOTED`) is sent."""
        if key == "host":
            self.has_host = True
        else:
            self.content_length = value


# The names whose presence (Host) or value (Content-Length) the request's framing needs.
_FRAMING_NOTED: Final = frozenset({"host", "content-length"})


# Header name as sent -> its lower-case form if it may be forwarded, None if never.
# Names repeat from request to request, so this turns five string operations per
# header into one dict lookup. Bounded, so a client cannot grow it without limit.
_NAME_CACHE: Final[dict[str, str | None]] = {}
_NAME_CACHE_MAX: Final = 4096


def _classify(name: str) -> str | None:
    key = name.lower()
    # The '_' spelling a framework would fold onto a name permgate manages goes too.
    dashed = key.replace("_", "-")
    forwardable: str | None = key
    if key in _DROPPED or dashed in _DROPPED or dashed.startswith(_OWN_PREFIXES):
        forwardable = None
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = forwardable
    return forwardable


_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(headers: MultiMapping[str]) -> str:
    """The client's ``X-Request-Id`` when it is one well-formed value, else a new one."""
    values = headers.getall(X_REQUEST_ID, ())
    if len(values) == 1 and _REQUEST_ID.fullmatch(values[0]) is not None:
        return values[0]
    return new_id()


# Ids made ahead, 128 bits of os.urandom each in hex: one getrandom syscall per
# _IDS_AHEAD ids instead of one per id (two per request: request and decision ids;
# 0.35 µs an id alone, 0.15 made ahead; a syscall more under load, where it is also a
# point to be preempted). list.pop is atomic, so no two callers get the same id;
# a forked worker starts with none, so workers never share one.
_IDS: Final[list[str]] = []
_IDS_AHEAD: Final = 256
os.register_at_fork(after_in_child=_IDS.clear)


def new_id() -> str:
    """A fresh random id: 32 hex digits from os.urandom (as uuid4 but its 6 fixed bits)."""
    try:
        return _IDS.pop()
    except IndexError:
        digits = os.urandom(16 * _IDS_AHEAD).hex()
        _IDS.extend([digits[at : at + 32] for at in range(32, len(digits), 32)])
        return digits[:32]
