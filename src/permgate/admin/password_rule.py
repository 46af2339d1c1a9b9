"""Who may set a principal's password: the one rule the admin API and the console apply.

One's own password needs only authentication (and the current password, which the
service checks). Another principal's needs what changing a principal needs
(principals.write). So does a caller authenticated with an auth token setting its
owner's *first* password: a password signs in with the owner's full power, more than
the token may grant, so a token without principals.write must not buy that.
"""

from __future__ import annotations

from permgate.admin.guard import SET_OTHERS_PASSWORD, Caller, authorize
from permgate.manage.service import ModelService

__all__ = ["check_password_setter"]


async def check_password_setter(caller: Caller, service: ModelService, target: str) -> None:
    """Refuse (403, naming what is missing) unless ``caller`` may set ``target``'s
    password; the service still checks the current password and the policy."""
    me = caller.identity.principal
    if target != me.id:
        authorize(SET_OTHERS_PASSWORD, caller.subject, "setting another principal's password")
    elif caller.identity.token is not None and not await service.has_password(me.id):
        authorize(
            SET_OTHERS_PASSWORD,
            caller.subject,
            "setting a first password with an auth token",
        )
