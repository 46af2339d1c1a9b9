"""The admin API's guard: permgate's own evaluation applied to the admin API.

Every request is evaluated by :mod:`permgate.gateway.evaluate` against the admin endpoint map
(``admin_map.yaml``) with the gateway's :class:`Authenticator`: request hygiene,
route, public, authenticate, permissions with the caller's roles and token, so an
auth token is capped by its grants and its owner here exactly as on the gateway. The
guard only renders the evaluation; when it allows, the handler runs with the caller
under :data:`CALLER`. The guard applies the admin map only (which operation needs
which permission); the rules of the model (who may act on which principal, tenant or
token) are the service's, whose refusals carry their ``reason``. Every error, whoever
raised it, leaves as the admin API's JSON error shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Final

from aiohttp import web

from permgate.admin.openapi import query_schemas
from permgate.admin.render import ApiError
from permgate.admin.schemas import parse_query
from permgate.core.decision import Decision, Subject, decide
from permgate.core.endpoints import Endpoint, EndpointMap, Match
from permgate.core.errors import (
    InvalidInput,
    InvalidPermission,
    ModelError,
    StoreUnavailable,
)
from permgate.core.reasons import HygieneReason
from permgate.gateway import hygiene
from permgate.gateway.authn import Authenticator, Identity
from permgate.gateway.evaluate import EvalRequest, Evaluator
from permgate.gateway.modelcache import ModelCache
from permgate.manage.service import Actor
from permgate.maps.loader import parse_map

__all__ = [
    "ADMIN_MAP",
    "ASSIGN_ROLES",
    "CALLER",
    "QUERY",
    "SET_OTHERS_PASSWORD",
    "Caller",
    "Guard",
]

ADMIN_MAP: Final[EndpointMap] = parse_map(
    files("permgate.admin").joinpath("admin_map.yaml").read_text("utf-8"),
    "permgate/admin/admin_map.yaml",
)


def _entry(endpoint_id: str) -> Endpoint:
    endpoint = ADMIN_MAP.get(endpoint_id)
    if endpoint is None:
        raise RuntimeError(f"admin_map.yaml has no entry {endpoint_id!r}")
    return endpoint


# Creating a principal with roles needs what assigning roles needs.
ASSIGN_ROLES: Final = _entry("admin.principals.roles")
# Setting another principal's password needs what changing a principal needs.
SET_OTHERS_PASSWORD: Final = _entry("admin.principals.update")

_AUTH_DETAILS: Final = {
    "missing_credentials": "send Authorization: Bearer <auth token or JWT>",
    "invalid_token": "the credential is not a valid auth token or JWT",
    "expired_token": "the credential has expired",
    "revoked_token": "the auth token is revoked",
    "session_revoked": "the session was revoked: log in again",
    "unknown_principal": "the credential names no known principal",
    "disabled_principal": "the principal is disabled",
}

_HYGIENE_DETAILS: Final[dict[str, str]] = {
    HygieneReason.DUPLICATE_HEADER: "the Authorization header is sent more than once",
    HygieneReason.AMBIGUOUS_HEADER: (
        "a header name with '_' would read as Authorization: it is refused"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of one request, as handlers need it."""

    identity: Identity
    subject: Subject
    actor: Actor

    @property
    def account(self) -> str:
        """Every object a handler touches belongs to this account."""
        return self.identity.principal.account


CALLER: Final = web.RequestKey("permgate_admin_caller", Caller)
# The request's query parameters, checked against the operation's schemas, defaults in.
QUERY: Final = web.RequestKey("permgate_admin_query", dict[str, object])

log: Final = logging.getLogger("permgate.admin")


def authorize(endpoint: Endpoint, subject: Subject, what: str | None = None) -> None:
    """403 unless ``subject`` holds everything ``endpoint`` requires; the detail says
    whether the principal or only its token lacks it (``what`` names the action when
    it is not the endpoint itself)."""
    decision = decide(ADMIN_MAP, Match(endpoint), subject, None, None)
    if not decision.allowed:
        raise _forbidden(endpoint, subject, decision, what)


def _forbidden(
    endpoint: Endpoint, subject: Subject, decision: Decision, what: str | None = None
) -> ApiError:
    """The 403 for a denied ``decision``, saying whether the principal or only its
    token lacks what ``endpoint`` requires."""
    missing = ", ".join(decision.missing)
    who = f"principal {subject.principal.id!r} lacks {missing}"
    if subject.token is not None:
        owner = decide(ADMIN_MAP, Match(endpoint), replace(subject, token=None), None, None)
        if owner.allowed:
            who = f"auth token {subject.token.id!r} does not grant {missing} (its owner does)"
    return ApiError(
        403,
        "forbidden",
        f"{what or endpoint.id} requires {', '.join(decision.required)}; {who}",
        reason=str(decision.reason),
        extra={"missing_permissions": list(decision.missing)},
    )


class Guard:
    """The admin sub-app's one middleware (see the module docstring)."""

    def __init__(self, authenticator: Authenticator, model: ModelCache) -> None:
        self._authenticator = authenticator
        self._model = model
        # The admin API addresses ids percent-encoded (a SPIFFE id holds '/'), and its
        # path parameters are checked for control characters below.
        self._evaluator = Evaluator(ADMIN_MAP, model, authenticator, check_target=False)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Route, authenticate, decide; then run the handler and render its errors."""
        request_id = hygiene.request_id(request.headers)
        try:
            response = await self._guarded(request, handler)
        except ApiError as exc:
            response = exc.response(request_id)
        except ModelError as exc:
            # The service's refusal, with its reason (admin_required, not_token_owner...).
            error = ApiError(exc.status_code, exc.error, str(exc), reason=exc.reason)
            response = error.response(request_id)
        except InvalidPermission as exc:
            response = ApiError(exc.status_code, exc.error, str(exc)).response(request_id)
        except StoreUnavailable:
            # The exception names the store's file or host: keep that for the logs.
            error = ApiError(
                503, "unavailable", "the store is unreachable", reason="store_unavailable"
            )
            response = error.response(request_id)
        except web.HTTPException as exc:  # e.g. 413 from request.read()
            name = exc.reason.lower().replace(" ", "_")
            response = ApiError(exc.status, name, exc.text or exc.reason).response(request_id)
        except Exception:
            # Anything else is a bug or a broken store row: the traceback goes to the
            # server log only, the client gets the JSON shape and an id to quote.
            log.exception(
                "admin API: unexpected error answering %s %s (request id %s)",
                request.method,
                request.path,
                request_id,
            )
            response = ApiError(
                500,
                "internal",
                "an unexpected error occurred; the server log has the details under "
                f"request id {request_id}",
            ).response(request_id)
        response.headers["X-Request-Id"] = request_id
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        evaluation = await self._evaluator.evaluate(
            EvalRequest(request.method, request.raw_path, request.headers, request.version)
        )
        if evaluation.refusal is not None:
            raise ApiError(
                400,
                "bad_request",
                _HYGIENE_DETAILS.get(
                    evaluation.refusal, "the request could be read two ways: it is refused"
                ),
                reason=evaluation.refusal,
            )
        match = evaluation.match
        if match is None:
            raise _unrouted(request)
        if match.endpoint.public:
            return await handler(request)
        failure = evaluation.failure
        if failure is not None:
            raise ApiError(
                401,
                "unauthenticated",
                _AUTH_DETAILS[failure.reason],
                reason=failure.reason,
                headers={"WWW-Authenticate": failure.www_authenticate},
            ) from failure
        identity, subject, decision = evaluation.identity, evaluation.subject, evaluation.decision
        assert identity is not None and subject is not None and decision is not None
        if not decision.allowed:
            raise _forbidden(match.endpoint, subject, decision)
        _check_path_parameters(request)
        request[QUERY] = parse_query(query_schemas(match.endpoint.id), request.query.items())
        request[CALLER] = Caller(identity, subject, Actor.of(identity.principal, identity.token))
        return await handler(request)


def _check_path_parameters(request: web.Request) -> None:
    """No object's id or name holds a control character, so a path parameter with one
    (``%00``) is refused before it reaches the store, where PostgreSQL cannot hold it."""
    for name, value in request.match_info.items():
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            raise InvalidInput(f"path parameter {name!r} contains a control character")


def _unrouted(request: web.Request) -> ApiError:
    exc = request.match_info.http_exception
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        return ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not an operation of {request.path}; "
            f"allowed: {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )
    return ApiError(
        404,
        "not_found",
        f"no admin API operation {request.method} {request.path} "
        "(the operations are listed at /v1/openapi.json)",
        reason="unmapped_route",
    )
