"""``permgate serve [--workers N]``: the gateway and the admin listener.

With ``--workers N`` the parent starts N worker processes that share the ports
through SO_REUSEPORT, and Prometheus multiprocess mode so that one scrape of any
worker sees the sum of all. The parent forwards SIGTERM, SIGINT and SIGHUP to the
workers and exits when they have drained.
"""

from __future__ import annotations

import argparse
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

# Set in each worker's environment; deliberately outside the PERMGATE_ config namespace.
WORKER_ENV = "_PERMGATE_WORKER"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, json_output=False)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the ports with SO_REUSEPORT (default 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("permgate serve: --workers must be at least 1", file=sys.stderr)
        return 2
    settings = settings_from_args(args)  # validate in the parent: one clear report
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    worker = os.environ.get(WORKER_ENV)
    if worker is not None:
        return _run_one(_per_worker(settings, worker), reuse_port=True)
    if args.workers == 1:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # The one process is the parent: same preparation as for N workers.
            from permgate.observability.metrics import prepare_multiprocess_dir

            prepare_multiprocess_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        return _run_one(settings, reuse_port=False)
    return _run_workers(args)


def _per_worker(settings: Settings, worker: str) -> Settings:
    """Workers must not rotate one audit file between them: each writes its own,
    ``audit.log`` becoming ``audit-w0.log``, ``audit-w1.log``..."""
    sink = settings.audit.sink
    if not sink.startswith("file:"):
        return settings
    path = Path(sink.removeprefix("file:"))
    own = path.with_name(f"{path.stem}-w{worker}{path.suffix}")
    return replace(settings, audit=replace(settings.audit, sink=f"file:{own}"))


def _run_one(settings: Settings, *, reuse_port: bool) -> int:
    import asyncio

    from permgate.app import install_uvloop, serve

    install_uvloop()
    asyncio.run(serve(settings, reuse_port=reuse_port))
    return 0


def _run_workers(args: argparse.Namespace) -> int:
    """Start N copies of this command as workers and supervise them."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="permgate-metrics-")
    env = dict(os.environ)
    from permgate.observability.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir(env["PROMETHEUS_MULTIPROC_DIR"])
    argv = [sys.executable, "-m", "permgate", "serve", "--workers", str(args.workers)]
    if args.config:
        argv += ["--config", args.config]
    if args.store:
        argv += ["--store", args.store]
    workers = [
        subprocess.Popen(argv, env={**env, WORKER_ENV: str(index)}) for index in range(args.workers)
    ]

    def forward(signum: int, frame: FrameType | None) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    from permgate.observability.metrics import mark_process_dead

    codes = []
    for worker in workers:
        codes.append(worker.wait())
        mark_process_dead(worker.pid)
    return max((abs(code) for code in codes), default=0)
