"""``POST /v1/explain``: the decision the gateway would make, with its reasons.

It calls the gateway's own evaluation (:mod:`permgate.gateway.evaluate`: request hygiene,
route, public, authenticate, tenant, permissions) on the gateway's current map
against the in-memory model, so what it answers is what the next real request gets.
A hygiene refusal or an authentication failure is a ``deny`` with the gateway's
reason. Nothing crosses an account: a principal or token of another account is not
found, and a tenant of another account is reported exactly like an unknown one.
"""

from __future__ import annotations

from collections.abc import Mapping

from permgate.admin.render import ApiError
from permgate.core.endpoints import EndpointMap
from permgate.core.model import Principal
from permgate.gateway.authn import Authenticator, AuthFailure
from permgate.gateway.evaluate import Evaluator, explanation, what_if
from permgate.gateway.modelcache import ModelCache

__all__ = ["explain"]


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
    token = body.get("token")
    if principal_id is not None:
        principal = await model.principal(str(principal_id))
        if principal is None or principal.account != caller.account:
            raise ApiError(404, "not_found", f"principal {principal_id!r} not found")
    else:
        try:
            identity = await authenticator.authenticate(f"Bearer {token}")
        except AuthFailure:
            pass  # the evaluation reports it (the caller holds the secret)
        else:
            if identity.principal.account != caller.account:
                raise ApiError(404, "not_found", "token not found in the caller's account")

    headers: list[tuple[str, str]] = []
    raw_headers = body.get("headers")
    if isinstance(raw_headers, Mapping):
        headers.extend((str(k), str(v)) for k, v in raw_headers.items())
    request = what_if(
        str(body["method"]),  # case-sensitive, as the gateway matches it
        str(body["path"]),
        headers,
        credential=None if token is None else str(token),
        principal=None if principal_id is None else str(principal_id),
    )
    evaluation = await Evaluator(endpoint_map, model, authenticator).evaluate(request)
    return explanation(evaluation, request.method)
