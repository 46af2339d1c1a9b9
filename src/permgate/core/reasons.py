"""Every reason a request can be answered with, in one closed set.

A reason string is the ``reason`` of a JSON answer, the ``reason`` field of an audit
event and the ``reason`` label of ``permgate_decisions_total``: its values never
change. Four families, each a :class:`~enum.StrEnum` (a member *is* its string, so it
compares, hashes, formats and serialises as the plain value):

- :class:`Reason`: what the decision (route, public, tenant, permissions) concluded;
- :class:`AuthReason`: why authentication failed (answered 401);
- :class:`HygieneReason`: why a request was refused before routing (answered 400, or
  408 for a stalled client);
- :class:`Refusal`: why a request was refused for no fault of its content (the store,
  the audit queue, the upstream, the client going away, an internal error);
- :class:`DoorReason`: why the decision service refused to decide a check a proxy
  forwarded (the original method or target missing or given twice, or a peer that is
  not a trusted proxy).

Pure data: imported by the core, the request path and observability alike.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = [
    "ALL_REASONS",
    "AUTH_REASONS",
    "FRAMING_REASONS",
    "HYGIENE_REASONS",
    "AuthReason",
    "DoorReason",
    "HygieneReason",
    "Reason",
    "Refusal",
]


class Reason(StrEnum):
    """Why a decision came out as it did."""

    ALLOWED = "allowed"
    PUBLIC = "public"
    UNMAPPED_PASSTHROUGH = "unmapped_passthrough"
    UNMAPPED_ROUTE = "unmapped_route"
    UNAUTHENTICATED = "unauthenticated"
    TENANT_OUT_OF_SCOPE = "tenant_out_of_scope"
    MISSING_PERMISSION = "missing_permission"


class AuthReason(StrEnum):
    """Why a credential was refused (401)."""

    MISSING_CREDENTIALS = "missing_credentials"
    INVALID_TOKEN = "invalid_token"
    EXPIRED_TOKEN = "expired_token"
    REVOKED_TOKEN = "revoked_token"
    SESSION_REVOKED = "session_revoked"
    UNKNOWN_PRINCIPAL = "unknown_principal"
    DISABLED_PRINCIPAL = "disabled_principal"


class HygieneReason(StrEnum):
    """Why a request was refused before routing: it could be read two ways."""

    AMBIGUOUS_PATH = "ambiguous_path"
    ABSOLUTE_FORM = "absolute_form"
    INVALID_TARGET = "invalid_target"
    DUPLICATE_HEADER = "duplicate_header"
    AMBIGUOUS_HEADER = "ambiguous_header"
    CONFLICTING_LENGTH = "conflicting_length"
    UNSUPPORTED_TRANSFER_CODING = "unsupported_transfer_coding"
    INVALID_HOST = "invalid_host"
    UNSUPPORTED_VERSION = "unsupported_http_version"
    # Refused by the HTTP parser itself, before any header could be read: bad line
    # endings, obs-fold, control bytes, ``Name :``, conflicting lengths...
    MALFORMED_REQUEST = "malformed_request"
    # A request line, a header line or the header count beyond the parser's limits.
    HEADERS_TOO_LARGE = "headers_too_large"
    # The client stopped sending its head or its body (answered 408, not 400).
    REQUEST_TIMEOUT = "request_timeout"


class Refusal(StrEnum):
    """Why a request was refused or cut short for a reason outside its content."""

    STORE_UNAVAILABLE = "store_unavailable"
    AUDIT_OVERLOADED = "audit_overloaded"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    CLIENT_GONE = "client_gone"
    INTERNAL_ERROR = "internal_error"


class DoorReason(StrEnum):
    """Why a forwarded check was refused before its original request was evaluated."""

    # A forward-auth check without the original method: never read as GET (nginx
    # sends every auth subrequest as GET).
    MISSING_FORWARDED_METHOD = "missing_forwarded_method"
    MISSING_FORWARDED_URI = "missing_forwarded_uri"
    # The method or target given more than once: two header families, a repeated
    # header, or a spelling with ``_`` or ``.`` that some proxy passes through.
    AMBIGUOUS_FORWARDED_REQUEST = "ambiguous_forwarded_request"
    # Forwarded-request headers from a peer outside ``authz_trusted_proxies`` (403).
    UNTRUSTED_PROXY = "untrusted_proxy"
    # An AuthZEN request whose body does not say what to evaluate (400).
    INVALID_EVALUATION_REQUEST = "invalid_evaluation_request"


AUTH_REASONS: Final = tuple(AuthReason)
HYGIENE_REASONS: Final = frozenset(HygieneReason)
# Answers for these close the connection (the framing of what follows is in doubt).
FRAMING_REASONS: Final = frozenset(
    {
        HygieneReason.CONFLICTING_LENGTH,
        HygieneReason.UNSUPPORTED_TRANSFER_CODING,
        HygieneReason.UNSUPPORTED_VERSION,
        HygieneReason.MALFORMED_REQUEST,
        HygieneReason.HEADERS_TOO_LARGE,
        HygieneReason.REQUEST_TIMEOUT,
    }
)
# The whole closed set: what a decision event's ``reason`` can be.
ALL_REASONS: Final = frozenset((*Reason, *AuthReason, *HygieneReason, *Refusal, *DoorReason))
