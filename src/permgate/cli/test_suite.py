"""``permgate test FILE``: run a suite of expected decisions against a map and a policy.

A platform team checks a map or policy change in its own CI before it ships. The
suite is built into a temporary SQLite store, so no server is needed. Format::

    map: endpoint_map.yaml        # relative to the suite file
    policy: policy.yaml           # a policy.yaml file (as for apply), or inline:
    # policy: {accounts: [{id: acme, tenants: [...], roles: [...], principals: [...]}]}
    cases:
      - name: agents create quotes          # optional; defaults to "METHOD PATH"
        principal: alice                    # a principal of the policy, or
        # token: {owner: alice, permissions: [quote.fetch], tenants: [acme-prod]}
        method: POST
        path: /policy/acme-prod/quotes
        headers: {X-Tenant: acme-prod}      # optional; for header/claim tenants
        expect: allow                       # allow | deny
        reason: missing_permission          # optional: the decision's reason too

Each case is evaluated as the gateway evaluates a request (:mod:`permgate.gateway.evaluate`):
request hygiene, route, authenticate, tenant, permissions. A ``principal`` case is that
principal with a fresh login (a claim tenant is read from the header of the same
name); a ``token`` case creates an auth token of that shape and presents it as a
client would. So a path the gateway refuses with 400 is a ``deny`` with the hygiene
reason, and a disabled principal a ``deny`` with ``disabled_principal``.

Every mismatch is printed as ``FILE:LINE: case NAME: expected ..., got ...`` with
the decision's reason, required and missing permissions; the exit code is 1 when any
case fails (or the suite itself is invalid), 0 when all pass.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from permgate.cli._common import add_common_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE and the common options (--store is ignored: the suite builds its own)."""
    parser.add_argument(
        "file", metavar="FILE", help="the test suite (YAML); exit 1 when any case fails"
    )
    add_common_arguments(
        parser, json_output=False, unused="the suite runs on its own temporary SQLite store"
    )


def run(args: argparse.Namespace) -> int:
    """Run every case; print failures and a summary; 1 on any failure."""
    import yaml

    from permgate.core.errors import MapError

    suite_path = Path(args.file)
    source = str(suite_path)
    try:
        text = suite_path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"{source}: cannot read the test suite: {exc}", file=sys.stderr)
        return 1
    try:
        suite = _Suite.parse(root, source, suite_path.parent)
    except _SuiteError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    except MapError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    from permgate.manage.policy_file import PolicyError

    try:
        failures, total = asyncio.run(suite.run())
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    for failure in failures:
        print(failure)
    print(f"{total} cases, {len(failures)} failed")
    return 1 if failures else 0


class _SuiteError(Exception):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


_CASE_KEYS = ("name", "principal", "token", "method", "path", "headers", "expect", "reason")


class _Suite:
    """A parsed suite: the map, the policy and the cases with their lines."""

    def __init__(self, source: str, endpoint_map: Any, policy: Any, cases: list[dict[str, Any]]):
        self.source = source
        self.endpoint_map = endpoint_map
        self.policy = policy
        self.cases = cases

    @classmethod
    def parse(cls, root: Any, source: str, base: Path) -> _Suite:
        import yaml

        from permgate.manage.policy_file import PolicyError, load_policy, parse_policy_node
        from permgate.maps.loader import load_map

        errors: list[str] = []
        if not isinstance(root, yaml.MappingNode):
            raise _SuiteError([f"{source}:1: a test suite is a mapping with map, policy, cases"])
        keys = {k.value: v for k, v in root.value}
        for key_node, _ in root.value:
            if key_node.value not in ("map", "policy", "cases"):
                errors.append(
                    f"{source}:{key_node.start_mark.line + 1}: unknown key {key_node.value!r}"
                )
        for needed in ("map", "policy", "cases"):
            if needed not in keys:
                errors.append(f"{source}:1: the suite has no {needed!r}")
        if errors:
            raise _SuiteError(errors)
        map_node = keys["map"]
        if not isinstance(map_node, yaml.ScalarNode):
            raise _SuiteError([f"{source}:{map_node.start_mark.line + 1}: map is a file name"])
        endpoint_map = load_map(base / map_node.value)
        policy_node = keys["policy"]
        try:
            if isinstance(policy_node, yaml.ScalarNode):
                policy = load_policy(base / policy_node.value)
            else:
                policy = parse_policy_node(policy_node, source)
        except PolicyError as exc:
            raise _SuiteError(exc.errors) from exc
        data = yaml.safe_load(yaml.serialize(keys["cases"]))
        cases_node = keys["cases"]
        if not isinstance(cases_node, yaml.SequenceNode) or not isinstance(data, list):
            raise _SuiteError([f"{source}:{cases_node.start_mark.line + 1}: cases is a list"])
        cases: list[dict[str, Any]] = []
        for node, case in zip(cases_node.value, data, strict=True):
            line = node.start_mark.line + 1
            where = f"{source}:{line}"
            if not isinstance(case, dict):
                errors.append(f"{where}: a case is a mapping")
                continue
            unknown = sorted(set(case) - set(_CASE_KEYS))
            if unknown:
                errors.append(f"{where}: unknown key(s) {', '.join(unknown)}")
            if ("principal" in case) == ("token" in case):
                errors.append(f"{where}: a case names exactly one of principal or token")
            for key in ("method", "path"):
                if not isinstance(case.get(key), str):
                    errors.append(f"{where}: {key} is required (a string)")
            if case.get("expect") not in ("allow", "deny"):
                errors.append(f"{where}: expect must be allow or deny")
            token = case.get("token")
            if token is not None and not (isinstance(token, dict) and "owner" in token):
                errors.append(f"{where}: token is {{owner, permissions, tenants}}")
            case["_line"] = line
            cases.append(case)
        if errors:
            raise _SuiteError(errors)
        return cls(source, endpoint_map, policy, cases)

    async def run(self) -> tuple[list[str], int]:
        from permgate.gateway.authn import Authenticator
        from permgate.gateway.evaluate import Evaluator
        from permgate.gateway.modelcache import ModelCache
        from permgate.manage.policy_file import apply_plan, plan_policy
        from permgate.manage.service import Actor, ModelService
        from permgate.store import open_store

        failures: list[str] = []
        with tempfile.TemporaryDirectory(prefix="permgate-test-") as tmp:
            store = await open_store(f"sqlite://{Path(tmp) / 'suite.db'}")
            try:
                service = ModelService(store)
                actions = await plan_policy(store, self.policy)
                await apply_plan(service, Actor.cli(), actions)
                model = ModelCache(store)
                authenticator = Authenticator(model, token_prefix=service.token_prefix, jwt=None)
                evaluator = Evaluator(self.endpoint_map, model, authenticator)
                for case in self.cases:
                    failure = await self._run_case(service, model, evaluator, case)
                    if failure is not None:
                        failures.append(failure)
            finally:
                await store.close()
        return failures, len(self.cases)

    async def _run_case(
        self, service: Any, model: Any, evaluator: Any, case: dict[str, Any]
    ) -> str | None:
        """Evaluate the case as the gateway would: the principal with a fresh
        credential, or a new auth token of the case's shape presented as a client
        presents it."""
        from permgate.core.errors import ModelError
        from permgate.gateway.evaluate import what_if
        from permgate.manage.service import Actor

        name = case.get("name") or f"{case['method']} {case['path']}"
        where = f"{self.source}:{case['_line']}: case {name!r}"
        headers = [(str(k), str(v)) for k, v in (case.get("headers") or {}).items()]
        spec = case.get("token")
        if spec is not None:
            try:
                _token, secret = await service.create_token(
                    Actor.cli(),
                    spec["owner"],
                    name[:200],
                    list(spec.get("permissions") or []),
                    list(spec.get("tenants") or []),
                )
            except ModelError as exc:
                return f"{where}: the case's token cannot exist: {exc}"
            model.reset()  # the model was read before this token existed
            request = what_if(str(case["method"]), case["path"], headers, credential=secret)
        else:
            principal_id = str(case["principal"])
            if await service.store.get_principal(principal_id) is None:
                return f"{where}: unknown principal {principal_id!r}"
            # A claim tenant is read from the header of the same name, as a JWT of the
            # principal would carry it.
            lowered = {k.lower(): v for k, v in headers}
            claims: dict[str, object] = {
                claim: lowered[claim.lower()]
                for claim in self._claim_sources()
                if claim.lower() in lowered
            }
            request = what_if(
                str(case["method"]),  # case-sensitive, as the gateway matches it
                case["path"],
                headers,
                principal=principal_id,
                claims=claims,
            )
        evaluation = await evaluator.evaluate(request)
        got = "allow" if evaluation.label == "allow" else "deny"
        reason = str(evaluation.reason)
        expected_reason = case.get("reason")
        if got == case["expect"] and expected_reason in (None, reason):
            return None
        wanted = case["expect"] + (f" ({expected_reason})" if expected_reason else "")
        decision = evaluation.decision
        if decision is None:  # refused before a decision: 400 or 401
            stage = "request hygiene" if evaluation.refusal is not None else "authentication"
            return (
                f"{where}: expected {wanted}, got {got} ({reason})"
                f"; refused by {stage} with {evaluation.status}"
                f"; endpoint {evaluation.endpoint_id or '-'}"
            )
        return (
            f"{where}: expected {wanted}, got {got} ({reason})"
            f"; endpoint {decision.endpoint_id or '-'}"
            f"; tenant {decision.tenant or '-'}"
            f"; required [{', '.join(decision.required)}]"
            f"; missing [{', '.join(decision.missing)}]"
            + (f"; detail {decision.detail}" if decision.detail else "")
        )

    def _claim_sources(self) -> list[str]:
        """The claims the map reads a tenant from."""
        sources = [e.tenant for e in self.endpoint_map.endpoints]
        sources.append(self.endpoint_map.default_tenant)
        return [s.name for s in sources if s.kind == "claim" and s.name is not None]
