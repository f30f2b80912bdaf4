"""Nonce store benchmark: a full window at the peak rate, three ways, in one run.

    .venv/bin/python bench/nonces.py [--rate 3000] [--window 300] [--steady 60]

Each store runs in a child process of its own (so that its RSS is its own), on a simulated
clock that advances 1/rate s per signed request:

- dict: what service/cryptor.py's Signer kept until issue 11: `{nonce string: until}` and a
  heap of `(until, nonce)`, the nonces as crawlers send them (token_urlsafe(24)), forgotten
  at a restart;
- sqlite: the first on-disk store of issue 11, kept here only for comparison (`_SqliteStore`
  below): one autocommit INSERT per nonce (PRIMARY KEY = the replay check), WAL with 1 KiB
  pages, expiry in 250-row batches and PASSIVE + RESTART checkpoints on a thread;
- journal: `JournalNonceStore` (service/noncestore.py), what start.py wires: a set and
  per-second buckets in memory, one 16-byte `os.write` per nonce to an O_APPEND file.

The two on-disk ones run in a temporary data.dir: `add` alone while the window fills, then
the real `Signer.verify` (the HMAC included) for --steady more simulated seconds in which as
many expire as arrive; their upkeep (expiry, files, checkpoint or fsync on a thread) runs as
a task on the loop once per simulated second, interleaved with the requests as on the
server. Printed per store: µs per check (mean, p50, p99, p99.9, max), RSS growth over the
process's baseline at rate × window live nonces (900,000 at the defaults) and per nonce,
disk, the time to reopen the full store (a restart), and the upkeep's time on the loop.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import heapq
import json
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

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


def disk_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


# --- the old dict ----------------------------------------------------------------------


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


# --- the SQLite store of issue 11's first take, for comparison only --------------------


class _SqliteStore:
    """One row per nonce: `add` is an autocommit INSERT (written to the WAL, no fsync)."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path, self._clock = path, clock
        self.wal = path.with_name(path.name + "-wal")
        self._conn = self._connect()
        self._conn.executescript(
            "CREATE TABLE IF NOT EXISTS nonces (key INTEGER PRIMARY KEY, until INTEGER NOT NULL);"
            "CREATE INDEX IF NOT EXISTS nonces_until ON nonces (until);"
        )
        self.rows = self._conn.execute("SELECT COUNT(*) FROM nonces").fetchone()[0]

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        for pragma in (
            "page_size=1024",
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "wal_autocheckpoint=0",
            "busy_timeout=1000",
            "cache_size=-4096",
            f"journal_size_limit={16 * 2**20}",
        ):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    def add(self, key: int, until: int, now: float) -> bool:
        try:
            self._conn.execute("INSERT INTO nonces (key, until) VALUES (?, ?)", (key, until))
        except sqlite3.IntegrityError:
            cur = self._conn.execute(
                "UPDATE nonces SET until = ? WHERE key = ? AND until < ?", (until, key, now)
            )
            return cur.rowcount == 1
        self.rows += 1
        return True

    def live(self, now: float) -> int:
        row = self._conn.execute("SELECT COUNT(*) FROM nonces WHERE until >= ?", (now,))
        return int(row.fetchone()[0])

    def purge(self, now: float, limit: int) -> int:
        removed: int = self._conn.execute(
            "DELETE FROM nonces WHERE key IN"
            " (SELECT key FROM nonces WHERE until < ? ORDER BY until LIMIT ?)",
            (now, limit),
        ).rowcount
        self.rows -= removed
        return removed

    async def upkeep(self) -> None:
        while True:
            if self.purge(self._clock(), 250) < 250:
                break
            await asyncio.sleep(0)
        await asyncio.to_thread(self._checkpoint)

    def _checkpoint(self) -> None:
        for mode in ("PASSIVE", "RESTART"):
            conn = sqlite3.connect(str(self.path), isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=5000")
                conn.execute(f"PRAGMA wal_checkpoint({mode})")
            finally:
                conn.close()
            if mode == "PASSIVE" and self.wal.stat().st_size <= 16 * 2**20:
                break

    def close(self) -> None:
        self._conn.close()


# --- the on-disk stores, through the same steps ----------------------------------------


class Store(Protocol):
    def add(self, key: int, until: int, now: float) -> bool: ...
    def live(self, now: float) -> int: ...
    async def upkeep(self) -> None: ...
    def close(self) -> None: ...


def open_store(kind: str, folder: Path, clock: Clock, window: int) -> Store:
    if kind == "sqlite":
        return _SqliteStore(folder / "nonces.sqlite3", clock)
    from service.noncestore import JournalNonceStore

    return JournalNonceStore(folder / "nonces", window=window, clock=clock)


async def run_store(kind: str, folder: Path, rate: int, window: int, steady: int) -> dict[str, Any]:
    from service.cryptor import Signer, nonce_key

    clock = Clock()
    store = open_store(kind, folder, clock, window)
    signer = Signer(TOKEN, window, clock, nonces=store)
    client = Signer(TOKEN, window, clock)
    fill_ns, verify_ns = samples(rate * window), samples(rate * steady)
    upkeep_s: list[float] = []  # each round's time on the loop: its steps between awaits
    upkeep: asyncio.Task[None] | None = None
    for name in ("purge", "drop_expired"):  # what an upkeep round runs on the loop
        if hasattr(store, name):
            setattr(store, name, _timed(getattr(store, name), upkeep_s))

    async def round_() -> None:
        upkeep_s.append(0.0)
        await store.upkeep()

    base = rss_mib()
    total = rate * (window + steady)
    t_run = time.perf_counter()
    for i in range(total):
        clock.now = T0 + i / rate
        if i % rate == 0:  # a simulated second: the upkeep's round, as a task beside requests
            if upkeep is not None:
                await upkeep
            upkeep = asyncio.create_task(round_())
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
            full_disk = disk_mib(folder)
    if upkeep is not None:
        await upkeep
    wall = time.perf_counter() - t_run
    live = store.live(clock.now)
    end_disk = disk_mib(folder)
    store.close()
    # A restart: the window is full (as many expired as arrived in the steady part).
    t_open = time.perf_counter()
    again = open_store(kind, folder, clock, window)
    reopen_s = time.perf_counter() - t_open
    reopened = again.live(clock.now)
    again.close()
    # The same checks with the in-memory store: what the HMAC and the rest cost alone.
    memory = Signer(TOKEN, window, clock)
    memory_ns = []
    for _ in range(20_000):
        headers = client.sign("GET", "/api/v1/accounts")
        t = time.perf_counter_ns()
        memory.verify("GET", "/api/v1/accounts", headers, b"")
        memory_ns.append(time.perf_counter_ns() - t)
    return {
        "live": live,
        "fill_add": percentiles(fill_ns),
        "steady_verify": percentiles(verify_ns),
        "memory_verify": percentiles(memory_ns),
        "rss_mib_full": full_rss,
        "disk_mib_full": full_disk,
        "disk_mib_end": end_disk,
        "reopen_s": reopen_s,
        "reopened_live": reopened,
        # seconds in ns slots: printed as ms. The steady rounds: ~rate keys expire in each.
        "upkeep_ms": percentiles([int(s * 1e6) for s in upkeep_s[window:] or upkeep_s]),
        "wall_s": wall,
    }


def _timed(step: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        t = time.perf_counter()
        try:
            return step(*args)
        finally:
            if into:
                into[-1] += time.perf_counter() - t

    return timed


# --- the parent ------------------------------------------------------------------------


def child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--rate", str(args.rate)]
    cmd += ["--window", str(args.window), "--steady", str(args.steady)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def fmt(p: dict[str, float], unit: str = "µs") -> str:
    return (
        f"mean {p['mean']:.1f} p50 {p['p50']:.1f} p99 {p['p99']:.1f} "
        f"p99.9 {p['p999']:.1f} max {p['max']:.0f} {unit}"
    )


def report(title: str, r: dict[str, Any], args: argparse.Namespace) -> None:
    live = args.rate * args.window
    print(f"{title}, {r['live']:,} live at the end:")
    print(f"  add             fill:   {fmt(r['fill_add'])}")
    print(f"  Signer.verify   steady: {fmt(r['steady_verify'])}")
    print(f"  Signer.verify, memory store (HMAC etc. alone): {fmt(r['memory_verify'])}")
    print(f"  upkeep round on the loop, ~{args.rate} expiring: {fmt(r['upkeep_ms'], 'ms')}")
    per = r["rss_mib_full"] * 2**20 / live
    print(f"  RSS growth at {live:,} live: {r['rss_mib_full']:.1f} MiB ({per:.0f} B per nonce)")
    print(
        f"  disk at {live:,} live: {r['disk_mib_full']:.1f} MiB; at the end {r['disk_mib_end']:.1f}"
    )
    print(
        f"  reopen (a restart) with {r['reopened_live']:,} live: {r['reopen_s'] * 1000:.0f} ms;"
        f" wall time {r['wall_s']:.1f} s for {args.rate * (args.window + args.steady):,} checks"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=3000, help="signed requests per second")
    parser.add_argument("--window", type=int, default=300, help="api.signature_window")
    parser.add_argument("--steady", type=int, default=60, help="seconds after the window filled")
    parser.add_argument("--child", choices=["dict", "sqlite", "journal"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "dict":
        print(json.dumps(run_dict(args.rate, args.window, args.steady)))
        return
    if args.child:
        folder = Path(tempfile.mkdtemp(prefix="tgc-nonces-"))
        try:
            result = asyncio.run(run_store(args.child, folder, args.rate, args.window, args.steady))
        finally:
            shutil.rmtree(folder)
        print(json.dumps(result))
        return

    live = args.rate * args.window
    print(f"{live:,} live nonces ({args.rate}/s over {args.window} s), then {args.steady} s steady")
    old = child("dict", args)
    print("old dict (strings + heap), pre-issue-11 Signer, in memory only:")
    print(f"  insert+expire   fill:   {fmt(old['fill'])}")
    print(f"  insert+expire   steady: {fmt(old['steady'])}")
    per = old["rss_mib_full"] * 2**20 / live
    print(
        f"  RSS growth at {old['live']:,} live: {old['rss_mib_full']:.1f} MiB ({per:.0f} B per nonce)"
    )
    report(
        "SQLite store (issue 11's first take, kept here for comparison)",
        child("sqlite", args),
        args,
    )
    report(
        "JournalNonceStore (service/noncestore.py, what start.py wires)",
        child("journal", args),
        args,
    )


if __name__ == "__main__":
    main()
