"""permgate's exception tree. Each class carries its HTTP mapping.

PermgateError
├── ProblemList              a file (or settings) with problems, every one listed at
│   │                        once as ``FILE:LINE: WHERE: WHAT`` (see core.yamlnodes)
│   ├── ConfigError          bad permgate.yaml / environment (exit 2 at start)
│   ├── MapError             an endpoint map
│   ├── PolicyError          a policy.yaml (apply, lint, diff, test)
│   └── SuiteError           a ``permgate test`` suite
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
└── openapi_import.SpecError an OpenAPI document permgate cannot turn into a map

The subclasses of :class:`ProblemList` differ only in name: the CLI and the admin API
tell a bad map from a bad policy (and a bad configuration exits 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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
    "PolicyError",
    "Problem",
    "ProblemList",
    "StoreUnavailable",
    "SuiteError",
]


class PermgateError(Exception):
    """Base of every error permgate raises on purpose."""

    status_code: int = 500
    error: str = "internal"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input: ``FILE:LINE: WHERE: WHAT``.

    ``where`` is the path inside the file (``endpoints[3].public``, ``auth.jwt.issuer``);
    ``what`` says what is wrong and why. Parts that are unknown are left out, so a
    problem with no file (an environment variable) is just ``WHERE: WHAT``.
    """

    what: str
    source: str = ""
    line: int | None = None
    where: str = ""

    def __str__(self) -> str:
        head = self.source
        if head and self.line is not None:
            head = f"{head}:{self.line}"
        return ": ".join(part for part in (head, self.where, self.what) if part)


class ProblemList(PermgateError):
    """Everything wrong with one input, reported together (never only the first).

    ``problems`` holds the :class:`Problem` s (plain strings become problems with only
    ``what``); ``errors`` and ``str()`` give them as lines, one per problem.
    """

    status_code = 422
    error = "invalid"

    def __init__(self, problems: Iterable[Problem | str]) -> None:
        self.items: tuple[Problem, ...] = tuple(
            p if isinstance(p, Problem) else Problem(p) for p in problems
        )
        super().__init__("\n".join(self.errors))

    @property
    def errors(self) -> list[str]:
        """One ``FILE:LINE: WHERE: WHAT`` line per problem."""
        return [str(problem) for problem in self.items]

    @property
    def problems(self) -> list[str]:
        """The same lines as :attr:`errors` (the name the configuration's callers use)."""
        return self.errors


class ConfigError(ProblemList):
    """The configuration is invalid: permgate.yaml, the environment or a file it names."""

    status_code = 500
    error = "internal"


class MapError(ProblemList):
    """An endpoint map is invalid; it is never half-applied."""

    status_code = 500
    error = "internal"


class PolicyError(ProblemList):
    """A policy file is invalid, or applying it would break a rule of the model."""


class SuiteError(ProblemList):
    """A ``permgate test`` suite file is invalid."""


class InvalidPermission(PermgateError, ValueError):
    """A permission or grant string does not follow ``group.action``."""

    status_code = 422
    error = "invalid"


class ModelError(PermgateError):
    """A requested change to the access model was refused.

    ``reason`` is a stable id for the refusal when callers tell refusals apart (the
    admin API answers it: ``admin_required``, ``not_token_owner``), so that no caller
    checks the rule itself first to find out which one it was.
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


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
