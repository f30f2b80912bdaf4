"""Nonce store benchmark: a full window at the peak rate, the SQLite store against the old dict.

    .venv/bin/python bench/nonces.py [--rate 3000] [--window 300] [--steady 60]

Each side runs in a child process of its own (so that its RSS is its own), on a simulated
clock that advances 1/rate s per signed request:

- dict: what service/cryptor.py's Signer kept until issue 11: `{nonce string: until}` and a
  heap of `(until, nonce)`, the nonces as crawlers send them (token_urlsafe(24), 32 chars);
- sqlite: `SqliteNonceStore` (service/noncestore.py) in a temporary data.dir, through the
  real `Signer.verify` (the HMAC included) and, apart, `add` alone; its upkeep (expiry in
  batches, then a checkpoint on a thread) runs as a task on the loop once per simulated
  second, interleaved with the requests as on the server.

Both fill the window (rate × window live nonces: 900,000 at the defaults), then run
--steady more simulated seconds in which as many expire as arrive. Printed per side: µs per
check (mean, p50, p99, p99.9, max), RSS growth over the process's baseline, and for SQLite
the file and WAL sizes, the time of one upkeep round and the largest WAL seen.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import heapq
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOKEN = "bench-token-0123456789"
T0 = 1_800_000_000.0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def samples(n: int) -> array.array[int]:
    """Room for n timings (ns), allocated before the RSS baseline is read: a list of ints
    would grow the RSS being measured by ~36 bytes a sample."""
    return array.array("q", bytes(8 * n))


def percentiles(samples_ns: array.array[int] | list[int]) -> dict[str, float]:
    s = sorted(samples_ns)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] / 1000

    return {
        "mean": statistics.fmean(s) / 1000,
        "p50": at(0.50),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": s[-1] / 1000,
    }


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def run_dict(rate: int, window: int, steady: int) -> dict[str, Any]:
    """The pre-issue-11 structure, as it was in Signer._remember / _expire."""
    nonces = [secrets.token_urlsafe(24) for _ in range(rate * (window + steady))]
    fill, steady_ns = samples(rate * window), samples(rate * steady)
    base = rss_mib()
    seen: dict[str, float] = {}
    expiry: list[tuple[float, str]] = []
    now = T0
    for i, nonce in enumerate(nonces):
        now = T0 + i / rate
        t = time.perf_counter_ns()
        while expiry and expiry[0][0] < now:
            _, old = heapq.heappop(expiry)
            del seen[old]
        if nonce in seen:
            raise AssertionError("a fresh nonce taken for a replay")
        until = now + window
        seen[nonce] = until
        heapq.heappush(expiry, (until, nonce))
        elapsed = time.perf_counter_ns() - t
        if i < rate * window:
            fill[i] = elapsed
        else:
            steady_ns[i - rate * window] = elapsed
        if i == rate * window - 1:
            full_rss = rss_mib() - base
    return {
        "live": len(seen),
        "fill": percentiles(fill),
        "steady": percentiles(steady_ns),
        "rss_mib_full": full_rss,
    }


async def run_sqlite(
    folder: Path, rate: int, window: int, steady: int, page_size: int | None
) -> dict[str, Any]:
    from service import noncestore
    from service.cryptor import Signer, nonce_key

    if page_size:
        noncestore.PAGE_SIZE = page_size
    path = folder / "nonces.sqlite3"
    clock = Clock()
    store = noncestore.SqliteNonceStore(
        path, max_live=noncestore.cap_for_window(window), clock=clock
    )
    signer = Signer(TOKEN, window, clock, nonces=store)
    client = Signer(TOKEN, window, clock)
    wal = path.with_name(path.name + "-wal")
    fill_ns, verify_ns = samples(rate * window), samples(rate * steady)
    upkeep_s: list[float] = []
    purge_s: list[float] = []
    wal_max = 0
    upkeep: asyncio.Task[None] | None = None
    purge = store.purge

    def timed_purge(now: float, limit: int) -> int:  # the part of the upkeep on the loop
        t = time.perf_counter()
        try:
            return purge(now, limit)
        finally:
            purge_s[-1] += time.perf_counter() - t

    store.purge = timed_purge  # type: ignore[method-assign]

    async def timed_upkeep() -> None:
        purge_s.append(0.0)
        t = time.perf_counter()
        await store.upkeep()
        upkeep_s.append(time.perf_counter() - t)

    base = rss_mib()

    total = rate * (window + steady)
    t_run = time.perf_counter()
    for i in range(total):
        clock.now = T0 + i / rate
        if i % rate == 0:  # a simulated second: the upkeep's round, as a task beside requests
            if upkeep is not None:
                await upkeep
            upkeep = asyncio.create_task(timed_upkeep())
            wal_max = max(wal_max, wal.stat().st_size if wal.exists() else 0)
        if i % 50 == 0:
            await asyncio.sleep(0)  # other requests' turn: the upkeep task runs here
        if i < rate * window:
            key = nonce_key(secrets.token_urlsafe(24))
            t = time.perf_counter_ns()
            ok = store.add(key, int(clock.now) + window, clock.now)
            fill_ns[i] = time.perf_counter_ns() - t
        else:
            headers = client.sign("GET", "/api/v1/accounts")
            t = time.perf_counter_ns()
            signer.verify("GET", "/api/v1/accounts", headers, b"")
            verify_ns[i - rate * window] = time.perf_counter_ns() - t
            ok = True
        if not ok:
            raise AssertionError("a fresh nonce taken for a replay")
        if i == rate * window - 1:
            full_rss = rss_mib() - base
            full_disk = path.stat().st_size, wal.stat().st_size
    if upkeep is not None:
        await upkeep
    wall = time.perf_counter() - t_run
    # The same checks with the in-memory store: what the HMAC and the rest cost alone.
    memory = Signer(TOKEN, window, clock)
    memory_ns = []
    for _ in range(20_000):
        headers = client.sign("GET", "/api/v1/accounts")
        t = time.perf_counter_ns()
        memory.verify("GET", "/api/v1/accounts", headers, b"")
        memory_ns.append(time.perf_counter_ns() - t)
    live = store.live(clock.now)
    await store.stop()
    result = {
        "live": live,
        "page_size": noncestore.PAGE_SIZE,
        "fill_add": percentiles(fill_ns),
        "steady_verify": percentiles(verify_ns),
        "memory_verify": percentiles(memory_ns),
        "rss_mib_full": full_rss,
        "db_mib_full": full_disk[0] / 2**20,
        "wal_mib_full": full_disk[1] / 2**20,
        "db_mib_end": path.stat().st_size / 2**20,
        "wal_mib_max": wal_max / 2**20,
        # µs in ns slots: printed as ms. The steady rounds: ~rate rows expire in each.
        "upkeep_ms": percentiles([int(s * 1e6) for s in upkeep_s[window:] or upkeep_s]),
        "purge_ms": percentiles([int(s * 1e6) for s in purge_s[window:] or purge_s]),
        "wall_s": wall,
    }
    return result


def child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--rate", str(args.rate)]
    cmd += ["--window", str(args.window), "--steady", str(args.steady)]
    if args.page_size:
        cmd += ["--page-size", str(args.page_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def fmt(p: dict[str, float], unit: str = "µs") -> str:
    return (
        f"mean {p['mean']:.1f} p50 {p['p50']:.1f} p99 {p['p99']:.1f} "
        f"p99.9 {p['p999']:.1f} max {p['max']:.0f} {unit}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=3000, help="signed requests per second")
    parser.add_argument("--window", type=int, default=300, help="api.signature_window")
    parser.add_argument("--steady", type=int, default=60, help="seconds after the window filled")
    parser.add_argument("--page-size", type=int, help="(experiment) the store's page size")
    parser.add_argument("--child", choices=["dict", "sqlite"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "dict":
        print(json.dumps(run_dict(args.rate, args.window, args.steady)))
        return
    if args.child == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="tgc-nonces-"))
        try:
            result = asyncio.run(
                run_sqlite(folder, args.rate, args.window, args.steady, args.page_size)
            )
        finally:
            shutil.rmtree(folder)
        print(json.dumps(result))
        return

    live = args.rate * args.window
    print(f"{live:,} live nonces ({args.rate}/s over {args.window} s), then {args.steady} s steady")
    old = child("dict", args)
    print("old dict (strings + heap), pre-issue-11 Signer:")
    print(f"  insert+expire   fill:   {fmt(old['fill'])}")
    print(f"  insert+expire   steady: {fmt(old['steady'])}")
    print(f"  RSS growth at {old['live']:,} live: {old['rss_mib_full']:.1f} MiB")
    new = child("sqlite", args)
    print(f"SqliteNonceStore (page {new['page_size']} B), {new['live']:,} live at the end:")
    print(f"  add             fill:   {fmt(new['fill_add'])}")
    print(f"  Signer.verify   steady: {fmt(new['steady_verify'])}")
    print(f"  Signer.verify, memory store (HMAC etc. alone): {fmt(new['memory_verify'])}")
    print(f"  upkeep round, expiring ~{args.rate} rows:")
    print(f"    on the loop (purge batches): {fmt(new['purge_ms'], 'ms')}")
    print(f"    with the checkpoint thread:  {fmt(new['upkeep_ms'], 'ms')}")
    print(f"  RSS growth at {live:,} live: {new['rss_mib_full']:.1f} MiB")
    print(
        f"  disk at {live:,} live: db {new['db_mib_full']:.1f} MiB + WAL "
        f"{new['wal_mib_full']:.1f} MiB; db at the end {new['db_mib_end']:.1f} MiB; "
        f"largest WAL seen {new['wal_mib_max']:.1f} MiB"
    )
    checks = args.rate * (args.window + args.steady)
    print(f"  wall time {new['wall_s']:.1f} s for {checks:,} checks")


if __name__ == "__main__":
    main()
