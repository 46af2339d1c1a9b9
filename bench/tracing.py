"""What tracing costs per request: off, configured but unsampled, and every request sampled.

    .venv/bin/python bench/tracing.py                 # ~2 minutes
    .venv/bin/python bench/tracing.py --duration 5 --rounds 1

The same setup as bench/load.py (a 1-worker ``permgate serve`` in front of
bench/upstream.py, driven by ``wrk`` on loopback), in rotation:

- ``off``: no ``tracing`` key (the default);
- ``off+traceparent``: no ``tracing`` key, each request carries a ``traceparent``
  (what a traced caller costs an untraced sidecar: the trace id read for the audit);
- ``ratio-0``: ``tracing`` configured with ``sample_ratio: 0``, no ``traceparent``
  (sampling decided, no span made);
- ``ratio-1``: ``sample_ratio: 1``, each request with a sampled ``traceparent``: three
  spans per request, exported over OTLP/HTTP to a local collector that answers 200.

It prints req/s, p50/p99 and the CPU µs per request of the permgate process (which
includes the exporter's thread), and each config's CPU cost over ``off``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load  # bench/load.py: the processes, wrk and CPU accounting

TRACEPARENT: Final = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CONFIGS: Final = ("off", "off+traceparent", "ratio-0", "ratio-1")

COLLECTOR: Final = """
import sys
from aiohttp import web

async def receive(request):
    await request.read()
    return web.Response(status=200, content_type="application/x-protobuf")

app = web.Application(client_max_size=64 * 1024**2)
app.router.add_post("/v1/traces", receive)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (8)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in rotation (3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per config")
    args = parser.parse_args(argv)
    wrk = load.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="permgate-bench-tracing-") as tmp:
        folder = Path(tmp)
        up_port, collector_port = load.free_port(), load.free_port()
        upstream = load.Server(
            "upstream",
            [load.PYTHON, str(load.BENCH / "upstream.py"), str(up_port)],
            up_port,
            folder / "upstream.log",
        )
        script = folder / "collector.py"
        script.write_text(COLLECTOR, encoding="utf-8")
        collector = load.Server(
            "collector",
            [load.PYTHON, str(script), str(collector_port)],
            collector_port,
            folder / "collector.log",
        )
        configs: list[load.Config] = []
        for name in CONFIGS:
            server, secret, audit = load.permgate_server(name, folder / name, 1, up_port)
            config_file = folder / name / "permgate.yaml"
            if name.startswith("ratio-"):
                ratio = name.removeprefix("ratio-")
                with open(config_file, "a", encoding="utf-8") as f:
                    f.write(
                        f"tracing: {{otlp_endpoint: 'http://127.0.0.1:{collector_port}', "
                        f"sample_ratio: {ratio}}}\n"
                    )
            headers = [f"Authorization: Bearer {secret}"]
            if name in ("off+traceparent", "ratio-1"):
                headers.append(TRACEPARENT)
            url = f"http://127.0.0.1:{server.port}{load.TARGET}"
            configs.append(load.Config(name, server, url, headers, audit))
        with load.running([upstream, collector, *(c.server for c in configs)]):
            for config in configs:
                load.check_answer(config.url, config.headers)
                load.run_wrk(wrk, config.url, config.headers, args, args.warmup)
            samples: dict[str, list[load.Sample]] = {c.name: [] for c in configs}
            for round_ in range(args.rounds):
                order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
                for config in order:
                    sample = load.measure(wrk, config, upstream, args)
                    samples[config.name].append(sample)
                    print(
                        f"round {round_ + 1}/{args.rounds} {config.name:<16}"
                        f" {sample.rps:>8,.0f} req/s  {sample.cpu_us:.0f} CPU µs/req",
                        flush=True,
                    )
    print(
        f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"{args.rounds} round(s) in rotation, medians; permgate serve, 1 worker"
    )
    print(
        f"{'config':<16} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU µs/req':>10} {'vs off':>8}"
    )
    base = statistics.median(s.cpu_us for s in samples["off"])
    for name, runs in samples.items():
        rps = statistics.median(s.rps for s in runs)
        p50 = statistics.median(s.p50_ms for s in runs)
        p99 = statistics.median(s.p99_ms for s in runs)
        cpu = statistics.median(s.cpu_us for s in runs)
        print(f"{name:<16} {rps:>8,.0f} {p50:>7.2f} {p99:>7.2f} {cpu:>10.0f} {cpu - base:>+7.0f}µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
