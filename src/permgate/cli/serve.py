"""``permgate serve [--workers N]``: the gateway and the admin listener.

The listening sockets are bound once, before anything else starts, and never with
SO_REUSEPORT: a second ``serve`` on an address this one holds is refused, since two
instances must never silently split the traffic. With ``--workers N`` the parent
binds, checks the map and the store once (one clear refusal rather than N), and
starts N worker processes that inherit those very sockets, with Prometheus
multiprocess mode so that one scrape of any worker sees the sum of all. The parent
forwards SIGTERM, SIGINT and SIGHUP to the workers and exits when they have drained.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import FrameType

from permgate.cli._common import add_common_arguments, settings_from_args
from permgate.config import Settings
from permgate.observability.logs import configure_logging
from permgate.runtime.listeners import FDS_ENV, Listeners, bind_listeners, describe

# Set in each worker's environment; deliberately outside the PERMGATE_ config namespace.
WORKER_ENV = "_PERMGATE_WORKER"

log = logging.getLogger("permgate")

ORPHAN_CHECK_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, json_output=False)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the listening sockets (default 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("permgate serve: --workers must be at least 1", file=sys.stderr)
        return 2
    settings = settings_from_args(args)  # validate in the parent: one clear report
    configure_logging(settings.log_level, settings.log_format)
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        inherited = os.environ.get(FDS_ENV)
        listeners = Listeners.from_env(inherited) if inherited else None
        return _run_one(_per_worker(settings, worker), listeners, worker=True)
    if args.workers == 1:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # The one process is the parent: same preparation as for N workers.
            from permgate.observability.metrics import prepare_multiprocess_dir

            prepare_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        return _run_one(settings, None, worker=False)
    return _run_workers(args, settings)


def _per_worker(settings: Settings, worker: str) -> Settings:
    """Workers must not rotate one audit file between them: each writes its own,
    ``audit.log`` becoming ``audit-w0.log``, ``audit-w1.log``..."""
    sink = settings.audit.sink
    if not sink.startswith("file:"):
        return settings
    path = Path(sink.removeprefix("file:"))
    own = path.with_name(f"{path.stem}-w{worker}{path.suffix}")
    return replace(settings, audit=replace(settings.audit, sink=f"file:{own}"))


def _run_one(settings: Settings, listeners: Listeners | None, *, worker: bool) -> int:
    """Serve in this process, on ``listeners`` (a worker's) or on sockets bound here."""
    from permgate.runtime.app import install_uvloop, serve

    install_uvloop()
    if not worker:
        asyncio.run(serve(settings, listeners=listeners))
        return 0

    async def serve_while_parent_lives() -> None:
        stop = asyncio.Event()
        watch = asyncio.create_task(_stop_when_orphaned(stop))
        try:
            await serve(settings, listeners=listeners, stop=stop)
        finally:
            watch.cancel()

    asyncio.run(serve_while_parent_lives())
    return 0


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker whose parent died (SIGKILL, out of memory) drains and exits rather
    than keep serving the inherited sockets on its own, unsupervised."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_CHECK_SECONDS)
    log.warning("permgate serve: the parent process is gone; this worker stops")
    stop.set()


def _check_map_and_store(settings: Settings) -> None:
    """What every worker would refuse, refused once by the parent (and the store's
    schema brought up to date once, not by N workers at the same time)."""
    import asyncio

    from permgate.maps.loader import load_map
    from permgate.runtime.tls import TlsSetup
    from permgate.store import open_store

    TlsSetup.from_settings(settings)  # certificate files that cannot be used
    load_map(settings.endpoint_map)

    async def open_and_close() -> None:
        store = await open_store(settings.store)
        await store.close()

    asyncio.run(open_and_close())


def _run_workers(args: argparse.Namespace, settings: Settings) -> int:
    """Bind, start N copies of this command on the same sockets, supervise them."""
    listeners = bind_listeners(settings)
    workers: list[subprocess.Popen[bytes]] = []
    received: list[int] = []  # a signal that comes while workers start reaches them too

    def forward(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    try:
        _check_map_and_store(settings)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="permgate-metrics-")
        from permgate.observability.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        env = {**os.environ, FDS_ENV: listeners.to_env()}
        # One change counter for every worker: an admin API change binds all before answering.
        from permgate.gateway import changeepoch

        env[changeepoch.ENV] = changeepoch.create_file()
        atexit.register(changeepoch.remove_file, env[changeepoch.ENV])
        # The console on any worker shows every worker's recent decisions.
        from permgate.console.decisions import SHARE_ENV, create_share_dir, remove_share_dir

        env[SHARE_ENV] = create_share_dir()
        atexit.register(remove_share_dir, env[SHARE_ENV])
        argv = [sys.executable, "-m", "permgate", "serve", "--workers", str(args.workers)]
        if args.config:
            argv += ["--config", args.config]
        if args.store:
            argv += ["--store", args.store]
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        gateway_at, admin_at = describe(listeners.gateway), describe(listeners.admin)
        log.info(  # the bound addresses: a configured port 0 shows the real one
            "permgate serve: %d workers on %s (admin %s)",
            args.workers,
            gateway_at,
            admin_at,
            extra={"workers": args.workers, "listen": gateway_at, "admin_listen": admin_at},
        )
        for index in range(args.workers):
            worker = subprocess.Popen(
                argv, env={**env, WORKER_ENV: str(index)}, pass_fds=listeners.fds()
            )
            for early in received:
                worker.send_signal(early)
            workers.append(worker)
    finally:
        # The workers hold the sockets now; when the last of them exits, the
        # addresses are free (the parent keeping a copy would keep them listening).
        listeners.close()
    from permgate.observability.metrics import mark_process_dead

    codes = []
    for worker in workers:
        codes.append(worker.wait())
        mark_process_dead(worker.pid)
    log.info("permgate serve: workers exited with %s", ", ".join(map(str, codes)))
    return max((abs(code) for code in codes), default=0)
