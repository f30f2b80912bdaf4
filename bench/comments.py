"""Comments benchmark (issue 12): a page of a post's comments through the server, beside
bare Telethon asking the same page, in one run.

    flock /tmp/bench.lock .venv/bin/python bench/comments.py [--comments 300] [--limit 100]
                                                             [--duration 3] [--rounds 5]
                                                             [--nice -10]

The emulator (its own process) runs the demo world plus one post of @open_talk with
`--comments` comments in the discussion group. The server is `start.py serve` as deployed
(through tests/fakedc/launch.py, its own process, two accounts, media.auto_download=false),
asked `GET /api/v1/replies?peer=@open_talk&msg_id=POST&limit=LIMIT` by wrk over one
connection, one request at a time (what a crawler paging a thread waits), each request
signed beforehand with its own nonce (bench/http_api.py's driver; an answer is checked by
the reference client first). The baseline is bare Telethon in a process of its own, on an
account of its own: `[m async for m in client.iter_messages(entity, reply_to=POST,
limit=LIMIT)]`, one page at a time. Rounds alternate the two (`--duration` seconds each),
so both see the same load; the figures are medians over the rounds.

Target: the server's time per page at most 1.5x bare Telethon's. Also shown: CPU per page of
the server process and of the emulator, the machine's load average (the figures drift with
it: this machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

import http_api as driver  # noqa: E402  (bench/: its wrk driver, pre-signed requests)

API_ID, API_HASH = 12345, "0123456789abcdef" * 2
ACCOUNTS = (1001, 1002)  # the server's pool (demo world accounts)
BARE_ACCOUNT = 1003  # bare Telethon's own account: no lock on the pool's sessions
PEER = "@open_talk"
TARGET = 1.5
cpu_seconds = driver.cpu_seconds
write_json = driver.write_json


# --- the children ------------------------------------------------------------------------


def the_world(comments: int) -> tuple[Any, int]:
    """The demo world and one more post of @open_talk with `comments` comments."""
    from tests.fakedc import demo_world as dw
    from tests.fakedc.world import DEFAULT_DATE

    world = dw.demo_world()
    post = world.add_post(dw.TALK, "a busy post", date=DEFAULT_DATE + 86_400)
    for n in range(1, comments + 1):
        user = dw.CROWD_FIRST + n % dw.CROWD_SIZE
        text = f"comment {n}: " + "words " * (n % 20)
        world.add_comment(dw.TALK, post.id, text, user, date=post.date + n)
    return world, post.id


async def run_emulator(workdir: Path, comments: int) -> None:
    from tests.fakedc.cluster import FakeTelegram
    from tests.fakedc.rpc import TelegramRpc

    world, post = the_world(comments)
    tg = FakeTelegram(TelegramRpc(world), dc_ids=(1, 2), keys_file=workdir / "keys.jsonl")
    await tg.start()
    write_json(workdir / "emulator.json", {"host": tg.host, "port": tg.port(1), "post": post})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await tg.stop()


async def run_telethon(workdir: Path, post: int) -> None:
    """Bare Telethon on command: each stdin line "DURATION LIMIT" answers one stdout line
    of JSON (the latency of each page, the CPU this process spent)."""
    from telethon import TelegramClient

    client = TelegramClient(
        str(workdir / "bare-telethon.session"), API_ID, API_HASH, receive_updates=False
    )
    client.flood_sleep_threshold = 0
    await client.connect()
    entity = await client.get_input_entity(PEER)
    for _ in range(5):  # warm-up, as the server gets
        [m async for m in client.iter_messages(entity, reply_to=post, limit=100)]
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        duration, limit = float(line.split()[0]), int(line.split()[1])
        latencies: list[float] = []
        cpu0 = cpu_seconds()
        deadline = time.perf_counter() + duration
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            got = [m async for m in client.iter_messages(entity, reply_to=post, limit=limit)]
            latencies.append(time.perf_counter() - t0)
            assert len(got) == limit, len(got)
        print(json.dumps({"latencies": latencies, "cpu": cpu_seconds() - cpu0}), flush=True)
    await client.disconnect()


# --- the parent --------------------------------------------------------------------------


def wait_file(path: Path, proc: subprocess.Popen[Any], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start")
        time.sleep(0.05)


def spawn(args: list[str], **kw: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **driver.MALLOC_ENV}, **kw)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_sessions(workdir: Path, host: str, port: int) -> None:
    from tests.fakedc.session import make_session

    keys = workdir / "keys.jsonl"
    for user_id in ACCOUNTS:
        make_session(workdir / "sessions" / f"acc{user_id}", 1, host, port, user_id, keys_file=keys)
    make_session(workdir / "bare-telethon", 1, host, port, BARE_ACCOUNT, keys_file=keys)


async def check_and_warm(url: str, uri: str, limit: int) -> None:
    """Real answers first (a benchmark of 401s would be worthless), and a warm-up."""
    from service.apiclient import ApiClient

    async with ApiClient(url, driver.TOKEN, driver.KEY) as api:
        for _ in range(5):
            answer = await api.request("GET", uri)
            assert answer.ok and len(answer.data["messages"]) == limit, answer


def telethon_figures(run: dict[str, Any], emulator_cpu: float) -> dict[str, float]:
    lat = sorted(run["latencies"])
    n = len(lat)
    return {
        "p50": statistics.median(lat),
        "p99": lat[min(n - 1, int(0.99 * n))],
        "pages": n,
        "errors": 0,
        "cpu": run["cpu"] / n,
        "emulator_cpu": emulator_cpu / n,
    }


def server_figures(workdir: Path, url: str, uri: str, seconds: float, pid: int) -> dict[str, float]:
    folder = workdir / "presigned"
    driver.presign(folder, uri, 1, driver.enough(500, seconds))
    run = driver.wrk(url, uri, folder, 1, seconds, pid)
    return {
        "p50": run["p50"],
        "p99": run["p99"],
        "pages": run["requests"],
        "errors": run["errors"] + run["socket_errors"],
        "cpu": run["cpu_per_request"],
    }


def bench(args: argparse.Namespace) -> int:
    from common.const import load_settings
    from tests.fixtures.server_config import write_config

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (a shared machine: figures"
          f" drift with the load; compare the ratio); {args.rounds} alternated rounds of"
          f" {args.duration:.0f} s each, pages of {args.limit} comments, one at a time")  # fmt: skip
    procs: list[subprocess.Popen[Any]] = []
    runs: dict[str, list[dict[str, float]]] = {"telethon": [], "server": []}
    with tempfile.TemporaryDirectory(prefix="tgc-bench-comments-") as tmp:
        workdir = Path(tmp)
        me = [sys.executable, __file__, "--workdir", str(workdir), "--comments", str(args.comments)]
        try:
            emulator = spawn([*me, "--role", "emulator"])
            procs.append(emulator)
            wait_file(workdir / "emulator.json", emulator, "the emulator")
            info = json.loads((workdir / "emulator.json").read_text())
            make_sessions(workdir, info["host"], info["port"])
            config = write_config(
                workdir,
                {"media.auto_download": "false", "log.level": "WARNING",
                 "api.token": driver.TOKEN, "api.aes_key": driver.KEY},
            )  # fmt: skip
            server = spawn(
                [sys.executable, "-m", "tests.fakedc.launch", "serve", "--config", str(config),
                 "--no-console"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(server)
            url_file = load_settings(config, env={}).run_dir / "tgc.url"
            wait_file(url_file, server, "the server")
            url = url_file.read_text().strip()
            uri = f"/api/v1/replies?peer={PEER}&msg_id={info['post']}&limit={args.limit}"
            asyncio.run(check_and_warm(url, uri, args.limit))
            telethon = spawn(
                [*me, "--role", "telethon", "--post", str(info["post"])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            procs.append(telethon)
            assert telethon.stdout is not None and telethon.stdin is not None
            json.loads(telethon.stdout.readline())  # ready
            for n in range(args.rounds):
                emu0 = cpu_seconds(emulator.pid)
                telethon.stdin.write(f"{args.duration} {args.limit}\n")
                telethon.stdin.flush()
                bare = json.loads(telethon.stdout.readline())
                emu1 = cpu_seconds(emulator.pid)
                served = server_figures(workdir, url, uri, args.duration, server.pid)
                emu2 = cpu_seconds(emulator.pid)
                served["emulator_cpu"] = (emu2 - emu1) / max(served["pages"], 1)
                runs["telethon"].append(telethon_figures(bare, emu1 - emu0))
                runs["server"].append(served)
                ratio = runs["server"][-1]["p50"] / runs["telethon"][-1]["p50"]
                print(f"  round {n + 1}/{args.rounds}: ratio {ratio:.2f}", flush=True)
            telethon.stdin.close()
        finally:
            for proc in reversed(procs):
                stop(proc)
    return report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> int:
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    errors = sum(r["errors"] for r in runs["server"])
    ratios = [s["p50"] / t["p50"] for s, t in zip(runs["server"], runs["telethon"], strict=True)]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\na page of {args.limit} comments (of {args.comments}), one at a time:")
    labels = {
        "telethon": "bare Telethon iter_messages(reply_to=...)",
        "server": "GET /api/v1/replies (signed, encrypted)",
    }
    for name, m in med.items():
        print(f"  {labels[name]:<44} p50 {1000 * m['p50']:7.2f} ms  p99 {1000 * m['p99']:7.2f} ms"
              f"  cpu {1000 * m['cpu']:6.2f} ms/page  emulator cpu"
              f" {1000 * m['emulator_cpu']:6.2f} ms/page  ({m['pages']:.0f} pages/round)")  # fmt: skip
    ratio = statistics.median(ratios)
    ok = ratio <= TARGET and not errors
    if errors:
        print(f"  INVALID: {errors:.0f} server answers were not 200")
    print(f"  server / bare Telethon, per page: {ratio:.2f}x (rounds: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}), target <= {TARGET}x: "
          f"{'PASS' if ok else 'FAIL'}")  # fmt: skip
    print(f"  load average at the end: {load}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--comments", type=int, default=300, help="comments under the post")
    parser.add_argument("--limit", type=int, default=100, help="comments per page (1-100)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (medians)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for every process of the run (negative needs root), as in"
        " bench/http_api.py: on a shared machine the others' load otherwise decides",
    )
    parser.add_argument("--role", choices=("emulator", "telethon"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--post", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "emulator":
        asyncio.run(run_emulator(args.workdir, args.comments))
        return 0
    if args.role == "telethon":
        asyncio.run(run_telethon(args.workdir, args.post))
        return 0
    if not 1 <= args.limit <= 100 or args.comments < args.limit:
        parser.error("--limit must be 1-100 and no more than --comments")
    if not Path(driver.WRK).exists():
        sys.exit(f"{driver.WRK} is needed (apt-get install wrk)")
    if args.nice:
        os.nice(args.nice)  # inherited by every child: emulator, server, Telethon, wrk
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
