"""Capacity benchmark (issue 13): what one server process costs as the fleet grows.

    flock /tmp/bench.lock .venv/bin/python bench/capacity.py [--sizes 10,100,500,1000]
        [--idle 120] [--pages 400] [--in-flight 4] [--poll-chats 5000] [--poll-pace 0.005]
        [--server-root PATH]

For each number of accounts, in one run, a real `start.py serve` process on that many
session files, every one an account of one DC emulator process (the demo world plus the
extra accounts), is measured:

- the time from its spawn until /api/v1/accounts lists every account `ok` (all usable);
- its RSS and open descriptors once all are usable;
- its idle CPU over --idle seconds (Telethon pings each connection every minute: keep
  --idle >= 60 for a figure with the pings in; shorter only for a quick run);
- a history page (GET /api/v1/messages?peer=@tgc_news&limit=100) --pages times with
  --in-flight in flight: p50 and p99 of the answer time, and the server's CPU per page
  (its /proc CPU time over the pages, divided by their number).

Targets (issue 13): 1,000 accounts usable within 15 s, under 400 MB RSS, idle CPU under 5%
of a core, CPU per page and page p50 at the largest size within 1.3x of those at the
smallest.

Then a gap poll round over --poll-chats subscribed chats on 1 and on 10 accounts: the real
`GapPoller` and `JoinMap` (service/subscription/), each account's chats paced --poll-pace s
apart (the product's is 0.2 s: the figures scale with it), the Telegram call answered at
once by a stand-in (this measures the pacing and the poller's own cost, not Telegram's).
Target: the round on 10 accounts takes about a tenth of the time on 1.

`--server-root PATH` runs another checkout's start.py (e.g. a worktree of an older commit,
for a before/after on the same machine in the same conditions).

The machine may be shared: the figures say how busy it was (load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.const import load_settings  # noqa: E402
from service.apiclient import ApiClient  # noqa: E402
from tests.fixtures.server_config import AES_KEY, SUBPROCESS_ENV, TOKEN, write_config  # noqa: E402

FIRST_ACCOUNT = 3_000_000  # the extra accounts' user ids (the demo's are 1001..1004)
PAGE_URI = "/api/v1/messages?peer=%40tgc_news&limit=100"
TARGET_START = 15.0
TARGET_RSS_MB = 400.0
TARGET_IDLE_CPU = 0.05
TARGET_RATIO = 1.3
TARGET_POLL_RATIO = 0.1


# --- the emulator -------------------------------------------------------------------------


def world_file(folder: Path, accounts: int) -> Path:
    """The demo world with `accounts` more accounts (users with a phone)."""
    from tests.fakedc.demo_world import demo_dict

    world = demo_dict()
    world["users"] += [
        {"id": FIRST_ACCOUNT + i, "first_name": f"Bench{i:04d}", "phone": f"1777{i:07d}"}
        for i in range(accounts)
    ]
    path = folder / "world.json"
    path.write_text(json.dumps(world))
    return path


def start_emulator(folder: Path, accounts: int) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = folder / "emulator.json"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tests.fakedc", "serve", "--port", "0",
            "--world", str(world_file(folder, accounts)), "--keys", str(folder / "keys.jsonl"),
            "--ready-file", str(ready), "--log-level", "WARNING",
        ],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the emulator did not start")
        time.sleep(0.05)
    info: dict[str, Any] = json.loads(ready.read_text())
    return proc, info


def make_sessions(folder: Path, port: int, accounts: int, opened: bool) -> list[Path]:
    """One session file per extra account, registered with the emulator's keys file, and
    if `opened`, opened once by this checkout's session class (as a server that ran before
    left it: in WAL mode, converted once, ~3 ms each; a restart is what is measured, not
    an upgrade). Not for another --server-root: its own class is what it would find."""
    from model.session import EntitySession
    from tests.fakedc.session import make_session

    keys = folder / "keys.jsonl"
    paths = [
        make_session(folder / "all" / f"bench{i:04d}", 1, "127.0.0.1", port, FIRST_ACCOUNT + i,
                     keys_file=keys)
        for i in range(accounts)
    ]  # fmt: skip
    for path in paths if opened else ():
        EntitySession(str(path)).close()
    return paths


# --- one server process -------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def until_all_usable(api: ApiClient, proc: subprocess.Popen[bytes], n: int) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        answer = await api.request("GET", "/api/v1/accounts")
        if answer.ok:
            states = [a["state"] for a in answer.data["accounts"]]
            if len(states) == n and all(s == "ok" for s in states):
                return
        await asyncio.sleep(0.2)


async def pages(api: ApiClient, count: int, in_flight: int) -> list[float]:
    """Answer times of `count` history pages, `in_flight` at a time."""
    times: list[float] = []
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            answer = await api.request("GET", PAGE_URI)
            times.append(time.perf_counter() - t0)
            if not answer.ok or len(answer.data["messages"]) != 100:
                raise RuntimeError(f"a page failed: {answer.status} {answer.code}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spawn_server(config: Path, root: str, profile: Path | None) -> subprocess.Popen[bytes]:
    """`start.py serve` of the checkout at `root` on `config`, its stderr beside it; under
    cProfile (its whole life, the start included) into `profile` if given."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    serve = ["start.py", "serve", "--no-console", "--config", str(config)]
    with (config.parent / "stderr.txt").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, *profiler, *serve],
            cwd=Path(root).resolve(),
            env=SUBPROCESS_ENV,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


async def measure(
    folder: Path, sessions: list[Path], n: int, args: argparse.Namespace
) -> dict[str, float]:
    """One server process on the first `n` sessions: every figure of its row."""
    run = folder / f"n{n}"
    (run / "sessions").mkdir(parents=True)
    for path in sessions[:n]:
        shutil.copy(path, run / "sessions" / path.name)
    config = write_config(run, {"telegram.timeout": "30", "log.level": "WARNING"})
    t0 = time.monotonic()
    profile = Path(args.profile).with_suffix(f".{n}.prof") if args.profile else None
    proc = spawn_server(config, args.server_root, profile)
    try:
        url_file = load_settings(config, env={}).run_dir / "tgc.url"
        while not url_file.exists():
            if proc.poll() is not None:
                raise RuntimeError((run / "stderr.txt").read_text())
            await asyncio.sleep(0.05)
        url = url_file.read_text().strip()
        async with ApiClient(url, TOKEN, AES_KEY, max_clients=args.in_flight) as api:
            await until_all_usable(api, proc, n)
            usable = time.monotonic() - t0
            row = {
                "usable_s": usable,
                "start_cpu_s": proc_cpu(proc.pid),  # the server's CPU until all were usable
                "rss_mb": rss_mb(proc.pid),
                "fds": descriptors(proc.pid),
            }
            cpu0, w0 = proc_cpu(proc.pid), time.monotonic()
            await asyncio.sleep(args.idle)  # the measurement window itself
            row["idle_cpu"] = (proc_cpu(proc.pid) - cpu0) / (time.monotonic() - w0)
            await pages(api, 8, 1)  # warm: the resolution of @tgc_news, caches
            cpu0 = proc_cpu(proc.pid)
            times = await pages(api, args.pages, args.in_flight)
            row["cpu_ms_per_page"] = (proc_cpu(proc.pid) - cpu0) / args.pages * 1000
            row["p50_ms"] = statistics.median(times) * 1000
            row["p99_ms"] = percentile(times, 0.99) * 1000
            row["rss_after_mb"] = rss_mb(proc.pid)
        return row
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the gap poll round -------------------------------------------------------------------


class _Account:
    def __init__(self, name: str) -> None:
        self.name = name
        self.usable = True

    def ready_in(self, peer: Any) -> float | None:
        return None  # no channels.getFullChannel follow-ups: the round's polls only

    async def get_history(self, ref: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
        return None, []


class _StandInPool:
    """The pool as the poller uses it; Telegram's answer is an empty history, at once."""

    def __init__(self, names: list[str]) -> None:
        self.accounts = {n: _Account(n) for n in names}
        self.calls = 0

    def get(self, name: str) -> _Account:
        return self.accounts[name]

    async def run(self, op: Any, peer: Any, *, prefer: str | None = None) -> Any:
        account = self.accounts[prefer] if prefer else next(iter(self.accounts.values()))
        self.calls += 1
        return await op(account), account


async def poll_round(folder: Path, accounts: int, chats: int, pace: float) -> tuple[float, int]:
    """Seconds a round over `chats` chats spread over `accounts` accounts takes, and polls."""
    from model.joinmap import JoinMap
    from service.subscription.gappoll import GapPoller
    from service.subscription.state import Shared

    names = [f"acc{i}" for i in range(accounts)]
    joinmap = JoinMap(folder / f"poll{accounts}.sqlite3")
    for n in range(chats):
        peer_id = -(10**12) - 100_000 - n
        # A watermark: the poll reads after it (without one it starts at the newest).
        joinmap.record_join(peer_id, names[n % accounts], type="channel", title=f"c{n}")
        joinmap.set_last_message_id(peer_id, 10, persist=False)
    joinmap.flush()
    pool = _StandInPool(names)
    intake: Any = None  # empty histories: nothing to publish
    shared = Shared(
        pool,  # type: ignore[arg-type]
        joinmap,
        None,  # type: ignore[arg-type]
        media_queue=None,
        clock=time.monotonic,
        recent_size=1000,
    )
    poller = GapPoller(shared, intake, pace=pace)
    t0 = time.monotonic()
    await poller.poll_round(joinmap.joined_peers(), pace=pace)
    elapsed = time.monotonic() - t0
    joinmap.close()
    return elapsed, pool.calls


# --- the report ---------------------------------------------------------------------------


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(rows: dict[int, dict[str, float]]) -> None:
    print(f"\n{'accounts':>8} {'usable s':>9} {'start CPU s':>12} {'RSS MB':>7} {'fds':>6} {'idle CPU':>9} "
          f"{'CPU ms/page':>12} {'p50 ms':>7} {'p99 ms':>7} {'RSS after':>10}")  # fmt: skip
    for n, r in rows.items():
        print(
            f"{n:>8} {r['usable_s']:>9.1f} {r['start_cpu_s']:>12.1f} {r['rss_mb']:>7.0f} "
            f"{r['fds']:>6.0f} "
            f"{r['idle_cpu'] * 100:>8.1f}% {r['cpu_ms_per_page']:>12.2f} {r['p50_ms']:>7.1f} "
            f"{r['p99_ms']:>7.1f} {r['rss_after_mb']:>10.0f}"
        )
    small, big = rows[min(rows)], rows[max(rows)]
    cpu_ratio = big["cpu_ms_per_page"] / small["cpu_ms_per_page"]
    p50_ratio = big["p50_ms"] / small["p50_ms"]
    n = max(rows)
    print(f"\ntargets at {n} accounts (vs {min(rows)}):")
    print(f"  usable within {TARGET_START:.0f} s: {big['usable_s']:.1f} s "
          f"{verdict(big['usable_s'] <= TARGET_START)}")  # fmt: skip
    print(f"  RSS under {TARGET_RSS_MB:.0f} MB: {big['rss_mb']:.0f} MB "
          f"{verdict(big['rss_mb'] < TARGET_RSS_MB)}")  # fmt: skip
    print(f"  idle CPU under {TARGET_IDLE_CPU:.0%} of a core: {big['idle_cpu']:.1%} "
          f"{verdict(big['idle_cpu'] < TARGET_IDLE_CPU)}")  # fmt: skip
    print(f"  CPU per page within {TARGET_RATIO}x: {cpu_ratio:.2f}x "
          f"{verdict(cpu_ratio <= TARGET_RATIO)}")  # fmt: skip
    print(f"  page p50 within {TARGET_RATIO}x: {p50_ratio:.2f}x "
          f"{verdict(p50_ratio <= TARGET_RATIO)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,500,1000", help="numbers of accounts")
    parser.add_argument("--idle", type=float, default=120.0, help="idle window, seconds")
    parser.add_argument("--pages", type=int, default=400, help="history pages per size")
    parser.add_argument("--in-flight", type=int, default=4, help="pages in flight")
    parser.add_argument("--poll-chats", type=int, default=5000, help="chats in the poll round")
    parser.add_argument("--poll-pace", type=float, default=0.005, help="seconds between polls")
    parser.add_argument("--server-root", default=str(ROOT), help="checkout whose start.py runs")
    parser.add_argument("--skip-servers", action="store_true", help="the poll round only")
    parser.add_argument("--profile", help="cProfile each server into PATH.<accounts>.prof")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.own_server = Path(args.server_root).resolve() == ROOT
    print(f"load average at start: {load()} (2 CPUs, shared machine)")
    folder = Path(tempfile.mkdtemp(prefix="tgc-capacity-"))
    try:
        if not args.skip_servers:
            rows = asyncio.run(servers(folder, sizes, args))
            report(rows)
        one, polls1 = asyncio.run(poll_round(folder, 1, args.poll_chats, args.poll_pace))
        ten, polls10 = asyncio.run(poll_round(folder, 10, args.poll_chats, args.poll_pace))
        scale = 0.2 / args.poll_pace
        print(f"\ngap poll round over {args.poll_chats} chats, pace {args.poll_pace} s per "
              f"account (stand-in Telegram; this checkout's poller, whatever --server-root):")  # fmt: skip
        print(f"  1 account:   {one:7.2f} s ({polls1} polls); at 0.2 s: ~{one * scale:.0f} s")
        print(f"  10 accounts: {ten:7.2f} s ({polls10} polls); at 0.2 s: ~{ten * scale:.0f} s")
        ratio = ten / one
        print(f"  10 vs 1: {ratio:.3f} (target ~{TARGET_POLL_RATIO}) "
              f"{verdict(ratio <= TARGET_POLL_RATIO * 1.3)}")  # fmt: skip
        print(f"load average at end: {load()}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def servers(
    folder: Path, sizes: list[int], args: argparse.Namespace
) -> dict[int, dict[str, float]]:
    emulator, info = start_emulator(folder, max(sizes))
    try:
        sessions = make_sessions(folder, info["dcs"]["1"], max(sizes), args.own_server)
        rows: dict[int, dict[str, float]] = {}
        for n in sizes:
            rows[n] = await measure(folder, sessions, n, args)
            print(f"{n} accounts: {json.dumps({k: round(v, 3) for k, v in rows[n].items()})} "
                  f"(load {load()})", flush=True)  # fmt: skip
        return rows
    finally:
        emulator.send_signal(signal.SIGTERM)
        try:
            emulator.wait(30)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait()


if __name__ == "__main__":
    main()
