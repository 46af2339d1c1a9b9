"""The special and base roles, defined in this one place.

Every new account gets these four roles. ``admin`` and ``read-only`` are *special*:
their power comes from their name, not from their stored grants (admin's ``*.*``
and implicit access to every tenant cannot be edited away; read-only's "every read
action" is a rule, since ``*.read`` is not a valid grant). ``full-access`` and
``claims-only`` are *base* roles: ordinary grants, editable, never deletable.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final

from permgate.core.model import Role
from permgate.core.permissions import GrantSet

__all__ = [
    "ADMIN",
    "BASE_ROLES",
    "BUILTIN_ROLE_NAMES",
    "CLAIMS_ONLY",
    "FULL_ACCESS",
    "READ_ONLY",
    "ROLES_WITH_READ_RULE",
    "SPECIAL_ROLES",
    "builtin_roles",
    "role_grants",
]

ADMIN: Final = "admin"
READ_ONLY: Final = "read-only"
FULL_ACCESS: Final = "full-access"
CLAIMS_ONLY: Final = "claims-only"

SPECIAL_ROLES: Final = frozenset({ADMIN, READ_ONLY})
BASE_ROLES: Final = frozenset({FULL_ACCESS, CLAIMS_ONLY})
BUILTIN_ROLE_NAMES: Final = SPECIAL_ROLES | BASE_ROLES

# Roles that carry the built-in "every read action" rule on top of their grants.
ROLES_WITH_READ_RULE: Final = frozenset({READ_ONLY, CLAIMS_ONLY})

# (display name, default grants). Claims Only, as the platform defines it: "read permissions to
# most policy administration data along with full permissions to claims, update
# permissions for media, and the ability to quote and check calculations". The
# names cover both product lines: Connected Core (claim, media, quote, calculation)
# and Insurance Suite (fnols, mediadata, quotes.price, quick-quotes).
_DEFINITIONS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    ADMIN: ("Administrator", ("*.*",)),
    READ_ONLY: ("Read Only", ()),
    FULL_ACCESS: ("Full Access", ("*.*",)),
    CLAIMS_ONLY: (
        "Claims Only",
        (
            "claim.*",
            "claims.*",
            "fnols.*",
            "media.update",
            "mediadata.update",
            "quote.quote",
            "quotes.price",
            "quick-quotes.*",
            "calculation.*",
        ),
    ),
}


def builtin_roles(account: str) -> tuple[Role, ...]:
    """The roles every new account starts with."""
    return tuple(
        Role(account=account, name=name, display_name=display, permissions=grants, builtin=True)
        for name, (display, grants) in _DEFINITIONS.items()
    )


_ADMIN_GRANTS: Final = GrantSet(everything=True)


@lru_cache(maxsize=4096)
def role_grants(role: Role) -> GrantSet:
    """Compile a role's grants, applying the rules that come with special names."""
    if role.name == ADMIN:
        return _ADMIN_GRANTS  # admin's *.* cannot be edited away
    return GrantSet.from_grants(role.permissions, reads=role.name in ROLES_WITH_READ_RULE)
