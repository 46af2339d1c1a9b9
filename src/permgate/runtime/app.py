"""The composition root: build every part from :class:`Settings`, run, stop cleanly.

Nothing here decides anything. It opens the store, attaches the in-memory model to
its change notifications, loads the map, starts audit and metrics, and serves two
listeners: the gateway (the proxied API only) and the admin listener (``/healthz``,
``/readyz``, ``/metrics``, ``/v1/...``): the gateway listener serves nothing of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, Final

from aiohttp import web

from permgate.admin import create_admin_api
from permgate.config import Settings
from permgate.core.endpoints import EndpointMap
from permgate.core.errors import StoreUnavailable
from permgate.gateway.authn import Authenticator
from permgate.gateway.authz import DecisionService
from permgate.gateway.changeepoch import ChangeEpoch
from permgate.gateway.http1 import Listener
from permgate.gateway.jwks import JwtVerifier
from permgate.gateway.modelcache import ModelCache
from permgate.gateway.pipeline import Gateway
from permgate.gateway.proxy import Upstream
from permgate.manage.service import ModelService, audit_event
from permgate.maps.reload import MapReloader
from permgate.observability.audit import AuditLog
from permgate.observability.metrics import Metrics
from permgate.observability.outcome import RequestOutcome
from permgate.observability.tracing import Tracer
from permgate.observability.upstream_watch import UpstreamWatch
from permgate.observability.usage import UsageRecorder
from permgate.runtime.listeners import BACKLOG, Listeners, bind_listeners
from permgate.runtime.tls import TlsSetup
from permgate.store import AuditRecord, Store, open_store

__all__ = ["Runtime", "serve"]

log = logging.getLogger("permgate")
access_log = logging.getLogger("permgate.access")

TOKEN_USE_FLUSH_SECONDS: Final = 5.0
USAGE_FLUSH_SECONDS: Final = 5.0  # permission usage reaches the store this far behind at most
SHUTDOWN_TIMEOUT_SECONDS: Final = 20.0
AUDIT_DRAIN_SECONDS: Final = 8.0  # with the shutdown timeout, under Kubernetes' default 30 s
CLIENT_GONE_STATUS: Final = 499  # what the pipeline records when no answer was sent
_INFO: Final = logging.INFO


class _Observer:
    """The pipeline's observer: one audit slot per request, metrics, the event, the
    access log line, and what the upstream's fate says about its reachability.

    It runs once per request: the calls it makes are bound methods taken once."""

    __slots__ = (
        "_admit",
        "_audit",
        "_emit",
        "_observe",
        "_upstream",
        "_use",
        "answered",
        "unanswered",
    )

    def __init__(
        self,
        metrics: Metrics,
        audit: AuditLog,
        upstream: UpstreamWatch,
        usage: UsageRecorder | None = None,
    ) -> None:
        self._audit = audit
        self._upstream = upstream
        self._observe = metrics.observe
        self._emit = audit.emit_decision
        self._admit = audit.try_reserve
        self._use = None if usage is None else usage.record
        self.answered = 0  # requests that got an answer
        self.unanswered = 0  # requests that ended without one: client gone, or cut at shutdown

    async def admit(self) -> None:
        await self._audit.reserve()

    def admit_now(self) -> bool:
        """Admit without awaiting when an audit slot is free; False: await :meth:`admit`."""
        return self._admit()

    def record(self, outcome: RequestOutcome) -> None:
        self._observe(outcome)
        self._emit(outcome)
        use = self._use
        if use is not None:
            use(outcome)  # allowed requests only; an in-memory count
        self._finished(outcome)

    def refused(self, outcome: RequestOutcome) -> None:
        self._observe(outcome)
        self._finished(outcome)

    def _finished(self, outcome: RequestOutcome) -> None:
        if outcome.status == CLIENT_GONE_STATUS:
            self.unanswered += 1
        else:
            self.answered += 1
        if outcome.upstream_error == "connect":
            self._upstream.unreachable("a request could not connect")
        elif outcome.upstream_s is not None:
            self._upstream.answered()
        if access_log.isEnabledFor(_INFO):
            _log_access(outcome)


def _log_access(outcome: RequestOutcome) -> None:
    """One line per request, carrying its request id (the audit event's too)."""
    target = f"{outcome.method} {outcome.path}" if outcome.method else "(unreadable request)"
    access_log.info(
        "%s -> %d",
        target,
        outcome.status,
        extra={
            "request_id": outcome.request_id,
            "status": outcome.status,
            "duration_ms": round(outcome.duration_s * 1000, 3),
            "client_ip": outcome.client_ip,
            "endpoint": outcome.endpoint,
            "decision": outcome.decision,
            "reason": outcome.reason,
        },
    )


@dataclass
class Runtime:
    """Everything one ``permgate serve`` process owns, started and stopped in order."""

    settings: Settings
    audit_stream: IO[str] | None = None
    store: Store = field(init=False)
    model: ModelCache = field(init=False)
    service: ModelService = field(init=False)
    authenticator: Authenticator = field(init=False)
    metrics: Metrics = field(init=False)
    audit: AuditLog = field(init=False)
    reloader: MapReloader = field(init=False)
    upstream: Upstream = field(init=False)
    upstream_watch: UpstreamWatch = field(init=False)
    observer: _Observer = field(init=False)
    usage: UsageRecorder = field(init=False)
    gateway: Gateway = field(init=False)
    gateway_listening: bool = False
    authz_listening: bool = False
    tls: TlsSetup = field(init=False)
    tracer: Tracer | None = None
    change_epoch: ChangeEpoch | None = None
    _jwt: JwtVerifier | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Build and start every part; raises a PermgateError on bad config or store,
        having closed what had started (an open store would keep the process alive)."""
        try:
            await self._start_parts()
        except BaseException:
            await self._close_started()
            raise

    async def _close_started(self) -> None:
        for name in ("reloader", "upstream", "_jwt", "store"):
            part = getattr(self, name, None)  # None: not built before the failure
            if part is not None:
                with contextlib.suppress(Exception):
                    await part.close()
        if getattr(self, "audit", None) is not None:
            await self.audit.close(timeout=AUDIT_DRAIN_SECONDS)

    async def _start_parts(self) -> None:
        settings = self.settings
        # Certificates first: a missing or broken file is refused before anything runs.
        self.tls = TlsSetup.from_settings(settings)
        self.metrics = Metrics()
        self.audit = AuditLog(settings.audit, metrics=self.metrics, stream=self.audit_stream)
        await self.audit.start()
        # The store first: a store that cannot be opened is refused before any line
        # about the map is logged or audited.
        self.store = await open_store(settings.store)
        self.reloader = MapReloader(
            settings.endpoint_map,
            on_new_map=self._swap_map,
            metrics=self.metrics,
            audit=self.audit,
            poll_seconds=settings.map_poll_seconds,
        )
        endpoint_map = self.reloader.load_initial()
        self.model = ModelCache(
            self.store,
            max_entries=settings.cache.max_entries,
            outage_grace_seconds=settings.cache.outage_grace_seconds,
        )
        await self.model.attach(self.store)
        # Workers of one `serve --workers N` share a change counter (see changeepoch).
        self.change_epoch = ChangeEpoch.from_environment()
        if self.change_epoch is not None:
            self.model.follow(self.change_epoch, self.store.deliver_now)
        self.service = ModelService(
            self.store,
            default_enforcement=settings.default_enforcement,
            token_prefix=settings.auth.token_prefix,
            on_audit=self._admin_audit,
        )
        if settings.auth.jwt is not None:
            self._jwt = JwtVerifier(settings.auth.jwt)
            await self._jwt.start()
        self.authenticator = Authenticator(
            self.model, token_prefix=settings.auth.token_prefix, jwt=self._jwt
        )
        self.upstream = Upstream(
            settings.upstream,
            timeout_seconds=settings.upstream_timeout_seconds,
            ssl_context=self.tls.upstream,
            server_name=self.tls.server_name,
        )
        await self.upstream.start()
        if settings.tracing is not None:  # only the key turns it on, never OTEL_* variables
            self.tracer = Tracer(settings.tracing)
        self.upstream_watch = UpstreamWatch(settings.upstream)
        self.usage = UsageRecorder(self.model, lambda: self.gateway.endpoint_map)
        self.observer = _Observer(self.metrics, self.audit, self.upstream_watch, self.usage)
        self.gateway = Gateway(
            endpoint_map=endpoint_map,
            model=self.model,
            authenticator=self.authenticator,
            upstream=self.upstream,
            observer=self.observer,
            forward_credential=settings.auth.forward_credential,
            decision_ttl_seconds=settings.cache.decision_ttl_seconds,
            max_entries=settings.cache.max_entries,
            tracer=self.tracer,
            principal_from=settings.auth.mtls.principal_from if settings.auth.mtls else None,
        )
        await self.reloader.start()
        self._tasks = [
            asyncio.create_task(self._flush_token_uses(), name="permgate-token-uses"),
            asyncio.create_task(self._flush_usage(), name="permgate-usage"),
            asyncio.create_task(self.model.keepalive(), name="permgate-keepalive"),
        ]
        if settings.listen is not None:  # decision-only mode has no upstream to probe
            # Never delays the start: an upstream that starts later is fine, but say so.
            self._tasks.append(
                asyncio.create_task(self._probe_upstream(), name="permgate-upstream-probe")
            )
        if self.tls.watcher.contexts:  # rotated certificates, seen within seconds
            self._tasks.append(asyncio.create_task(self.tls.watcher.run(), name="permgate-tls"))

    async def _probe_upstream(self) -> None:
        await self.upstream_watch.probe()

    def _admin_audit(self, record: AuditRecord) -> None:
        """A committed admin API change also goes to the audit stream.
        Rare, and already committed, so it never waits for a queue slot."""
        self.audit.emit_nowait(audit_event(record))

    def _swap_map(self, endpoint_map: EndpointMap) -> None:
        with contextlib.suppress(AttributeError):  # the initial load precedes the gateway
            self.gateway.swap_map(endpoint_map)

    async def _flush_token_uses(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_USE_FLUSH_SECONDS)
            await self.flush_token_uses()

    async def flush_token_uses(self) -> None:
        """Write ``last_used_at`` of the tokens used since the last flush (best effort)."""
        uses = self.authenticator.drain_token_uses()
        if not uses:
            return
        try:
            await self.store.touch_tokens(uses)
        except StoreUnavailable as exc:
            log.warning("could not record token use: %s", exc)

    async def _flush_usage(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_SECONDS)
            await self.flush_usage()

    async def flush_usage(self) -> None:
        """Write the permissions exercised since the last flush (best effort: a store
        that cannot be reached keeps them for the next flush)."""
        try:
            await self.usage.flush(self.store)
        except Exception:  # never let bookkeeping stop the periodic flush
            log.exception("could not record permission usage")

    async def deliver_changes(self) -> None:
        """Apply committed store changes to the local caches now (after an admin write),
        then tell the other workers, which catch up before their next decision: the
        change binds every worker before the admin API answers."""
        try:
            await self.store.deliver_now()
        finally:
            if self.change_epoch is not None:
                self.change_epoch.bump()

    async def stop(self) -> None:
        """Stop background work, flush, and close in reverse order of start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.reloader.close()
        with contextlib.suppress(Exception):
            await self.flush_token_uses()
        await self.flush_usage()
        await self.upstream.close()
        if self.tracer is not None:  # the last spans are sent (bounded by the exporter)
            await asyncio.to_thread(self.tracer.close)
        if self._jwt is not None:
            await self._jwt.close()
        await self.store.close()
        # Bounded, so a broken sink cannot hang a pod past its termination grace
        # period; anything left is counted as dropped and logged, never silent.
        await self.audit.close(timeout=AUDIT_DRAIN_SECONDS)

    # -- the admin listener ------------------------------------------------------

    def admin_application(self) -> web.Application:
        """``/healthz``, ``/readyz``, ``/metrics`` and the admin API under ``/v1``."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.add_subapp(
            "/v1",
            create_admin_api(
                service=self.service,
                authenticator=self.authenticator,
                model=self.model,
                endpoint_map=lambda: self.gateway.endpoint_map,
                on_committed=self.deliver_changes,
            ),
        )
        from permgate.console import RecentDecisions, create_console  # the web console

        app.add_subapp(
            "/console/",
            create_console(
                service=self.service,
                authenticator=self.authenticator,
                model=self.model,
                endpoint_map=lambda: self.gateway.endpoint_map,
                on_committed=self.deliver_changes,
                decisions=RecentDecisions.tap(self.audit),
            ),
        )
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def decision_service(self) -> DecisionService:
        """The ``authz_listen`` handler: the gateway's evaluator, cache, metrics, audit."""
        return DecisionService(
            gateway=self.gateway,
            observer=self.observer,
            authenticator=self.authenticator,
            model=self.model,
            trusted_proxies=self.settings.authz_trusted_proxies,
            body_timeout=self.settings.upstream_timeout_seconds,
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = {"endpoint_map": True, "store": await self._store_answers()}
        # Decision-only mode has no gateway listener: the decision listener stands in.
        if self.settings.listen is not None:
            checks["gateway_listener"] = self.gateway_listening
        if self.settings.authz_listen is not None:
            checks["decision_listener"] = self.authz_listening
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    async def _store_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.store.ping(), timeout=2.0)
        except (StoreUnavailable, TimeoutError):
            return False
        return True

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.metrics_response()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response


async def serve(
    settings: Settings,
    *,
    listeners: Listeners | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Runtime], Awaitable[None] | None] | None = None,
    handle_signals: bool = True,
    audit_stream: IO[str] | None = None,
) -> Runtime:
    """Run both listeners until SIGTERM/SIGINT (or ``stop``), then drain and exit.

    The listening sockets are bound before anything else starts (or come bound from
    a parent ``serve`` as ``listeners``), so an address in use is refused at once.
    On SIGTERM the listeners stop accepting, in-flight requests finish (up to
    :data:`SHUTDOWN_TIMEOUT_SECONDS`), queued audit events are written, one line says
    how many requests were drained, and only then does the process exit. SIGHUP
    reloads the endpoint map.
    """
    listeners = bind_listeners(settings) if listeners is None else listeners
    runtime = Runtime(settings, audit_stream=audit_stream)
    try:
        await runtime.start()
    except BaseException:
        listeners.close()
        raise
    # Everything built so far lives as long as the process: keep it out of the
    # collector's generations, so full collections stay short (p99 under load).
    gc.collect()
    gc.freeze()
    stop = stop or asyncio.Event()
    causes: list[str] = []  # the signal that stopped serve, when one did
    if handle_signals:  # embedded callers (tests) own the signals themselves
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _stop_on_signal, stop, causes, signum.name)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: asyncio.ensure_future(runtime.reloader.reload_now("SIGHUP")),
        )
    # The deciding listeners run on permgate's own HTTP/1.1 server (gateway.http1):
    # JSON refusals of unreadable requests that echo nothing, head timeouts, pipelining.
    head_timeout = settings.upstream_timeout_seconds
    gateway_listener = Listener(runtime.gateway, head_timeout=head_timeout)
    authz_listener = Listener(runtime.decision_service(), head_timeout=head_timeout)
    admin_runner = web.AppRunner(runtime.admin_application(), handle_signals=False, access_log=None)
    await admin_runner.setup()
    try:
        for sock in listeners.gateway:
            await gateway_listener.serve(sock, ssl=runtime.tls.listen, backlog=BACKLOG)
        runtime.gateway_listening = bool(listeners.gateway)
        for sock in listeners.authz:  # the decision service; a client certificate there
            # is the calling proxy's and never identifies the principal being decided
            await authz_listener.serve(sock, ssl=runtime.tls.authz, backlog=BACKLOG)
        runtime.authz_listening = bool(listeners.authz)
        for sock in listeners.admin:
            await web.SockSite(
                admin_runner, sock, backlog=BACKLOG, ssl_context=runtime.tls.admin
            ).start()
        gateway_at, admin_at = _bound(gateway_listener.addresses), _bound(admin_runner.addresses)
        log.info(  # the bound addresses: a configured port 0 shows the real one
            "permgate serving %s -> %s (admin %s)",
            gateway_at,
            settings.upstream,
            admin_at,
            extra={"listen": gateway_at, "admin_listen": admin_at, "upstream": settings.upstream},
        )
        if listeners.authz:
            authz_at = _bound(authz_listener.addresses)
            log.info(
                "permgate decision service on %s (Envoy ext_authz, forward auth, AuthZEN)",
                authz_at,
                extra={"authz_listen": authz_at},
            )
        if on_ready is not None:
            result = on_ready(runtime)
            if result is not None:
                await result
        await stop.wait()
        return runtime
    finally:
        cause = causes[0] if causes else "stop requested" if stop.is_set() else "error"
        await _shut_down(runtime, (gateway_listener, authz_listener), admin_runner, cause)
        listeners.close()


def _stop_on_signal(stop: asyncio.Event, causes: list[str], name: str) -> None:
    causes.append(name)
    stop.set()


async def _shut_down(
    runtime: Runtime, deciding: tuple[Listener, ...], admin: web.BaseRunner, cause: str
) -> None:
    """Stop accepting, let in-flight requests finish, close the parts; say how it went."""
    runtime.gateway_listening = runtime.authz_listening = False
    observer = runtime.observer
    answered, unanswered = observer.answered, observer.unanswered
    log.info(
        "permgate stopping (%s): no new connections, draining requests in flight (at most %g s)",
        cause,
        SHUTDOWN_TIMEOUT_SECONDS,
        extra={"cause": cause},
    )
    started = time.monotonic()
    await asyncio.gather(*(listener.shut_down(SHUTDOWN_TIMEOUT_SECONDS) for listener in deciding))
    await admin.cleanup()
    drained, cut_off = observer.answered - answered, observer.unanswered - unanswered
    await runtime.stop()
    log.info(
        "permgate stopped (%s): in-flight requests drained: %d, cut off: %d, in %.1f s; "
        "requests since start: %d",
        cause,
        drained,
        cut_off,
        time.monotonic() - started,
        observer.answered + observer.unanswered,
        extra={
            "cause": cause,
            "drained": drained,
            "cut_off": cut_off,
            "requests": observer.answered + observer.unanswered,
        },
    )


def _bound(addresses: list[Any]) -> str:
    return ", ".join(f"{address[0]}:{address[1]}" for address in addresses)


def install_uvloop() -> bool:
    """Use uvloop when it is installed (a few % on the proxy path, bench/README.md)."""
    if sys.platform == "win32":
        return False
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
