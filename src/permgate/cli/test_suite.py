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
from typing import TYPE_CHECKING, Any

from permgate.cli._common import add_common_arguments

if TYPE_CHECKING:
    import yaml

    from permgate.core.errors import ProblemList
    from permgate.core.yamlnodes import NodeReader


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
    from permgate.core.errors import ProblemList
    from permgate.core.yamlnodes import read_text

    suite_path = Path(args.file)
    try:
        suite = _Suite.parse(
            read_text(suite_path, "the test suite", _suite_error()),
            str(suite_path),
            suite_path.parent,
        )
        failures, total = asyncio.run(suite.run())
    except ProblemList as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    for failure in failures:
        print(failure)
    print(f"{total} cases, {len(failures)} failed")
    return 1 if failures else 0


def _suite_error() -> type[ProblemList]:
    from permgate.core.errors import SuiteError

    return SuiteError


_CASE_KEYS = ("name", "principal", "token", "method", "path", "headers", "expect", "reason")
_TOKEN_KEYS = ("owner", "permissions", "tenants")


class _Suite:
    """A parsed suite: the map, the policy and the cases with their lines."""

    def __init__(self, source: str, endpoint_map: Any, policy: Any, cases: list[dict[str, Any]]):
        self.source = source
        self.endpoint_map = endpoint_map
        self.policy = policy
        self.cases = cases

    @classmethod
    def parse(cls, text: str, source: str, base: Path) -> _Suite:
        """The suite, its map and its policy; one :class:`SuiteError` lists every
        problem of the three files (the map's and the policy's with their own names)."""
        import yaml

        from permgate.core.errors import MapError, PolicyError, Problem, SuiteError
        from permgate.core.yamlnodes import NodeReader, compose, item
        from permgate.manage.policy_file import load_policy, parse_policy_node
        from permgate.maps.loader import load_map

        root = compose(text, source, SuiteError)
        if root is None:
            raise SuiteError(
                [Problem("the test suite is empty (expected map, policy, cases)", source, 1)]
            )
        reader = NodeReader(source, "the test suite")
        keys = reader.mapping(root, "", ("map", "policy", "cases"))
        reader.check(SuiteError)
        assert keys is not None
        for needed in ("map", "policy", "cases"):
            if needed not in keys:
                reader.problem(root, needed, "missing (the suite needs map, policy and cases)")
        cases: list[dict[str, Any]] = []
        if "cases" in keys:
            for index, node in enumerate(reader.sequence(keys["cases"][1], "cases") or ()):
                case = _case(reader, node, item("cases", index))
                if case is not None:
                    cases.append(case)
        others: list[Problem] = []  # the map's and the policy's, in their files
        endpoint_map = policy = None
        if "map" in keys:
            map_name = reader.string(keys["map"][1], "map", empty=False)
            if map_name is not None:
                try:
                    endpoint_map = load_map(base / map_name)
                except MapError as exc:
                    others.extend(exc.items)
        if "policy" in keys:
            policy_node = keys["policy"][1]
            try:
                if isinstance(policy_node, yaml.MappingNode):
                    policy = parse_policy_node(policy_node, source, "policy")
                else:
                    policy_name = reader.string(policy_node, "policy", empty=False)
                    if policy_name is not None:
                        policy = load_policy(base / policy_name)
            except PolicyError as exc:
                others.extend(exc.items)
        if reader.problems or others:
            inline = [p for p in others if p.source == source]
            elsewhere = [p for p in others if p.source != source]
            found = sorted([*reader.problems, *inline], key=lambda p: p.line or 0)
            raise SuiteError([*found, *elsewhere])
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


def _case(reader: NodeReader, node: yaml.Node, where: str) -> dict[str, Any] | None:
    """One case as a plain dict (with its ``_line``), every problem recorded."""
    import yaml

    from permgate.core.yamlnodes import BAD, key, line_of

    keys = reader.mapping(node, where, _CASE_KEYS)
    if keys is None:
        return None
    line = line_of(node)
    case: dict[str, Any] = {"_line": line}
    for name in ("name", "principal", "reason"):
        if name in keys:
            case[name] = reader.string(keys[name][1], key(where, name), empty=False)
    for name in ("method", "path"):
        if name not in keys:
            reader.problem(line, key(where, name), "missing (a string)")
        else:
            case[name] = reader.string(keys[name][1], key(where, name), empty=False)
    if ("principal" in keys) == ("token" in keys):
        reader.problem(line, where, "a case names exactly one of principal or token")
    if "token" in keys:
        token_where = key(where, "token")
        token = reader.mapping(keys["token"][1], token_where, _TOKEN_KEYS)
        if token is not None:
            spec: dict[str, Any] = {}
            if "owner" not in token:
                reader.problem(keys["token"][1], key(token_where, "owner"), "missing (a string)")
            else:
                spec["owner"] = reader.string(token["owner"][1], key(token_where, "owner"))
            for name in ("permissions", "tenants"):
                if name in token:
                    list_where = key(token_where, name)
                    items = reader.sequence(token[name][1], list_where, null=True) or []
                    spec[name] = [
                        reader.string(child, f"{list_where}[{index}]")
                        for index, child in enumerate(items)
                    ]
            case["token"] = spec
    if "expect" not in keys:
        reader.problem(line, key(where, "expect"), "missing ('allow' or 'deny')")
    else:
        case["expect"] = reader.choice(keys["expect"][1], key(where, "expect"), ("allow", "deny"))
    if "headers" in keys:
        headers: dict[str, str] = {}
        headers_where = key(where, "headers")
        for name, _key_node, value_node in reader.pairs(keys["headers"][1], headers_where) or ():
            if isinstance(value_node, yaml.ScalarNode):
                value = reader.scalar(value_node, key(headers_where, name), "a header value")
                if value is not BAD and value is not None:
                    headers[name] = str(value)
                    continue
            reader.wrong_type(value_node, key(headers_where, name), "a header value")
        case["headers"] = headers
    return case
