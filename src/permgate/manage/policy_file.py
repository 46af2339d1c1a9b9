"""``policy.yaml``: parse with line numbers, validate as a whole, plan
the changes against the store, then apply them in one transaction.

Three stages, so that nothing is written unless everything is right:

1. :func:`parse_policy` checks the file's shape (keys, types, grammar, duplicate
   ids) and reports every problem as ``FILE:LINE: message``.
2. :func:`plan_policy` compares it with the store and checks every reference
   (roles, tenants, accounts) and every rule that the current state decides
   (immutable names and types, one-way enforcement, ``--prune`` of held roles).
   Its result is a list of :class:`Action` s; an empty list means "no changes".
3. :func:`apply_plan` runs the actions through :class:`permgate.manage.service.ModelService`
   in one transaction: a rule the service still refuses rolls everything back.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml

from permgate.core.endpoints import EndpointMap
from permgate.core.errors import InvalidPermission, PolicyError, Problem
from permgate.core.model import (
    ENFORCEMENTS,
    PRINCIPAL_KINDS,
    SCOPE_ANY,
    SCOPE_TYPE_TEST,
    TENANT_TYPES,
    Principal,
    Role,
    Tenant,
)
from permgate.core.passwords import LOCKOUT_KEYS, POLICY_KEYS, PasswordPolicy
from permgate.core.passwords import parse_policy as parse_password_policy
from permgate.core.permissions import parse_grant
from permgate.core.roles import BUILTIN_ROLE_NAMES, builtin_roles
from permgate.core.yamlnodes import Keys, NodeReader, compose, item, key, line_of, read_text
from permgate.manage.service import (
    ACCOUNT_ID,
    PRINCIPAL_ID,
    ROLE_NAME,
    TENANT_ID,
    Actor,
    ModelService,
    admin_grants_refusal,
    display_name_refusal,
    enforcement_refusal,
    tenant_type_refusal,
)
from permgate.store.base import Store

__all__ = [
    "Action",
    "Policy",
    "PolicyError",
    "apply_plan",
    "load_policy",
    "parse_policy",
    "parse_policy_node",
    "plan_policy",
    "unused_grants",
]


@dataclass(frozen=True, slots=True)
class Ref:
    """A name the file mentions, with the line it is on."""

    value: str
    line: int


@dataclass(frozen=True, slots=True)
class TenantSpec:
    id: str
    type: str
    enforcement: str | None
    line: int


@dataclass(frozen=True, slots=True)
class RoleSpec:
    name: str
    display_name: str | None
    permissions: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class PrincipalSpec:
    id: str
    kind: str
    roles: tuple[Ref, ...]
    tenant_roles: tuple[tuple[Ref, tuple[Ref, ...]], ...]
    tenants: tuple[Ref, ...]
    disabled: bool
    line: int


@dataclass(frozen=True, slots=True)
class AccountSpec:
    id: str
    tenants: tuple[TenantSpec, ...]
    roles: tuple[RoleSpec, ...]
    principals: tuple[PrincipalSpec, ...]
    line: int
    # None: the file does not say (the stored policy is left alone, unless --prune).
    password_policy: PasswordPolicy | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed, well-formed policy file."""

    source: str
    accounts: tuple[AccountSpec, ...]


_ROOT_KEYS: Final = ("accounts",)
_ACCOUNT_KEYS: Final = ("id", "tenants", "roles", "principals", "password_policy")
_TENANT_KEYS: Final = ("id", "type", "enforcement")
_ROLE_KEYS: Final = ("name", "display_name", "permissions")
_PRINCIPAL_KEYS: Final = ("id", "kind", "roles", "tenant_roles", "tenants", "disabled")


class _Parser(NodeReader):
    """Walks the composed tree of a policy, recording every problem with its line."""

    def __init__(self, source: str, where: str = "") -> None:
        super().__init__(source, "the policy file")
        self.base = where  # the path of the policy inside its file ("" at the top)

    def required(self, keys: Keys, name: str, where: str, line: int, what: str) -> str | None:
        """The non-empty string under key ``name`` (``what`` names it when missing)."""
        if name not in keys:
            self.note(line, f"{what} is missing")
            return None
        return self.string(keys[name][1], key(where, name), empty=False)

    def ident(
        self, keys: Keys, name: str, where: str, line: int, what: str, pattern: re.Pattern[str]
    ) -> str | None:
        value = self.required(keys, name, where, line, what)
        if value is not None and pattern.fullmatch(value) is None:
            self.note(keys[name][1], f"{what} {value!r} is invalid: expected {pattern.pattern}")
            return None
        return value

    def one_of(
        self, node: yaml.Node, where: str, what: str, options: tuple[str, ...]
    ) -> str | None:
        value = self.string(node, where, empty=False)
        if value is not None and value not in options:
            self.note(node, f"{what} {value!r} is invalid: expected one of {', '.join(options)}")
            return None
        return value

    def list_of(self, keys: Keys, name: str, where: str) -> list[tuple[str, yaml.Node]]:
        """The items of the list under ``name`` (absent or empty: none), with their paths."""
        if name not in keys:
            return []
        list_where = key(where, name)
        items = self.sequence(keys[name][1], list_where, null=True) or []
        return [(item(list_where, index), node) for index, node in enumerate(items)]

    def refs(self, keys: Keys, name: str, where: str) -> tuple[Ref, ...]:
        out: list[Ref] = []
        for item_where, node in self.list_of(keys, name, where):
            value = self.string(node, item_where, empty=False)
            if value is not None:
                out.append(Ref(value, line_of(node)))
        return tuple(out)

    def document(self, root: yaml.Node) -> tuple[AccountSpec, ...]:
        keys = self.mapping(root, self.base, _ROOT_KEYS)
        if keys is None:
            return ()
        if "accounts" not in keys:
            self.note(root, "the policy file has no 'accounts' list")
            return ()
        accounts = [self.account(n, w) for w, n in self.list_of(keys, "accounts", self.base)]
        return tuple(a for a in accounts if a is not None)

    def account(self, node: yaml.Node, where: str) -> AccountSpec | None:
        keys = self.mapping(node, where, _ACCOUNT_KEYS)
        if keys is None:
            return None
        line = line_of(node)
        account = self.ident(keys, "id", where, line, "account id", ACCOUNT_ID)
        tenants = [self.tenant(n, w) for w, n in self.list_of(keys, "tenants", where)]
        roles = [self.role(n, w) for w, n in self.list_of(keys, "roles", where)]
        principals = [self.principal(n, w) for w, n in self.list_of(keys, "principals", where)]
        password_policy = None
        if "password_policy" in keys:
            password_policy = self.password_policy(
                keys["password_policy"][1], key(where, "password_policy"), f"account {account!r}"
            )
        if account is None:
            return None
        return AccountSpec(
            account,
            tuple(t for t in tenants if t is not None),
            tuple(r for r in roles if r is not None),
            tuple(p for p in principals if p is not None),
            line,
            password_policy,
        )

    def password_policy(self, node: yaml.Node, where: str, owner: str) -> PasswordPolicy | None:
        """An account's ``password_policy``: its keys read as every mapping of the file
        is (unknown, repeated, not a mapping); its values checked by the password
        rules, each problem on its key's line. A policy that would lower the mandatory
        floor is an error, never clamped."""
        keys = self.mapping(node, where, POLICY_KEYS)
        if keys is None:
            return None
        lines: dict[tuple[str | int, ...], int] = {}
        raw: dict[str, object] = {}
        for name, (key_node, value_node) in keys.items():
            lines[(name,)] = line_of(key_node)
            if name == "lockout" and isinstance(value_node, yaml.MappingNode):
                lockout_where = key(where, "lockout")
                inner = self.mapping(value_node, lockout_where, LOCKOUT_KEYS) or {}
                raw[name] = {
                    part: self.plain(value, (name, part), lines, key(lockout_where, part))
                    for part, (_, value) in inner.items()
                }
                lines.update({(name, part): line_of(k) for part, (k, _) in inner.items()})
            else:
                raw[name] = self.plain(value_node, (name,), lines, key(where, name))
        policy, problems = parse_password_policy(raw)
        for name, message in problems:
            path = tuple(name.split("."))
            self.note(lines.get(path, line_of(node)), f"password_policy of {owner}: {message}")
        return policy

    def tenant(self, node: yaml.Node, where: str) -> TenantSpec | None:
        keys = self.mapping(node, where, _TENANT_KEYS)
        if keys is None:
            return None
        line = line_of(node)
        tenant_id = self.ident(keys, "id", where, line, "tenant id", TENANT_ID)
        if tenant_id == SCOPE_ANY:
            self.note(line, "tenant id 'any' is reserved: it is a tenant scope keyword")
            tenant_id = None
        kind = "PRODUCTION"
        if "type" in keys:
            kind = (
                self.one_of(keys["type"][1], key(where, "type"), "tenant type", TENANT_TYPES)
                or kind
            )
        enforcement = None
        if "enforcement" in keys:
            enforcement = self.one_of(
                keys["enforcement"][1], key(where, "enforcement"), "enforcement", ENFORCEMENTS
            )
        if tenant_id is None:
            return None
        return TenantSpec(tenant_id, kind, enforcement, line)

    def role(self, node: yaml.Node, where: str) -> RoleSpec | None:
        keys = self.mapping(node, where, _ROLE_KEYS)
        if keys is None:
            return None
        line = line_of(node)
        name = self.ident(keys, "name", where, line, "role name", ROLE_NAME)
        display = None
        if "display_name" in keys:
            display = self.string(keys["display_name"][1], key(where, "display_name"), empty=False)
        grants: list[str] = []
        for item_where, item_node in self.list_of(keys, "permissions", where):
            value = self.string(item_node, item_where, empty=False)
            if value is None:
                continue
            try:
                parse_grant(value)
            except InvalidPermission as exc:
                self.note(item_node, str(exc))
                continue
            if value not in grants:
                grants.append(value)
        if name is None:
            return None
        return RoleSpec(name, display, tuple(grants), line)

    def principal(self, node: yaml.Node, where: str) -> PrincipalSpec | None:
        keys = self.mapping(node, where, _PRINCIPAL_KEYS)
        if keys is None:
            return None
        line = line_of(node)
        principal_id = self.ident(keys, "id", where, line, "principal id", PRINCIPAL_ID)
        kind = "user"
        if "kind" in keys:
            kind = (
                self.one_of(keys["kind"][1], key(where, "kind"), "principal kind", PRINCIPAL_KINDS)
                or kind
            )
        disabled = False
        if "disabled" in keys:
            disabled = self.boolean(keys["disabled"][1], key(where, "disabled")) or False
        tenant_roles: list[tuple[Ref, tuple[Ref, ...]]] = []
        if "tenant_roles" in keys:
            tr_where = key(where, "tenant_roles")
            for tenant, key_node, value_node in self.pairs(keys["tenant_roles"][1], tr_where) or ():
                tenant_where = key(tr_where, tenant)
                roles_found: list[Ref] = []
                for index, role_node in enumerate(
                    self.sequence(value_node, tenant_where, null=True) or ()
                ):
                    role = self.string(role_node, item(tenant_where, index), empty=False)
                    if role is not None:
                        roles_found.append(Ref(role, line_of(role_node)))
                tenant_roles.append((Ref(tenant, line_of(key_node)), tuple(roles_found)))
        roles = self.refs(keys, "roles", where)
        tenants = self.refs(keys, "tenants", where)
        if principal_id is None:
            return None
        return PrincipalSpec(
            principal_id, kind, roles, tuple(tenant_roles), tenants, disabled, line
        )


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Parse and check a policy's shape; :class:`PolicyError` lists every problem."""
    root = compose(text, source, PolicyError)
    if root is None:
        raise PolicyError([Problem("the policy file is empty", source, 1)])
    return parse_policy_node(root, source)


def parse_policy_node(root: yaml.Node, source: str, where: str = "") -> Policy:
    """:func:`parse_policy` for a policy embedded in another YAML document (a test
    suite's inline ``policy:``, at path ``where``); lines are those of the enclosing
    file."""
    parser = _Parser(source, where)
    accounts = parser.document(root)
    _check_unique(parser, accounts)
    parser.check(PolicyError)
    return Policy(source, accounts)


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy file; an unreadable file is a :class:`PolicyError`."""
    return parse_policy(read_text(path, "the policy file", PolicyError), str(path))


def _check_unique(parser: _Parser, accounts: tuple[AccountSpec, ...]) -> None:
    def first(seen: dict[str, int], kind: str, key: str, line: int) -> None:
        if key in seen:
            parser.note(line, f"duplicate {kind} {key!r} (first on line {seen[key]})")
        else:
            seen[key] = line

    account_ids: dict[str, int] = {}
    tenant_ids: dict[str, int] = {}
    principal_ids: dict[str, PrincipalSpec] = {}  # by id folded to lower case
    for account in accounts:
        first(account_ids, "account id", account.id, account.line)
        role_names: dict[str, int] = {}
        for tenant in account.tenants:
            first(tenant_ids, "tenant id", tenant.id, tenant.line)
        for role in account.roles:
            first(role_names, f"role name in account {account.id!r}", role.name, role.line)
        for principal in account.principals:
            # Unique regardless of case, as in the store.
            seen = principal_ids.setdefault(principal.id.lower(), principal)
            if seen is not principal:
                same = (
                    "" if seen.id == principal.id else f" (differs only in case from {seen.id!r})"
                )
                parser.note(
                    principal.line,
                    f"duplicate principal id {principal.id!r}{same} (first on line {seen.line}; "
                    "ids are unique regardless of case)",
                )


# -- warnings -----------------------------------------------------------------


def unused_grants(policy: Policy, endpoint_map: EndpointMap) -> list[str]:
    """``FILE:LINE: warning: ...`` for each role grant that no endpoint of the map can use.

    A grant nothing requires is almost always a typo (``claim.read`` for
    ``claims.read``): the role then silently grants less than its author meant. It is
    a warning, not an error, since a map may gain the endpoint later. ``group.*``
    counts as used when the map requires any permission of that group, and ``*.*``
    always does. The closest permission the map does have is suggested when there
    is an obvious one.
    """
    required = sorted(endpoint_map.permissions())
    groups = sorted({permission.partition(".")[0] for permission in required})
    warnings: list[str] = []
    for account in policy.accounts:
        for role in account.roles:
            for grant in role.permissions:
                group, _, action = grant.partition(".")
                if group == "*" or (action == "*" and group in groups) or grant in required:
                    continue
                if action == "*":
                    close = [f"{g}.*" for g in difflib.get_close_matches(group, groups, 1, 0.8)]
                else:
                    close = difflib.get_close_matches(grant, required, 1, 0.8)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                warnings.append(
                    f"{policy.source}:{role.line}: warning: role {role.name!r} of account "
                    f"{account.id!r} grants {grant!r}, which no endpoint of "
                    f"{endpoint_map.source} requires{hint}"
                )
    return warnings


# -- planning -----------------------------------------------------------------


async def _principal_folding_to(store: Store, principal_id: str) -> Principal | None:
    """A stored principal whose id equals ``principal_id`` ignoring case, in any account.
    Asked only for principals the file adds, so a scan is affordable."""
    folded = principal_id.lower()
    for account in await store.list_accounts():
        for principal in await store.list_principals(account):
            if principal.id.lower() == folded:
                return principal
    return None


Run = Callable[[ModelService, Actor], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Action:
    """One change the apply will make: ``line`` is what it prints (``+ tenant x``)."""

    line: str
    run: Run = field(repr=False, compare=False)


async def plan_policy(
    store: Store, policy: Policy, *, prune: bool = False, default_enforcement: str = "enforce"
) -> list[Action]:
    """The changes applying ``policy`` would make; :class:`PolicyError` lists every
    reference or rule the current store state makes invalid."""
    problems: list[tuple[int, str]] = []
    actions: list[Action] = []
    whole = _FileView.of(policy, prune=prune, default_enforcement=default_enforcement)
    for account in policy.accounts:
        plan = await _AccountPlan.load(store, account, whole, actions, problems)
        await _plan_account(plan)
    if problems:
        raise PolicyError(
            [Problem(message, policy.source, line) for line, message in sorted(problems)]
        )
    return actions


@dataclass(frozen=True, slots=True)
class _FileView:
    """What planning one account needs to know of the whole file: which account
    defines each tenant and role (a reference must not cross accounts), and the
    options of the apply."""

    tenant_account: dict[str, str]
    role_accounts: dict[str, list[str]]
    prune: bool
    default_enforcement: str

    @classmethod
    def of(cls, policy: Policy, *, prune: bool, default_enforcement: str) -> _FileView:
        role_accounts: dict[str, list[str]] = {}
        for account in policy.accounts:
            for role in account.roles:
                role_accounts.setdefault(role.name, []).append(account.id)
        tenant_account = {t.id: a.id for a in policy.accounts for t in a.tenants}
        return cls(tenant_account, role_accounts, prune, default_enforcement)


@dataclass(slots=True)
class _AccountPlan:
    """The planning of one account: its entry in the file, what the store holds of it,
    and where the actions and problems go. Each kind of object is one step below."""

    store: Store
    spec: AccountSpec
    whole: _FileView
    exists: bool
    stored_roles: dict[str, Role]
    stored_tenants: dict[str, Tenant]
    stored_principals: dict[str, Principal]
    actions: list[Action]
    problems: list[tuple[int, str]]
    # Under --prune a role counts as named only where the file defines it: the roles
    # that will be deleted, and who the file still gives them to.
    pruned_roles: set[str] = field(default_factory=set)
    pruned_holders: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @classmethod
    async def load(
        cls,
        store: Store,
        spec: AccountSpec,
        whole: _FileView,
        actions: list[Action],
        problems: list[tuple[int, str]],
    ) -> _AccountPlan:
        """Read the account's stored state (a new account has only its builtin roles)."""
        exists = await store.account_exists(spec.id)
        if exists:
            roles = await store.get_roles(spec.id)
            tenants = {t.id: t for t in await store.list_tenants(spec.id)}
            principals = {p.id: p for p in await store.list_principals(spec.id)}
        else:
            roles = {r.name: r for r in builtin_roles(spec.id)}
            tenants, principals = {}, {}
        return cls(store, spec, whole, exists, roles, tenants, principals, actions, problems)

    @property
    def account(self) -> str:
        return self.spec.id

    def problem(self, line: int, message: str) -> None:
        self.problems.append((line, message))

    def act(self, line: str, run: Run) -> None:
        self.actions.append(Action(line, run))

    def tenant_known(self, ref: Ref) -> bool:
        """A scope keyword or a tenant of this account (in the file or stored); any
        other reference is a problem."""
        if ref.value in (SCOPE_ANY, SCOPE_TYPE_TEST):
            return True
        owner = self.whole.tenant_account.get(ref.value)
        if owner is None and ref.value in self.stored_tenants:
            owner = self.account
        if owner == self.account:
            return True
        if owner is not None:
            self.problem(
                ref.line,
                f"tenant {ref.value!r} belongs to account {owner!r}, not {self.account!r}: "
                "nothing crosses an account",
            )
        else:
            self.problem(ref.line, f"unknown tenant {ref.value!r}: not in account {self.account!r}")
        return False

    def role_known(self, ref: Ref, holder: str) -> bool:
        """A role of this account that stays; a role --prune deletes is remembered
        with its holder, any other reference is a problem."""
        if ref.value in self.pruned_roles:
            self.pruned_holders.setdefault(ref.value, []).append((holder, ref.line))
            return False
        if ref.value in self.file_roles or ref.value in BUILTIN_ROLE_NAMES:
            return True
        if ref.value in self.stored_roles:
            return True
        others = [a for a in self.whole.role_accounts.get(ref.value, []) if a != self.account]
        if others:
            self.problem(
                ref.line,
                f"role {ref.value!r} is defined in account {others[0]!r}, not "
                f"{self.account!r}: nothing crosses an account",
            )
        else:
            self.problem(ref.line, f"unknown role {ref.value!r} in account {self.account!r}")
        return False

    @property
    def file_roles(self) -> dict[str, RoleSpec]:
        return {r.name: r for r in self.spec.roles}


async def _plan_account(plan: _AccountPlan) -> None:
    """Every change for one account, in the order the apply runs them."""
    if not plan.exists:
        plan.act(f"+ account {plan.account}", _ensure_account(plan.account))
    await _plan_password_policy(plan.store, plan.spec, plan.exists, plan.whole.prune, plan.actions)
    await _plan_tenants(plan)
    _plan_roles(plan)
    if plan.whole.prune:
        plan.pruned_roles = {
            name
            for name, role in plan.stored_roles.items()
            if not role.builtin and name not in plan.file_roles
        }
    for principal in plan.spec.principals:
        await _plan_principal(plan, principal)
    _plan_prune(plan)


async def _plan_tenants(plan: _AccountPlan) -> None:
    """New tenants, and the one change a tenant allows: shadow to enforce."""
    for tenant in plan.spec.tenants:
        current = plan.stored_tenants.get(tenant.id)
        if current is None:
            if await plan.store.get_tenant(tenant.id) is not None:
                plan.problem(
                    tenant.line, f"tenant id {tenant.id!r} already belongs to another account"
                )
                continue
            mode = tenant.enforcement or plan.whole.default_enforcement
            plan.act(
                f"+ tenant {tenant.id} ({tenant.type}, {mode})",
                _create_tenant(plan.account, tenant.id, tenant.type, mode),
            )
            continue
        refusal = tenant_type_refusal(tenant.id, current.type, tenant.type)
        if refusal is not None:
            plan.problem(tenant.line, refusal)
        if tenant.enforcement is None or tenant.enforcement == current.enforcement:
            continue
        refusal = enforcement_refusal(tenant.id, current.enforcement, tenant.enforcement)
        if refusal is not None:
            plan.problem(tenant.line, refusal)
        else:
            plan.act(f"~ tenant {tenant.id} enforcement shadow -> enforce", _enforce(tenant.id))


def _plan_roles(plan: _AccountPlan) -> None:
    """New roles and changed permissions; a display name never changes, and the admin
    role keeps ``*.*``."""
    for role in plan.spec.roles:
        current = plan.stored_roles.get(role.name)
        if current is None:
            display = role.display_name or role.name
            plan.act(
                f"+ role {role.name}",
                _create_role(plan.account, role.name, display, role.permissions),
            )
            continue
        refusal = display_name_refusal(role.name, current.display_name, role.display_name)
        if refusal is not None:
            plan.problem(role.line, refusal)
        refusal = admin_grants_refusal(role.name, role.permissions)
        if refusal is not None:
            plan.problem(role.line, refusal)
        elif role.permissions != current.permissions:
            plan.act(
                f"~ role {role.name} permissions",
                _update_role(plan.account, role.name, role.permissions),
            )


async def _plan_principal(plan: _AccountPlan, principal: PrincipalSpec) -> None:
    """A new principal, or the changes to a stored one (kind and status, roles,
    tenant scope), once every role and tenant it names is known."""
    ok = True
    assignments: list[tuple[str, str | None]] = []
    for ref in principal.roles:
        ok = plan.role_known(ref, principal.id) and ok
        assignments.append((ref.value, None))
    for tenant_ref, role_refs in principal.tenant_roles:
        if tenant_ref.value in (SCOPE_ANY, SCOPE_TYPE_TEST):
            plan.problem(
                tenant_ref.line, "tenant_roles keys are tenant ids, not 'any' or 'type:test'"
            )
            ok = False
        else:
            ok = plan.tenant_known(tenant_ref) and ok
        for ref in role_refs:
            ok = plan.role_known(ref, principal.id) and ok
            assignments.append((ref.value, tenant_ref.value))
    for ref in principal.tenants:
        ok = plan.tenant_known(ref) and ok
    if not ok:
        return
    wanted_roles = tuple(sorted(set(assignments), key=_akey))
    scope = tuple(dict.fromkeys(ref.value for ref in principal.tenants))
    current = plan.stored_principals.get(principal.id)
    if current is None:
        await _plan_new_principal(plan, principal, scope, wanted_roles)
        return
    if current.kind != principal.kind or current.disabled != principal.disabled:
        what = []
        if current.kind != principal.kind:
            what.append("kind")
        if current.disabled != principal.disabled:
            what.append("disabled")
        plan.act(
            f"~ principal {principal.id} {' '.join(what)}",
            _update_principal(principal.id, principal.kind, principal.disabled),
        )
    have_roles = tuple(sorted(((a.role, a.tenant) for a in current.roles), key=_akey))
    if have_roles != wanted_roles:
        plan.act(f"~ principal {principal.id} roles", _set_roles(principal.id, wanted_roles))
    if current.tenants != scope:
        plan.act(f"~ principal {principal.id} tenants", _set_tenants(principal.id, scope))


async def _plan_new_principal(
    plan: _AccountPlan,
    principal: PrincipalSpec,
    scope: tuple[str, ...],
    roles: tuple[tuple[str, str | None], ...],
) -> None:
    """Create the principal unless its id is taken in another account, regardless of case."""
    other = await plan.store.get_principal(principal.id)
    twin = None if other is not None else await _principal_folding_to(plan.store, principal.id)
    if twin is not None:
        plan.problem(
            principal.line,
            f"principal id {principal.id!r} differs only in case from {twin.id!r} "
            f"of account {twin.account!r}: ids are unique regardless of case",
        )
    elif other is not None:
        plan.problem(
            principal.line, f"principal id {principal.id!r} already belongs to another account"
        )
    else:
        plan.act(
            f"+ principal {principal.id}",
            _create_principal(
                plan.account, principal.id, principal.kind, scope, principal.disabled, roles
            ),
        )


def _plan_prune(plan: _AccountPlan) -> None:
    """Under --prune: refuse to delete a role the file still gives, else delete the
    principals and roles the file does not name."""
    for role_name, holders in sorted(plan.pruned_holders.items()):
        names = ", ".join(sorted({h for h, _ in holders}))
        for _holder, line in holders:
            plan.problem(
                line,
                f"--prune would delete role {role_name!r} (the file does not define it) "
                f"but it is still assigned to: {names}",
            )
    if not plan.whole.prune:
        return
    file_principals = {p.id for p in plan.spec.principals}
    for principal_id in sorted(set(plan.stored_principals) - file_principals):
        plan.act(f"- principal {principal_id}", _delete_principal(principal_id))
    for role_name in sorted(plan.pruned_roles):
        plan.act(f"- role {role_name}", _delete_role(plan.account, role_name))


async def _plan_password_policy(
    store: Store, spec: AccountSpec, exists: bool, prune: bool, actions: list[Action]
) -> None:
    """Configure the account's password policy when the file's differs from the stored
    one; with --prune an account whose entry has none goes back to the floor alone."""
    if spec.password_policy is None and not prune:
        return
    current = await ModelService(store).configured_password_policy(spec.id) if exists else None
    wanted = None if spec.password_policy is None else spec.password_policy.with_floor()
    if wanted == current:
        return
    if wanted is None:
        line = f"- account {spec.id} password_policy (back to the floor)"
    else:
        line = f"{'+' if current is None else '~'} account {spec.id} password_policy"
    actions.append(Action(line, _set_password_policy(spec.id, wanted)))


def _akey(item: tuple[str, str | None]) -> tuple[str, str]:
    return item[0], item[1] or ""


# Each helper binds its arguments now and runs later, inside the apply transaction.


def _ensure_account(account: str) -> Run:
    return lambda service, actor: service.ensure_account(actor, account)


def _create_tenant(account: str, tenant_id: str, kind: str, mode: str) -> Run:
    return lambda service, actor: service.create_tenant(
        actor,
        account,
        tenant_id,
        type=kind,  # type: ignore[arg-type]
        enforcement=mode,  # type: ignore[arg-type]
    )


def _enforce(tenant_id: str) -> Run:
    return lambda service, actor: service.set_enforcement(actor, tenant_id, "enforce")


def _create_role(account: str, name: str, display: str, grants: tuple[str, ...]) -> Run:
    return lambda service, actor: service.create_role(actor, account, name, display, grants)


def _update_role(account: str, name: str, grants: tuple[str, ...]) -> Run:
    return lambda service, actor: service.update_role(actor, account, name, permissions=grants)


def _delete_role(account: str, name: str) -> Run:
    return lambda service, actor: service.delete_role(actor, account, name)


def _create_principal(
    account: str,
    principal_id: str,
    kind: str,
    scope: tuple[str, ...],
    disabled: bool,
    roles: tuple[tuple[str, str | None], ...],
) -> Run:
    return lambda service, actor: service.create_principal(
        actor,
        account,
        principal_id,
        kind=kind,  # type: ignore[arg-type]
        tenants=scope,
        disabled=disabled,
        roles=roles,
    )


def _update_principal(principal_id: str, kind: str, disabled: bool) -> Run:
    return lambda service, actor: service.update_principal(
        actor,
        principal_id,
        kind=kind,  # type: ignore[arg-type]
        disabled=disabled,
    )


def _set_roles(principal_id: str, roles: tuple[tuple[str, str | None], ...]) -> Run:
    return lambda service, actor: service.set_principal_roles(actor, principal_id, roles)


def _set_tenants(principal_id: str, scope: tuple[str, ...]) -> Run:
    return lambda service, actor: service.set_principal_tenants(actor, principal_id, scope)


def _set_password_policy(account: str, policy: PasswordPolicy | None) -> Run:
    return lambda service, actor: service.set_password_policy(actor, account, policy)


def _delete_principal(principal_id: str) -> Run:
    return lambda service, actor: service.delete_principal(actor, principal_id)


async def apply_plan(service: ModelService, actor: Actor, actions: list[Action]) -> list[str]:
    """Run every action in one transaction; return the lines describing them."""
    if not actions:
        return []
    async with service.transaction():
        for action in actions:
            await action.run(service, actor)
    return [action.line for action in actions]
