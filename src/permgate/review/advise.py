"""Least privilege from real usage: what a principal or a token holds but never used.

The gateways record which permissions each principal and token exercised on which
tenant (:mod:`permgate.observability.usage`); :func:`advise` reads the uses of the
last ``days`` days and answers, for a principal or a token:

* ``used``: each (permission, tenant) exercised, with its count and last use (a
  principal's uses include those made through its tokens: a token acts with its
  owner's grants);
* ``unused_grants``: the grants it holds that cover no exercised permission. A
  principal's grant is held through a role assignment and counts as used only by
  uses on the tenants that assignment applies to (every tenant when it names none).
  Coverage is the pure core's (:class:`permgate.core.permissions.GrantSet`), so ``group.*``
  and ``*.*`` are used when any permission they cover was. The built-in read rule of
  ``read-only`` and ``claims-only`` is not a grant string and is not listed;
* ``suggested_grants``: the exercised permissions themselves, exact and never
  wildcards: the narrowest set that would have allowed everything it did;
* ``suggested_tenants``: the tenants it exercised them on. For a token the two are
  a narrower token to replace it.

A row counts in the window when its last use is in it; its count is every use since
its first (rows are not kept per day).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from permgate.core.permissions import GrantSet
from permgate.core.roles import ADMIN

if TYPE_CHECKING:
    from permgate.core.model import AuthToken, Principal, Role
    from permgate.store.base import Store
    from permgate.store.sql import UsageRow

__all__ = ["MAX_DAYS", "Advice", "Used", "advise", "advise_principal", "advise_token"]

DAY_SECONDS: Final = 86_400
MAX_DAYS: Final = 3650

SubjectKind = Literal["principal", "token"]


@dataclass(frozen=True, slots=True)
class Used:
    """One permission exercised on one tenant (None: an endpoint without a tenant)."""

    permission: str
    tenant: str | None
    count: int
    last_used: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "permission": self.permission,
            "tenant": self.tenant,
            "count": self.count,
            "last_used": iso(self.last_used),
        }


@dataclass(frozen=True, slots=True)
class Advice:
    """What :func:`advise` answers; see the module docstring."""

    kind: SubjectKind
    subject: str
    days: int
    used: tuple[Used, ...]
    unused_grants: tuple[str, ...]
    suggested_grants: tuple[str, ...]
    suggested_tenants: tuple[str, ...]
    owner: str | None = None  # a token's owner
    name: str | None = None  # a token's name

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``permgate advise --json`` and the admin API."""
        return {
            "subject": self.subject,
            "kind": self.kind,
            "days": self.days,
            "used": [u.as_dict() for u in self.used],
            "unused_grants": list(self.unused_grants),
            "suggested_grants": list(self.suggested_grants),
            "suggested_tenants": list(self.suggested_tenants),
        }


def iso(epoch: float) -> str:
    """An instant as ISO 8601 UTC with a ``Z``, to the second."""
    return datetime.fromtimestamp(int(epoch), UTC).isoformat().replace("+00:00", "Z")


def _used(rows: Iterable[UsageRow]) -> tuple[Used, ...]:
    """Rows summed per (permission, tenant), sorted by permission then tenant."""
    merged: dict[tuple[str, str | None], tuple[int, float]] = {}
    for row in rows:
        key = (row.permission, row.tenant)
        count, last = merged.get(key, (0, 0.0))
        merged[key] = (count + row.uses, max(last, row.last_used))
    return tuple(
        Used(permission, tenant, count, last)
        for (permission, tenant), (count, last) in sorted(
            merged.items(), key=lambda item: (item[0][0], item[0][1] or "")
        )
    )


def _suggestions(rows: Collection[UsageRow]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    grants = tuple(sorted({row.permission for row in rows}))
    tenants = tuple(sorted({row.tenant for row in rows if row.tenant is not None}))
    return grants, tenants


def _covers_any(grant: str, rows: Iterable[UsageRow]) -> bool:
    # One grant string on its own: the read rule (the only use of the map's read
    # actions) is a role's flag, never a grant, so it plays no part here.
    compiled = GrantSet.from_grants((grant,))
    return any(compiled.covers(row.permission) for row in rows)


def advise_principal(
    principal: Principal,
    roles: Mapping[str, Role],
    rows: Collection[UsageRow],
    days: int,
) -> Advice:
    """Advice for ``principal`` from its uses in the window (``rows``)."""
    used_grants: set[str] = set()
    held: list[str] = []
    for assignment in principal.roles:
        role = roles.get(assignment.role)
        if role is None or role.account != principal.account:
            continue
        grants = ("*.*",) if role.name == ADMIN else role.permissions
        here = [r for r in rows if assignment.tenant is None or r.tenant == assignment.tenant]
        for grant in grants:
            held.append(grant)
            if grant not in used_grants and _covers_any(grant, here):
                used_grants.add(grant)
    unused = tuple(sorted({g for g in held if g not in used_grants}))
    suggested, tenants = _suggestions(rows)
    return Advice("principal", principal.id, days, _used(rows), unused, suggested, tenants)


def advise_token(
    token: AuthToken,
    rows: Collection[UsageRow],
    days: int,
) -> Advice:
    """Advice for ``token`` from its uses in the window (``rows``)."""
    unused = tuple(sorted({g for g in token.permissions if not _covers_any(g, rows)}))
    suggested, tenants = _suggestions(rows)
    return Advice(
        "token",
        token.id,
        days,
        _used(rows),
        unused,
        suggested,
        tenants,
        owner=token.owner,
        name=token.name,
    )


class UnknownSubject(Exception):
    """The principal or token asked about does not exist (in the caller's account)."""


async def advise(
    store: Store,
    *,
    principal: str | None = None,
    token: str | None = None,
    days: int,
    account: str | None = None,
    now: float | None = None,
) -> Advice:
    """Read the subject and its uses of the last ``days`` days from ``store``.

    ``account``, when given, confines the answer to that account: a subject of another
    account is as unknown as a missing one. Raises :class:`UnknownSubject`.
    """
    since = (time.time() if now is None else now) - days * DAY_SECONDS
    if token is not None:
        found = await store.get_token(token)
        if found is None or (account is not None and found.account != account):
            raise UnknownSubject(f"token {token!r} not found")
        rows = await store.list_usage(token_id=found.id, since=since)
        return advise_token(found, rows, days)
    assert principal is not None
    subject = await store.get_principal(principal)
    if subject is None or (account is not None and subject.account != account):
        raise UnknownSubject(f"principal {principal!r} not found")
    roles = await store.get_roles(subject.account)
    rows = await store.list_usage(principal=subject.id, since=since)
    return advise_principal(subject, roles, rows, days)


def advice_text(advice: Advice) -> str:
    """The human form of ``permgate advise``."""
    who = f"{advice.kind} {advice.subject}"
    if advice.kind == "token":
        who += f" ({advice.name!r} of {advice.owner})"
    lines = [f"{who}, last {advice.days} day{'s' * (advice.days != 1)}:"]
    if not advice.used:
        lines.append("  no use recorded in the window")
    else:
        lines.append("used:")
        for u in advice.used:
            uses = f"{u.count} use{'s' * (u.count != 1)}"
            lines.append(
                f"  {u.permission} on {u.tenant or '(no tenant)'}: {uses}, last {iso(u.last_used)}"
            )
    lines.append("unused grants (cover nothing used in the window):")
    lines.extend(f"  {g}" for g in advice.unused_grants or ("(none)",))
    lines.append("suggested grants (exact permissions covering everything used):")
    lines.extend(f"  {g}" for g in advice.suggested_grants or ("(none)",))
    lines.append("suggested tenants:")
    lines.extend(f"  {t}" for t in advice.suggested_tenants or ("(none)",))
    if advice.kind == "token" and advice.suggested_grants:
        words = ["permgate", "tokens", "create", "--owner", advice.owner or ""]
        words += ["--name", f"{advice.name} (narrowed)"]
        for grant in advice.suggested_grants:
            words += ["--permission", grant]
        for tenant in advice.suggested_tenants:
            words += ["--tenant", tenant]
        lines.append("a narrower token to replace it:")
        lines.append("  " + shlex.join(words))
        lines.append("  " + shlex.join(["permgate", "tokens", "revoke", advice.subject]))
    return "\n".join(lines)
