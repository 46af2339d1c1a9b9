"""The listening sockets of ``permgate serve``: bound once, shared only with its workers.

Binding is done here, before anything else starts, and never with SO_REUSEPORT:
that option would let any process of the same user bind the same address, so two
separate instances would silently split the traffic between them. Instead the one
``serve`` process binds, and with ``--workers N`` hands the very same sockets to its
workers (inherited file descriptors named in :data:`FDS_ENV`). A second ``serve`` on
a held address gets "address in use" and is refused with one clear line.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from permgate.config import Settings, parse_hostport
from permgate.core.errors import ConfigError

__all__ = ["BACKLOG", "FDS_ENV", "Listeners", "bind_listeners", "describe"]

# Set in each worker's environment; deliberately outside the PERMGATE_ config namespace.
FDS_ENV: Final = "_PERMGATE_LISTEN_FDS"
BACKLOG: Final = 128  # aiohttp's default, which its sites pass to listen() again

_WHY: Final[dict[int, str]] = {
    errno.EADDRINUSE: (
        "address already in use: another process listens there (perhaps another "
        "permgate serve; two instances never share an address)"
    ),
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


@dataclass(frozen=True)
class Listeners:
    """The bound, listening sockets of the gateway, of the admin listener and of the
    decision service (one per address a host name resolves to, as asyncio's own servers
    do). ``gateway`` is empty in decision-only mode, ``authz`` when it is off."""

    gateway: tuple[socket.socket, ...]
    admin: tuple[socket.socket, ...]
    authz: tuple[socket.socket, ...] = ()

    def all(self) -> Iterator[socket.socket]:
        yield from self.gateway
        yield from self.admin
        yield from self.authz

    def fds(self) -> tuple[int, ...]:
        return tuple(sock.fileno() for sock in self.all())

    def to_env(self) -> str:
        """What a worker reads back with :meth:`from_env`: ``3,4;5;6`` (gateway; admin;
        decision service, either end possibly empty)."""
        return ";".join(
            ",".join(str(sock.fileno()) for sock in group)
            for group in (self.gateway, self.admin, self.authz)
        )

    @classmethod
    def from_env(cls, text: str) -> Listeners:
        """The sockets a parent ``serve`` handed down (see :meth:`to_env`)."""
        parts = text.split(";")
        try:
            groups = [tuple(_inherited(int(fd)) for fd in part.split(",") if fd) for part in parts]
        except (ValueError, OSError) as exc:
            raise ConfigError(
                [f"{FDS_ENV}: {text!r}: not the sockets of a parent serve ({exc})"]
            ) from None
        if len(groups) == 2:
            groups.append(())
        if len(groups) != 3 or not groups[1] or not (groups[0] or groups[2]):
            raise ConfigError([f"{FDS_ENV}: {text!r}: expected GATEWAY_FDS;ADMIN_FDS;AUTHZ_FDS"])
        return cls(gateway=groups[0], admin=groups[1], authz=groups[2])

    def close(self) -> None:
        for sock in self.all():
            sock.close()


def bind_listeners(settings: Settings) -> Listeners:
    """Bind ``listen``, ``admin_listen`` then ``authz_listen`` (those set); a refusal
    names the key, address and why."""
    addresses = {
        key: value
        for key, value in (
            ("listen", settings.listen),
            ("admin_listen", settings.admin_listen),
            ("authz_listen", settings.authz_listen),
        )
        if value is not None
    }
    seen: dict[str, str] = {}
    for key, value in addresses.items():
        if value in seen and not value.endswith(":0"):
            raise ConfigError(
                [f"{key} {value}: the same address as {seen[value]}; it needs its own"]
            )
        seen.setdefault(value, key)
    bound: dict[str, tuple[socket.socket, ...]] = {}
    try:
        for key, value in addresses.items():
            bound[key] = _bind(key, value)
    except BaseException:
        for group in bound.values():
            for sock in group:
                sock.close()
        raise
    return Listeners(
        gateway=bound.get("listen", ()),
        admin=bound["admin_listen"],
        authz=bound.get("authz_listen", ()),
    )


def describe(sockets: tuple[socket.socket, ...]) -> str:
    """``127.0.0.1:8080`` (``[::1]:8080`` for IPv6): the addresses actually bound."""
    return ", ".join(_address(sock) for sock in sockets)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def _bind(key: str, value: str) -> tuple[socket.socket, ...]:
    host, port = parse_hostport(value)  # already validated with the settings
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError([f"{key} {value}: cannot resolve the host: {exc.strerror}"]) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            bound.append(_bind_one(family, kind, proto, address))
    except OSError as exc:
        for sock in bound:
            sock.close()
        why = _WHY.get(exc.errno or 0, exc.strerror or str(exc))
        raise ConfigError([f"{key} {value}: {why}"]) from None
    return tuple(bound)


def _bind_one(family: int, kind: int, proto: int, address: Any) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        # Lets a restart bind over connections still in TIME_WAIT; on Linux it never
        # lets a second socket listen on an address that one already listens on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _inherited(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise ValueError(f"fd {fd} is not a listening socket")
    sock.setblocking(False)
    return sock
