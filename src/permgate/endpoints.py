"""The endpoint map (DESIGN §2.1): load, validate, compile once, match fast.

(Data types below are the contract the rest of permgate uses; the loader and the
matcher are built in this module too.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

TenantSourceKind = Literal["path_param", "header", "claim", "none"]


@dataclass(frozen=True, slots=True)
class TenantSource:
    """Where an endpoint's tenant comes from: ``kind`` plus the param/header/claim name."""

    kind: TenantSourceKind
    name: str | None = None


NO_TENANT: Final = TenantSource("none")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One entry of the map. ``permissions`` are all required; ``any_of`` needs one."""

    id: str
    methods: frozenset[str]  # upper-case; {"*"} for any method
    path: str  # the template, e.g. /policy/{tenantLocator}/quotes/{locator}
    permissions: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    tenant: TenantSource = NO_TENANT
    public: bool = False
    line: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    """A routed request: the endpoint and the raw (still percent-encoded) path params."""

    endpoint: Endpoint
    params: Mapping[str, str] = field(default_factory=dict)
