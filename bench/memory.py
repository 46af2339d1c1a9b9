"""``bench/load.py --memory``: one permgate worker's RSS under a million distinct tokens.

    .venv/bin/python bench/load.py --memory                    # ~4 minutes
    .venv/bin/python bench/load.py --memory --memory-scale 0.1 # ~30 s

The memory goal: a gateway hammered with tokens it has never seen (an attacker's
random, well-formed ones) and with many real tokens each used once must not grow
without bound; its caches (the token cache, the negative cache of unknown token ids,
the decision cache) are bounded, so its RSS rises while they fill, then stays flat.

One ``permgate serve --workers 1`` (the load.py setup: shipped map, SQLite, audit to
a file) in front of bench/upstream.py, with 100,000 extra auth tokens allowed on the
benchmark's route. They are made the quick way that is still correct: one token
through ``ModelService.create_token`` (every rule of the service), the others copies
of it with their own id, name and secret hash, inserted in one store transaction
(~40 µs each instead of ~330 µs through the service with its audit record).

The client sends ``GET`` on the benchmark's route with, interleaved (ten invalid, one
valid, ...): 1,000,000 distinct invalid tokens (well-formed, ``pgt_<16 hex>_<43
chars>``, with token ids the store does not hold: each costs a store lookup and a
negative-cache entry) and the 100,000 valid ones, each used once (a token-cache and a
decision-cache entry each); ``--memory-scale F`` scales both counts. It is raw
asyncio on uvloop with httptools: 8 keep-alive connections, 8 requests pipelined on
each, each connection from its own loopback address (127.0.0.10, .11, ...) so that
the lookup limiter's per-client queue (8 waiting) never refuses the flood with 503s.

RSS is the worker's ``VmRSS`` from ``/proc/PID/status``: after a warm-up (5,000
requests: the seeded token and 50 invalid tokens, repeated), then every N requests
(``--memory-every``; 50 samples by default), then once more a second after the last
answer. The verdict: the peak stays within 100 MiB of the warm RSS, and the RSS is
flat once the caches filled: the samples of the last 30 % of the run span less than
10 MiB.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

import load
from permgate.config import CacheSettings

INVALID: Final = 1_000_000
VALID: Final = 100_000
WARMUP: Final = 5_000
CONNECTIONS: Final = 8
DEPTH: Final = 8  # requests in flight per connection (pipelined)
GROWTH_LIMIT_MIB: Final = 100.0
FLAT_TAIL: Final = 0.3  # the share of the samples, at the end, that must be flat
FLAT_MIB: Final = 10.0
MIB: Final = 1024 * 1024


# --------------------------------------------------------------------------- pure helpers


def status_kib(text: str, field: str) -> int:
    """One ``kB`` field (``VmRSS``, ``VmHWM``) of a ``/proc/PID/status`` text, in KiB."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == field:
            number, unit = value.split()
            if unit != "kB":
                raise ValueError(f"/proc status field {field} in {unit!r}, not kB")
            return int(number)
    raise ValueError(f"no {field} line in the /proc status text")


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """The process's resident set (or its peak, ``VmHWM``) in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return status_kib(f.read(), field) * 1024


@dataclass(frozen=True)
class Verdict:
    """RSS figures of one run, in bytes, and whether they meet the memory goal."""

    warm: int
    peak: int
    final: int
    tail_spread: int  # max - min of the samples of the last FLAT_TAIL of the run

    @property
    def bounded(self) -> bool:
        return self.peak - self.warm <= GROWTH_LIMIT_MIB * MIB

    @property
    def flat(self) -> bool:
        return self.tail_spread < FLAT_MIB * MIB


def verdict(warm: int, samples: Sequence[int], final: int) -> Verdict:
    """The verdict on the samples taken during the run (``final`` counts as the last)."""
    every = [*samples, final]
    tail = every[-max(2, round(len(every) * FLAT_TAIL)) :]
    return Verdict(warm, max([warm, *every]), final, max(tail) - min(tail))


def interleave(
    invalid: int, valid: Sequence[str], make_invalid: Callable[[int], str]
) -> Iterator[str]:
    """``invalid`` invalid tokens and every valid one, spread evenly: the valid ones
    never all come at the end, so the caches fill with both kinds all along."""
    done = 0
    for i, token in enumerate(valid):
        until = (i + 1) * invalid // len(valid)
        for n in range(done, until):
            yield make_invalid(n)
        done = until
        yield token
    for n in range(done, invalid):
        yield make_invalid(n)


def invalid_token(prefix: str, n: int) -> str:
    """A well-formed secret whose token id (``ffff`` + 12 hex digits of ``n``) the
    store does not hold: random ids from ``new_token_id`` start with ``ffff`` once in
    65,536 and would still differ in the other twelve digits."""
    return f"{prefix}ffff{n:012x}_{secrets.token_urlsafe(32)}"


# --------------------------------------------------------------------------- the client


class Feed:
    """The requests still to send (shared by the connections) and what came back."""

    def __init__(self, head: bytes, tokens: Iterator[str], every: int, sample: Callable[[], None]):
        self._head = head
        self._tokens = tokens
        self._again: collections.deque[bytes] = collections.deque()
        self._exhausted = False
        self._every = every
        self._sample = sample
        self.answered = 0
        self.statuses: collections.Counter[int] = collections.Counter()

    def next(self) -> bytes | None:
        if self._again:
            return self._again.popleft()
        if self._exhausted:
            return None
        token = next(self._tokens, None)
        if token is None:
            self._exhausted = True
            return None
        return self._head + token.encode() + b"\r\n\r\n"

    def pending(self) -> bool:
        return bool(self._again) or not self._exhausted

    def resend(self, requests: Sequence[bytes]) -> None:
        """Requests a closed connection never answered go out again first."""
        self._again.extendleft(reversed(requests))

    def answer(self, status: int) -> None:
        self.statuses[status] += 1
        self.answered += 1
        if self._every and self.answered % self._every == 0:
            self._sample()


class Pipelined(asyncio.Protocol):
    """One keep-alive connection keeping ``DEPTH`` requests in flight."""

    def __init__(self, feed: Feed) -> None:
        import httptools

        self._feed = feed
        self._parser = httptools.HttpResponseParser(self)
        self._inflight: collections.deque[bytes] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.answered = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._fill()

    def _fill(self) -> None:
        batch = []
        while len(self._inflight) < DEPTH and (request := self._feed.next()) is not None:
            self._inflight.append(request)
            batch.append(request)
        assert self._transport is not None
        if batch:
            self._transport.write(b"".join(batch))
        elif not self._inflight:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            print(f"  bad answer from permgate ({exc}): reconnecting", file=sys.stderr)
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        self._feed.answer(self._parser.get_status_code())
        self._inflight.popleft()
        self.answered += 1
        if self._parser.should_keep_alive():
            self._fill()
        elif self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._feed.resend(list(self._inflight))
        self._inflight.clear()
        if not self.closed.done():
            self.closed.set_result(None)


async def drive(port: int, feed: Feed) -> int:
    """Send everything ``feed`` holds over ``CONNECTIONS`` connections; the reconnects."""
    loop = asyncio.get_running_loop()
    reconnects = 0

    async def connection(n: int) -> None:
        nonlocal reconnects
        idle = 0
        while feed.pending():
            try:
                _, protocol = await loop.create_connection(
                    lambda: Pipelined(feed), "127.0.0.1", port, local_addr=(f"127.0.0.{10 + n}", 0)
                )
            except OSError as exc:
                raise SystemExit(
                    f"FAILED: cannot connect to permgate on 127.0.0.1:{port}: {exc}"
                ) from None
            await protocol.closed
            if feed.pending():
                reconnects += 1
                idle = idle + 1 if protocol.answered == 0 else 0
                if idle >= 3:
                    raise SystemExit(
                        "FAILED: permgate closed three connections in a row unanswered"
                    )

    await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
    return reconnects


# --------------------------------------------------------------------------- the run


async def seed_tokens(dsn: str, count: int) -> list[str]:
    """``count`` more auth tokens of the seeded principal, on the benchmark's route:
    one through the service, the rest copies of it in one store transaction."""
    from permgate.core.token_secrets import hash_secret, new_secret, new_token_id
    from permgate.manage.service import Actor, ModelService
    from permgate.store import open_store

    store = await open_store(dsn)
    try:
        service = ModelService(store)
        template, first = await service.create_token(
            Actor.cli(), load.PRINCIPAL, "memory 0", ["quotes.read"], [load.TENANT]
        )
        found = [first]
        async with service.transaction() as tx:
            for n in range(1, count):
                token_id = new_token_id()
                secret = new_secret(service.token_prefix, token_id)
                copy = dataclasses.replace(
                    template, id=token_id, name=f"memory {n}", secret_hash=hash_secret(secret)
                )
                await tx.insert_token(copy)
                found.append(secret)
        return found
    finally:
        await store.close()


def probe(url: str, token: str) -> tuple[int, str]:
    """One request with ``token``: its status and body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def worker_pid(server: load.Server) -> int:
    """The one process of ``serve --workers 1`` that accepts on its port."""
    inodes = load.listening_inodes(server.port)
    serving = [pid for pid in server.pids() if load.accepts_on(pid, inodes)]
    if len(serving) != 1:
        raise SystemExit(f"FAILED: expected one serving process, found {serving}")
    return serving[0]


def _mib(size: int) -> str:
    return f"{size / MIB:,.1f} MiB"


def run_memory(scale: float, every: int) -> int:
    """The --memory mode: prints the RSS figures and the verdict."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    invalid, valid = round(INVALID * scale), max(1, round(VALID * scale))
    total = invalid + valid
    every = every or max(1, total // 50)
    with tempfile.TemporaryDirectory(prefix="permgate-bench-memory-") as tmp:
        folder = Path(tmp)
        up_port = load.free_port()
        upstream = load.Server(
            "upstream",
            [load.PYTHON, str(load.BENCH / "upstream.py"), str(up_port)],
            up_port,
            folder / "upstream.log",
        )
        server, secret, _ = load.permgate_server("permgate-1", folder / "permgate-1", 1, up_port)
        t0 = time.monotonic()
        tokens = asyncio.run(seed_tokens(f"sqlite://{folder}/permgate-1/permgate.db", valid))
        print(f"seeded {valid:,} valid tokens in {time.monotonic() - t0:.1f} s", flush=True)
        prefix = secret[: secret.index("_") - 16]  # pgt_ by default
        head = (
            f"GET {load.TARGET} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer "
        ).encode()
        with load.running([upstream, server]):
            pid = worker_pid(server)
            url = f"http://127.0.0.1:{server.port}{load.TARGET}"
            load.check_answer(url, [f"Authorization: Bearer {secret}"])
            status, body = probe(url, invalid_token(prefix, 2 * 10**12))
            print(f"an invalid token is answered {status} {body}")
            if status != 401:
                raise SystemExit("FAILED: an unknown token must be answered 401")
            warm_tokens = [secret] + [invalid_token(prefix, 10**12 + n) for n in range(50)]
            warm_feed = Feed(head, (warm_tokens[n % 51] for n in range(WARMUP)), 0, lambda: None)
            asyncio.run(drive(server.port, warm_feed))
            time.sleep(1)
            warm = rss_bytes(pid)
            print(f"warm-up: {WARMUP:,} requests {dict(warm_feed.statuses)}; RSS {_mib(warm)}")
            samples: list[int] = []
            started = time.monotonic()

            def sample() -> None:
                samples.append(rss_bytes(pid))
                if len(samples) % 5 == 0:
                    rate = feed.answered / (time.monotonic() - started)
                    print(f"  {feed.answered:>9,} answered  {rate:>7,.0f} req/s"
                          f"  RSS {_mib(samples[-1])}", flush=True)  # fmt: skip

            feed = Feed(head, interleave(invalid, tokens, lambda n: invalid_token(prefix, n)),
                        every, sample)  # fmt: skip
            reconnects = asyncio.run(drive(server.port, feed))
            elapsed = time.monotonic() - started
            time.sleep(1)
            final, high = rss_bytes(pid), rss_bytes(pid, "VmHWM")
        result = verdict(warm, samples, final)
        statuses = ", ".join(f"{code} ×{n:,}" for code, n in sorted(feed.statuses.items()))
        print(
            f"\n--memory: permgate serve --workers 1; {invalid:,} distinct invalid + {valid:,}"
            f" distinct valid tokens, interleaved, {feed.answered:,} answers in {elapsed:.0f} s"
            f" ({feed.answered / elapsed:,.0f} req/s, {reconnects} reconnects)\n"
            f"answers: {statuses}\n"
            f"RSS warm   {_mib(result.warm)}\n"
            f"RSS peak   {_mib(result.peak)}  (of {len(samples)} samples, one every"
            f" {every:,} requests; VmHWM {_mib(high)})\n"
            f"RSS final  {_mib(result.final)}\n"
            f"within {GROWTH_LIMIT_MIB:.0f} MiB of warm: {'yes' if result.bounded else 'NO'}"
            f" (+{_mib(result.peak - result.warm)})\n"
            f"flat after the caches filled: {'yes' if result.flat else 'NO'} (the last"
            f" {FLAT_TAIL:.0%} of the samples span {_mib(result.tail_spread)};"
            f" flat: < {FLAT_MIB:.0f} MiB)"
        )
        if scale < 1:
            print(
                f"(--memory-scale {scale:g}: the caches, {CacheSettings().max_entries:,} entries"
                " each by default, may not fill; the verdict means most at scale 1)"
            )
        expected = {status: n for status, n in ((200, valid), (401, invalid)) if n}
        if dict(feed.statuses) != expected:
            print(f"warning: expected {expected} answers, got {dict(feed.statuses)}")
    return 0


# --------------------------------------------------------------------------- the breakdown


async def _breakdown(folder: Path, count: int) -> list[tuple[str, float]]:
    """Bytes per valid token held by each structure of the request path, in process:
    ``count`` distinct tokens through the evaluation (the decision cache as memo) and
    usage recording, then each structure emptied in turn under tracemalloc."""
    import gc
    import tracemalloc

    from multidict import CIMultiDict

    from permgate.gateway.authn import Authenticator
    from permgate.gateway.decision_cache import DecisionCache
    from permgate.gateway.evaluate import EvalRequest, Evaluator, record_evaluation
    from permgate.gateway.modelcache import ModelCache
    from permgate.maps.loader import load_map
    from permgate.observability.outcome import RequestOutcome
    from permgate.observability.usage import UsageRecorder
    from permgate.store import open_store

    dsn = f"sqlite://{folder}/permgate.db"
    await load._seed(dsn)
    tokens = await seed_tokens(dsn, count)
    store = await open_store(dsn)
    try:
        endpoint_map = load_map(load.MAP)
        limit = max(count * 2, CacheSettings().max_entries)  # nothing evicted: all counted
        model = ModelCache(store, max_entries=limit)
        authn = Authenticator(model, token_prefix="pgt_", jwt=None, known_max=limit)
        memo = DecisionCache(model, ttl_seconds=3600.0, max_entries=limit)
        evaluator = Evaluator(endpoint_map, model, authn)
        usage = UsageRecorder(model, lambda: endpoint_map, max_keys=limit)
        tracemalloc.start()
        for token in tokens:
            headers = CIMultiDict({"Host": "bench", "Authorization": f"Bearer {token}"})
            evaluation = await evaluator.evaluate(EvalRequest("GET", load.TARGET, headers), memo)
            if evaluation.status != 200:
                raise SystemExit(f"FAILED: a seeded token was answered {evaluation.status}")
            outcome = RequestOutcome("r", "d", "GET", load.TARGET, "127.0.0.1", time.time())
            record_evaluation(outcome, evaluation)
            usage.record(outcome)
        del evaluation, outcome, headers
        found: list[tuple[str, float]] = []
        # Later structures refer to the records the model cache holds: empty it last.
        for name, empty in (
            ("usage: pending keys", lambda: usage._pending.clear()),
            ("decision cache", memo.new_map),
            ("authn: remembered credentials", authn._known.clear),
            ("authn: token uses to flush", authn.drain_token_uses),
            ("model cache: token entries", model.reset),
        ):
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            empty()
            gc.collect()
            found.append((name, (before - tracemalloc.get_traced_memory()[0]) / count))
        tracemalloc.stop()
        return found
    finally:
        await store.close()


def run_breakdown(count: int) -> int:
    """``python bench/memory.py --breakdown [N]``: prints bytes per token per structure."""
    with tempfile.TemporaryDirectory(prefix="permgate-bench-breakdown-") as tmp:
        found = asyncio.run(_breakdown(Path(tmp), count))
    print(f"bytes held per valid token used once ({count:,} tokens, tracemalloc):")
    for name, size in found:
        print(f"  {name:32s} {size:7.0f}")
    print(f"  {'all of them':32s} {sum(size for _, size in found):7.0f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--breakdown":
        sys.exit(run_breakdown(int(sys.argv[2]) if len(sys.argv) > 2 else 20_000))
    sys.exit("usage: python bench/memory.py --breakdown [N]  (the RSS run: bench/load.py --memory)")
