"""TLS contexts for the listeners and the upstream, re-read when their files change.

Each context is built once and handed to its server (or the upstream client); when
its files change on disk, the new certificate chain is loaded into the *same*
``ssl.SSLContext``. OpenSSL copies a context's certificate into each connection when
the connection is created, so new handshakes use the new certificate at once and
open connections keep theirs: nothing restarts, nothing is dropped.

A change is seen by polling (every :data:`POLL_SECONDS`): each file's resolved path,
inode, modification time and size. A mounted Kubernetes Secret replaces its files by
swapping a ``..data`` symlink to a new dated folder, which changes the resolved path
even when the times are equal. A new set of files is first loaded into a scratch
context: if that fails (a half-written file, a key that does not match the
certificate) the old certificate stays in use and one error line says why; the files
are tried again when they change again.

A client CA that changes is added to the trusted set (OpenSSL cannot forget a CA
from a live context): a CA that is removed stays trusted until the next restart.

Verification of the upstream is always on: the hostname (or ``server_name``) is
checked against the certificate, which must chain to ``ca_file`` (or to the system's
CAs when no ``upstream_tls`` is set). No option turns this off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from permgate.config import ListenerTls, Settings, UpstreamTls
from permgate.core.errors import ConfigError

__all__ = [
    "POLL_SECONDS",
    "CertificateWatcher",
    "ReloadingContext",
    "TlsSetup",
    "server_context",
    "upstream_context",
]

log = logging.getLogger("permgate.tls")

# How often the files are checked: a rotated certificate is in use within this (well
# under the 10 seconds the chart's users are promised).
POLL_SECONDS: Final = 2.0

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_Stamp = tuple[str, int, int, int] | None


def _stamp(path: str) -> _Stamp:
    """What identifies one version of a file: resolved path, inode, mtime, size."""
    try:
        st = os.stat(path)
        return (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return None


class ReloadingContext:
    """One ``SSLContext`` and the files it was made from.

    Args:
        name: the configuration key (``listen_tls``...), for messages.
        context: the context to keep current.
        cert_file, key_file: the certificate chain and its key, or None (a client
            without a certificate).
        ca_file: CAs to trust (client certificates on a server, the upstream's
            certificate on a client), or None.
        ca_key: the key that names ``ca_file``, for messages.
    """

    def __init__(
        self,
        name: str,
        context: ssl.SSLContext,
        *,
        cert_file: str | None,
        key_file: str | None,
        ca_file: str | None,
        ca_key: str = "ca_file",
    ) -> None:
        self.name = name
        self._ca_key = ca_key
        self.context = context
        self._cert_file = cert_file
        self._key_file = key_file
        self._ca_file = ca_file
        self._files = tuple(f for f in (cert_file, key_file, ca_file) if f is not None)
        self._stamps = self._current_stamps()
        self._load(context)

    def _load(self, context: ssl.SSLContext) -> None:
        _load(self.name, context, self._cert_file, self._key_file, self._ca_file, self._ca_key)

    def _current_stamps(self) -> tuple[_Stamp, ...]:
        return tuple(_stamp(f) for f in self._files)

    def refresh(self) -> bool:
        """Load the files again if any changed since last seen; True when the new
        ones are in use. A bad new set keeps the old one and logs why."""
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        scratch = ssl.SSLContext(
            ssl.PROTOCOL_TLS_SERVER
            if self.context.protocol == ssl.PROTOCOL_TLS_SERVER
            else ssl.PROTOCOL_TLS_CLIENT
        )
        try:
            self._load(scratch)
            self._load(self.context)
        except ConfigError as exc:
            log.error(
                "%s: new files refused, the previous certificate stays in use: %s",
                self.name,
                "; ".join(exc.problems),
            )
            return False
        log.info("%s: certificate files reloaded (%s)", self.name, ", ".join(self._files))
        return True


def _load(
    name: str,
    context: ssl.SSLContext,
    cert_file: str | None,
    key_file: str | None,
    ca_file: str | None,
    ca_key: str,
) -> None:
    """Load the chain and the CAs into ``context``; one clear line on failure."""
    for key, path in (("cert_file", cert_file), ("key_file", key_file), (ca_key, ca_file)):
        if path is not None and not os.access(path, os.R_OK):
            why = "no such file" if not os.path.exists(path) else "not readable"
            raise ConfigError([f"{name}.{key}: {path}: cannot read: {why}"])
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                [
                    f"{name}: {cert_file} and {key_file}: not a PEM certificate chain and "
                    f"its matching private key: {_ssl_why(exc)}"
                ]
            ) from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                [f"{name}: {ca_file}: not PEM CA certificates: {_ssl_why(exc)}"]
            ) from None


def _ssl_why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason).lower().replace("_", " ") if reason else str(exc)


def server_context(name: str, settings: ListenerTls) -> ReloadingContext:
    """A listener's context: its minimum version and, with ``client_ca_file``, client
    certificates verified against that CA. Certificates are optional (clients without
    one still connect and use bearer tokens), but one that is presented must verify,
    or the handshake fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[settings.min_version]
    context.set_alpn_protocols(["http/1.1"])
    reloading = ReloadingContext(
        name,
        context,
        cert_file=settings.cert_file,
        key_file=settings.key_file,
        ca_file=settings.client_ca_file,
        ca_key="client_ca_file",
    )
    if settings.client_ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return reloading


def upstream_context(settings: UpstreamTls | None) -> ReloadingContext:
    """The upstream client's context: verification always on, against ``ca_file`` (or
    the system's CAs without ``upstream_tls``), with the client certificate if set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if settings is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return ReloadingContext(
            "upstream_tls", context, cert_file=None, key_file=None, ca_file=None
        )
    return ReloadingContext(
        "upstream_tls",
        context,
        cert_file=settings.cert_file,
        key_file=settings.key_file,
        ca_file=settings.ca_file,
    )


class CertificateWatcher:
    """Polls the files of every context and reloads those that changed."""

    def __init__(
        self, contexts: Sequence[ReloadingContext], poll_seconds: float = POLL_SECONDS
    ) -> None:
        self.contexts = tuple(contexts)
        self.poll_seconds = poll_seconds

    def refresh(self) -> None:
        for context in self.contexts:
            context.refresh()

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            self.refresh()


@dataclass(frozen=True, slots=True)
class TlsSetup:
    """Every TLS context one process serves and connects with, and their watcher.

    ``listen``, ``admin`` and ``authz`` are None for a plain-HTTP listener, ``upstream`` for a
    plain-HTTP (or unix socket) upstream.
    """

    listen: ssl.SSLContext | None
    admin: ssl.SSLContext | None
    authz: ssl.SSLContext | None
    upstream: ssl.SSLContext | None
    server_name: str | None
    watcher: CertificateWatcher

    @classmethod
    def from_settings(cls, settings: Settings, poll_seconds: float = POLL_SECONDS) -> TlsSetup:
        """Load every configured file now; :class:`ConfigError` names what is wrong."""
        contexts: list[ReloadingContext] = []
        problems: list[str] = []

        def build(make: Callable[[], ReloadingContext]) -> ssl.SSLContext | None:
            try:
                reloading = make()
            except ConfigError as exc:
                problems.extend(exc.problems)
                return None
            contexts.append(reloading)
            return reloading.context

        listen = admin = authz = upstream = None
        if (listen_tls := settings.listen_tls) is not None:
            listen = build(lambda: server_context("listen_tls", listen_tls))
        if (admin_tls := settings.admin_tls) is not None:
            admin = build(lambda: server_context("admin_tls", admin_tls))
        if (authz_tls := settings.authz_tls) is not None:
            authz = build(lambda: server_context("authz_tls", authz_tls))
        if settings.upstream.startswith("https://"):
            upstream = build(lambda: upstream_context(settings.upstream_tls))
        if problems:
            raise ConfigError(problems)
        upstream_tls = settings.upstream_tls
        server_name = upstream_tls.server_name if upstream_tls is not None else None
        watcher = CertificateWatcher(contexts, poll_seconds)
        return cls(listen, admin, authz, upstream, server_name, watcher)
