"""permgate's exception tree. Each class carries its HTTP mapping.

PermgateError
├── ConfigError              bad permgate.yaml / environment (exit 2 at start)
├── MapError                 endpoint map invalid; carries every FILE:LINE error
├── InvalidPermission        a permission or grant string breaks the grammar
├── ModelError               a change to the model was refused
│   ├── InvalidInput         422 invalid
│   ├── NotFound             404 not_found
│   ├── Conflict             409 conflict
│   └── Forbidden            403 forbidden
├── StoreUnavailable         503 store_unavailable: the store cannot be reached
│
│   defined beside the one boundary that raises them:
├── authn.AuthFailure        401 unauthenticated, with a reason from a closed set
├── proxy.UpstreamError      502/504: UpstreamUnavailable, UpstreamProtocolError,
│                            UpstreamTimeout (client errors translated there)
├── observability.audit.AuditOverloaded   503 audit_overloaded (overflow: reject)
├── openapi_import.SpecError an OpenAPI document permgate cannot turn into a map
└── policy_file.PolicyError  a policy.yaml with errors, each FILE:LINE: message
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "InvalidPermission",
    "MapError",
    "ModelError",
    "NotFound",
    "PermgateError",
    "StoreUnavailable",
]


class PermgateError(Exception):
    """Base of every error permgate raises on purpose."""

    status_code: int = 500
    error: str = "internal"


class ConfigError(PermgateError):
    """The configuration is invalid; ``problems`` holds one message per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class MapError(PermgateError):
    """The endpoint map is invalid; ``errors`` holds every ``FILE:LINE: message``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class InvalidPermission(PermgateError, ValueError):
    """A permission or grant string does not follow ``group.action``."""

    status_code = 422
    error = "invalid"


class ModelError(PermgateError):
    """A requested change to the access model was refused."""


class InvalidInput(ModelError):
    status_code = 422
    error = "invalid"


class NotFound(ModelError):
    status_code = 404
    error = "not_found"


class Conflict(ModelError):
    status_code = 409
    error = "conflict"


class Forbidden(ModelError):
    status_code = 403
    error = "forbidden"


class StoreUnavailable(PermgateError):
    """The store cannot be reached; security decisions that need it fail closed."""

    status_code = 503
    error = "unavailable"
