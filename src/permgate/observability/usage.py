"""Permission usage: which permissions each principal and token actually exercised.

The observer hands every finished request to :meth:`UsageRecorder.record`, which is
a dictionary update and nothing else (no I/O on the request path). The runtime calls
:meth:`UsageRecorder.flush` every few seconds and once more on shutdown; a flush
writes one row per (principal, token, tenant, permission) with the first and last use
and the number of uses, added to what the store already holds (so the gateways of a
fleet sharing one PostgreSQL add up).

What counts as a use: a request the decision allowed (reason ``allowed``). Public
endpoints, unmapped passthroughs and requests let through only because their tenant
is in shadow mode exercised no permission, and are not usage. The permissions an
allowed request exercised are every permission its endpoint requires, plus those of
the endpoint's ``any_of`` that the caller's effective grants (for a token: the token's
grants capped by its owner's) cover at flush time. When that cannot be worked out (the
store is unreachable, the principal is gone, its grants changed so that none of them
is covered any more), every ``any_of`` member is recorded: usage is overstated rather
than understated, so advice never calls a grant unused that a request may have needed.

Memory is bounded: past ``max_keys`` distinct keys waiting for a flush, further new
keys are dropped and counted (a warning says how many); a write that fails keeps
its rows for the next flush within the same bound.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from permgate.core.decision import Reason, effective_grants
from permgate.core.errors import StoreUnavailable
from permgate.core.model import AuthToken, Principal, Role
from permgate.core.permissions import GrantSet
from permgate.store.sql import UsageRow

if TYPE_CHECKING:
    from permgate.core.endpoints import EndpointMap
    from permgate.observability.outcome import RequestOutcome
    from permgate.store.base import Store

__all__ = ["DEFAULT_MAX_KEYS", "UsageRecorder"]

log: Final = logging.getLogger("permgate.usage")

DEFAULT_MAX_KEYS: Final = 50_000
_ALLOWED: Final = Reason.ALLOWED  # once, not an enum attribute lookup per request

# (principal, account, token id, tenant, required permissions, any_of)
_Key = tuple[str, str, str | None, str | None, tuple[str, ...], tuple[str, ...]]
# (principal, token id, tenant, permission)
_RowKey = tuple[str, str | None, str | None, str]


class ModelReader(Protocol):
    """What the recorder reads of the live model (the gateway's model cache): it sits
    below the gateway, so it names the three reads it needs rather than the cache."""

    async def principal(self, principal_id: str) -> Principal | None: ...
    async def token(self, token_id: str) -> AuthToken | None: ...
    async def roles(self, account: str) -> Mapping[str, Role]: ...


class UsageRecorder:
    """Aggregates allowed requests in memory and writes them to the store in batches."""

    def __init__(
        self,
        model: ModelReader,
        endpoint_map: Callable[[], EndpointMap],
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._model = model
        self._endpoint_map = endpoint_map
        self._max_keys = max_keys
        # key -> [first use, last use, uses]
        self._pending: dict[_Key, list[float]] = {}
        self._unwritten: dict[_RowKey, UsageRow] = {}
        self.dropped = 0  # uses not recorded because the bound was reached

    def __len__(self) -> int:
        return len(self._pending) + len(self._unwritten)

    def record(self, outcome: RequestOutcome) -> None:
        """Count one finished request if it exercised permissions (cheap, no I/O)."""
        principal = outcome.principal
        required: tuple[str, ...] = outcome.required
        if (
            principal is None
            or not required
            or outcome.decision != "allow"
            or outcome.reason != _ALLOWED
        ):
            return
        any_of: tuple[str, ...] = ()
        endpoint = self._endpoint_map().get(outcome.endpoint)
        if (
            endpoint is not None
            and endpoint.any_of
            and required == endpoint.permissions + endpoint.any_of
        ):
            required, any_of = endpoint.permissions, endpoint.any_of
        key: _Key = (
            principal.id,
            principal.account,
            outcome.token_id,
            outcome.tenant,
            required,
            any_of,
        )
        when = outcome.started
        entry = self._pending.get(key)
        if entry is None:
            if len(self) >= self._max_keys:
                self.dropped += 1
                return
            self._pending[key] = [when, when, 1]
            return
        if when < entry[0]:
            entry[0] = when
        if when > entry[1]:
            entry[1] = when
        entry[2] += 1

    async def flush(self, store: Store) -> int:
        """Write what was recorded since the last flush; returns the rows written.
        A store that cannot be reached keeps the rows for the next flush (logged)."""
        pending, self._pending = self._pending, {}
        dropped, self.dropped = self.dropped, 0
        if dropped:
            log.warning(
                "permission usage: %d uses not recorded (more than %d keys waiting)",
                dropped,
                self._max_keys,
            )
        rows = self._unwritten
        self._unwritten = {}
        for key, (first, last, uses) in pending.items():
            principal, account, token_id, tenant, required, any_of = key
            exercised = required + await self._covered(principal, account, token_id, tenant, any_of)
            for permission in dict.fromkeys(exercised):
                row_key = (principal, token_id, tenant, permission)
                row = UsageRow(
                    principal, token_id, tenant, permission, account, first, last, int(uses)
                )
                rows[row_key] = _merge(rows.get(row_key), row)
        if not rows:
            return 0
        try:
            # In key order: two gateways upserting the same keys take their row locks
            # in the same order, so their batches cannot deadlock each other.
            await store.add_usage([rows[k] for k in sorted(rows, key=_order)])
        except StoreUnavailable as exc:
            log.warning("could not record permission usage: %s", exc)
            self._keep(rows)
            return 0
        return len(rows)

    def _keep(self, rows: dict[_RowKey, UsageRow]) -> None:
        """Hold rows a failed write could not store, within the bound."""
        for row_key, row in rows.items():
            if row_key not in self._unwritten and len(self) >= self._max_keys:
                self.dropped += row.uses
                continue
            self._unwritten[row_key] = _merge(self._unwritten.get(row_key), row)

    async def _covered(
        self,
        principal_id: str,
        account: str,
        token_id: str | None,
        tenant: str | None,
        any_of: tuple[str, ...],
    ) -> tuple[str, ...]:
        """The members of ``any_of`` the caller's grants cover now (all of them when
        that cannot be told: see the module docstring)."""
        if not any_of:
            return ()
        try:
            principal = await self._model.principal(principal_id)
            roles = await self._model.roles(account)
            token = await self._model.token(token_id) if token_id is not None else None
        except StoreUnavailable:
            return any_of
        if principal is None or principal.account != account:
            return any_of
        owner = effective_grants(principal, roles, tenant)
        capped: GrantSet | None = None
        if token_id is not None:
            if token is None or token.owner != principal.id:
                return any_of
            capped = GrantSet.from_grants(token.permissions)
        reads = self._endpoint_map().read_actions
        covered = tuple(
            p
            for p in any_of
            if owner.covers(p, reads) and (capped is None or capped.covers(p, reads))
        )
        return covered or any_of


def _order(row_key: _RowKey) -> tuple[str, str, str, str]:
    principal, token_id, tenant, permission = row_key
    return (principal, token_id or "", tenant or "", permission)


def _merge(old: UsageRow | None, new: UsageRow) -> UsageRow:
    if old is None:
        return new
    return UsageRow(
        new.principal,
        new.token_id,
        new.tenant,
        new.permission,
        new.account,
        min(old.first_used, new.first_used),
        max(old.last_used, new.last_used),
        old.uses + new.uses,
    )
