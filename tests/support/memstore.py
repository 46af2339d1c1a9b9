"""An honest in-memory StoreReader for request-path tests, until the real stores land.

It keeps plain dicts, counts every read, delivers a Change to its watchers on every
``put_*`` (as a real store does after a commit), can hold reads at a gate (to test
single flight) and can be taken down (every call raises StoreUnavailable).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from permgate.core.errors import StoreUnavailable
from permgate.core.model import AuthToken, Principal, Role, Tenant
from permgate.store.base import Change, ChangeKind, OnChanges, OnReset


@dataclass
class MemStore:
    """Dicts of the model's objects plus a change log delivered to watchers."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    principals: dict[str, Principal] = field(default_factory=dict)
    roles: dict[str, dict[str, Role]] = field(default_factory=dict)
    tokens: dict[str, AuthToken] = field(default_factory=dict)
    touched: dict[str, float] = field(default_factory=dict)
    reads: Counter[str] = field(default_factory=Counter)
    down: bool = False
    # When set, reads wait for it: lets a test pile up concurrent misses.
    gate: asyncio.Event | None = None
    _version: int = 0
    _watchers: list[tuple[OnChanges, OnReset]] = field(default_factory=list)

    # -- StoreReader ----------------------------------------------------------------

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        await self._read("tenant")
        return self.tenants.get(tenant_id)

    async def get_principal(self, principal_id: str) -> Principal | None:
        await self._read("principal")
        return self.principals.get(principal_id)

    async def get_roles(self, account: str) -> dict[str, Role]:
        await self._read("roles")
        return dict(self.roles.get(account, {}))

    async def get_token(self, token_id: str) -> AuthToken | None:
        await self._read("token")
        return self.tokens.get(token_id)

    async def touch_tokens(self, last_used: dict[str, float]) -> None:
        await self._read("touch")
        self.touched.update(last_used)

    async def version(self) -> int:
        await self._read("version")
        return self._version

    async def ping(self) -> None:
        await self._read("ping")

    async def _read(self, what: str) -> None:
        self.reads[what] += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise StoreUnavailable("memstore is down")

    # -- change watching --------------------------------------------------------------

    async def watch(self, on_changes: OnChanges, on_reset: OnReset) -> None:
        self._watchers.append((on_changes, on_reset))

    def emit(self, kind: ChangeKind, account: str | None, key: str | None) -> None:
        """Deliver one change to every watcher, as a commit would."""
        self._version += 1
        change = Change(self._version, kind, account, key)
        for on_changes, _ in self._watchers:
            on_changes([change])

    def emit_reset(self) -> None:
        """Tell every watcher it may have missed changes."""
        for _, on_reset in self._watchers:
            on_reset()

    # -- writes (test set-up) -----------------------------------------------------------

    def put_tenant(self, tenant: Tenant, *, notify: bool = True) -> None:
        self.tenants[tenant.id] = tenant
        if notify:
            self.emit("tenant", tenant.account, tenant.id)

    def put_principal(self, principal: Principal, *, notify: bool = True) -> None:
        self.principals[principal.id] = principal
        if notify:
            self.emit("principal", principal.account, principal.id)

    def put_role(self, role: Role, *, notify: bool = True) -> None:
        self.roles.setdefault(role.account, {})[role.name] = role
        if notify:
            self.emit("role", role.account, role.name)

    def put_token(self, token: AuthToken, *, notify: bool = True) -> None:
        self.tokens[token.id] = token
        if notify:
            self.emit("token", token.account, token.id)
