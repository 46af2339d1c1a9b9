"""``POST /v1/explain``: the decision the gateway would make, with its reasons.

It runs the gateway's own stages on the gateway's current map (request hygiene,
route, public, authenticate, tenant, permissions) against the in-memory model, so
what it answers is what the next real request gets. Nothing crosses an account: a
principal or token of another account is not found, and a tenant of another account
is reported exactly like an unknown one.
"""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

from permgate import hygiene
from permgate.admin.render import ApiError
from permgate.authn import Authenticator, AuthFailure
from permgate.decision import Decision, Reason, ScopeDetail, Subject, decide, resolve_tenant_id
from permgate.endpoints import EndpointMap
from permgate.model import Principal
from permgate.modelcache import ModelCache

__all__ = ["explain"]


def _answer(decision: str, reason: str, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {
        "decision": decision,
        "reason": reason,
        "endpoint": None,
        "tenant": None,
        "required": [],
        "any_of": [],
        "missing_permissions": [],
        "detail": "",
        "principal": None,
        "token_id": None,
        "enforcement": None,
    }
    body.update(fields)
    return body


async def explain(
    body: Mapping[str, object],
    *,
    caller: Principal,
    model: ModelCache,
    authenticator: Authenticator,
    endpoint_map: EndpointMap,
) -> dict[str, object]:
    """The what-if for a validated ExplainRequest body (see :mod:`.schemas`)."""
    # Who first: another account's principal or token is a 404 whatever the request.
    principal_id = body.get("principal")
    token = None
    claims = None
    failure: AuthFailure | None = None
    principal: Principal | None = None
    if principal_id is not None:
        principal = await model.principal(str(principal_id))
        if principal is None or principal.account != caller.account:
            raise ApiError(404, "not_found", f"principal {principal_id!r} not found")
    else:
        try:
            identity = await authenticator.authenticate(f"Bearer {body['token']}")
        except AuthFailure as exc:
            # The caller holds the secret and could learn this reason from the gateway.
            failure = exc
        else:
            if identity.principal.account != caller.account:
                raise ApiError(404, "not_found", "token not found in the caller's account")
            principal, token, claims = identity.principal, identity.token, identity.claims

    # Then the gateway's stages, in its order.
    method = str(body["method"])  # case-sensitive, as the gateway matches it
    target = str(body["path"])
    problem = hygiene.check_target(method, target)
    if problem is not None:
        return _answer(
            "deny",
            problem,
            detail="the gateway refuses this request-target with 400 before routing",
        )
    path, _query = hygiene.split_target(target)
    match = endpoint_map.match(method, path)
    if match is None or match.endpoint.public:
        return _result(decide(endpoint_map, match, None, None, None), method, path)
    if failure is not None or principal is None:
        reason = failure.reason if failure is not None else "invalid_token"
        return _answer(
            "deny",
            reason,
            endpoint=match.endpoint.id,
            detail=f"the gateway answers 401 {reason}",
        )
    if principal.disabled:
        return _answer(
            "deny",
            "disabled_principal",
            endpoint=match.endpoint.id,
            principal=principal.id,
            detail="the gateway answers 401 disabled_principal",
        )

    headers: CIMultiDict[str] = CIMultiDict()
    raw_headers = body.get("headers")
    if isinstance(raw_headers, Mapping):
        headers.extend((str(k), str(v)) for k, v in raw_headers.items())
    try:
        tenant_id = resolve_tenant_id(match.endpoint, match.params, headers, claims)
    except UnicodeDecodeError:
        tenant_id = None
    tenant = await model.tenant(tenant_id) if tenant_id is not None else None
    if tenant is not None and tenant.account != caller.account:
        tenant = None  # another account's tenant is no tenant at all from here
    subject = Subject(principal, await model.roles(principal.account), token)
    decision = decide(endpoint_map, match, subject, tenant, tenant_id)
    result = _result(decision, method, path)
    result["principal"] = principal.id
    result["token_id"] = None if token is None else token.id
    if tenant is not None:
        result["enforcement"] = tenant.enforcement
        if not decision.allowed and tenant.enforcement == "shadow":
            result["detail"] = (
                f"{result['detail']}; " if result["detail"] else ""
            ) + "tenant is in shadow mode: the gateway forwards and records shadow_deny"
    return result


def _result(decision: Decision, method: str, path: str) -> dict[str, object]:
    detail = ""
    if decision.reason == Reason.UNMAPPED_ROUTE:
        detail = f"no entry of the endpoint map matches {method} {path}"
    elif decision.reason == Reason.TENANT_OUT_OF_SCOPE:
        other = decision.detail == ScopeDetail.OTHER_ACCOUNT
        detail = str(ScopeDetail.UNKNOWN_TENANT if other else decision.detail)
    elif decision.reason == Reason.MISSING_PERMISSION:
        detail = "not covered by the caller's grants: " + ", ".join(decision.missing)
    return _answer(
        "allow" if decision.allowed else "deny",
        str(decision.reason),
        endpoint=decision.endpoint_id,
        tenant=decision.tenant,
        required=list(decision.required),
        any_of=list(decision.any_of),
        missing_permissions=list(decision.missing),
        detail=detail,
    )
