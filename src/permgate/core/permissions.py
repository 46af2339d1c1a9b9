"""Permission grammar and grant coverage.

A *permission* is ``group.action``; a *grant* may also be ``group.*`` or ``*.*``.
Grants are compiled once into a :class:`GrantSet`, whose ``covers`` is two set
lookups: it runs on every uncached decision.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from permgate.core.errors import InvalidPermission

__all__ = [
    "DEFAULT_READ_ACTIONS",
    "EMPTY_GRANTS",
    "GrantSet",
    "check_identifier",
    "parse_grant",
    "parse_permission",
]

DEFAULT_READ_ACTIONS: Final = frozenset({"read", "list", "fetch", "schedule-read"})

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_identifier(text: str) -> bool:
    """True when ``text`` is a group or action name: ``[A-Za-z][A-Za-z0-9_-]*``."""
    return _IDENTIFIER.fullmatch(text) is not None


def _split(text: str, kind: str) -> tuple[str, str]:
    if text.count(".") != 1:
        raise InvalidPermission(
            f"{kind} {text!r} is invalid: expected exactly one '.' as in 'group.action'"
        )
    group, action = text.split(".")
    return group, action


def _check_part(text: str, part: str, which: str, kind: str) -> None:
    if not part:
        raise InvalidPermission(f"{kind} {text!r} is invalid: the {which} is empty")
    if not check_identifier(part):
        raise InvalidPermission(
            f"{kind} {text!r} is invalid: {which} {part!r} must match [A-Za-z][A-Za-z0-9_-]*"
        )


def parse_permission(text: object) -> tuple[str, str]:
    """Validate a *required* permission (no wildcard) and return (group, action)."""
    if not isinstance(text, str):
        raise InvalidPermission(f"permission {text!r} is not a string")
    group, action = _split(text, "permission")
    if "*" in text:
        raise InvalidPermission(
            f"permission {text!r} is invalid: a required permission never contains '*'"
        )
    _check_part(text, group, "group", "permission")
    _check_part(text, action, "action", "permission")
    return group, action


def parse_grant(text: object) -> tuple[str, str]:
    """Validate a grant: ``group.action``, ``group.*`` or ``*.*``; return its parts."""
    if not isinstance(text, str):
        raise InvalidPermission(f"grant {text!r} is not a string")
    group, action = _split(text, "grant")
    if group == "*":
        if action != "*":
            raise InvalidPermission(
                f"grant {text!r} is invalid: '*.{action}' is not allowed, only 'group.*' or '*.*'"
            )
        return group, action
    _check_part(text, group, "group", "grant")
    if action != "*":
        _check_part(text, action, "action", "grant")
    return group, action


@dataclass(frozen=True, slots=True)
class GrantSet:
    """Compiled grants: exact permissions, whole groups, everything, every read action.

    ``reads`` is the built-in rule of the ``read-only`` and ``claims-only`` roles:
    every permission whose action is one of the map's read actions. It is a flag,
    not a list of grants, because ``*.read`` is not a valid grant.
    """

    exact: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    everything: bool = False
    reads: bool = False

    @classmethod
    def from_grants(cls, grants: Iterable[str], *, reads: bool = False) -> GrantSet:
        """Compile grant strings; raises :class:`InvalidPermission` on the first bad one."""
        exact: set[str] = set()
        groups: set[str] = set()
        everything = False
        for grant in grants:
            group, action = parse_grant(grant)
            if group == "*":
                everything = True
            elif action == "*":
                groups.add(group)
            else:
                exact.add(grant)
        return cls(frozenset(exact), frozenset(groups), everything, reads)

    def union(self, other: GrantSet) -> GrantSet:
        """Grants of two roles held together: the union of both."""
        return GrantSet(
            self.exact | other.exact,
            self.groups | other.groups,
            self.everything or other.everything,
            self.reads or other.reads,
        )

    def covers(self, permission: str, read_actions: Collection[str] = DEFAULT_READ_ACTIONS) -> bool:
        """Whether this set grants ``permission`` (a valid, wildcard-free permission)."""
        if self.everything or permission in self.exact:
            return True
        group, _, action = permission.partition(".")
        if group in self.groups:
            return True
        return self.reads and action in read_actions

    def beyond(
        self, grants: Iterable[str], read_actions: Collection[str] = DEFAULT_READ_ACTIONS
    ) -> list[str]:
        """The grants among ``grants`` that would give more than this set holds: what a
        token asking for them would have beyond its owner. A ``group.*``
        also grants actions added later, so only ``group.*`` or ``*.*`` contain it."""
        beyond: list[str] = []
        for grant in grants:
            group, action = parse_grant(grant)
            if self.everything:
                continue
            if group == "*":
                exceeds = True
            elif action == "*":
                exceeds = group not in self.groups
            else:
                exceeds = not self.covers(grant, read_actions)
            if exceeds:
                beyond.append(grant)
        return beyond

    def __bool__(self) -> bool:
        return bool(self.everything or self.reads or self.exact or self.groups)


EMPTY_GRANTS: Final = GrantSet()
