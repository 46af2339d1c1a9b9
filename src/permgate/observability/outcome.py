"""What happened to one request: the single record metrics and audit are made from.

The pipeline fills one :class:`RequestOutcome` per request, whatever its fate
(400, 401, 403, 502, forwarded…), and hands it to the observer once. Keeping this
a plain dataclass keeps observability out of the request logic and vice versa.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from permgate.core.model import Principal

DecisionLabel = Literal["allow", "deny", "shadow_deny"]
# Which door the request came through: the inline gateway or the decision service's.
Door = Literal["inline", "envoy", "forward_auth", "authzen"]

# The endpoint label for requests that matched no map entry (bounded, never a path).
UNMAPPED_ENDPOINT: Final = "unmapped"
# The endpoint label for requests refused before routing (request hygiene).
UNROUTED_ENDPOINT: Final = "unrouted"


@dataclass(slots=True)
class RequestOutcome:
    """One request's decision and result. ``reason`` is always from the closed set
    of :mod:`permgate.core.reasons` (:data:`~permgate.core.reasons.ALL_REASONS`): a decision
    reason, an authentication failure reason, a hygiene reason or a refusal."""

    request_id: str
    decision_id: str
    method: str
    path: str
    client_ip: str | None
    started: float  # time.time() when the request arrived
    endpoint: str = UNROUTED_ENDPOINT
    decision: DecisionLabel = "deny"
    reason: str = ""
    # Why: a tenant out of scope, or which credential check failed (expired, unknown
    # key id, revoked, ...). Audit only, never the client, never the credential itself.
    detail: str = ""
    cache_hit: bool = False
    principal: Principal | None = None
    token_id: str | None = None
    tenant: str | None = None
    required: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    status: int = 0
    duration_s: float = 0.0
    decision_s: float | None = None  # the decision alone; None when none was made
    upstream_s: float | None = None
    upstream_error: str | None = None  # "connect" | "timeout" | "aborted"
    auth_failure: str | None = None
    map_sha256: str = ""
    trace_id: str | None = None  # from the caller's W3C traceparent, when valid
    # None: a request the decision listener could not read (its door is unknown).
    door: Door | None = "inline"
