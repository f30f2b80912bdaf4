"""HTTP API benchmark (issue 3): the service beside its ceilings, in one run.

    .venv/bin/python bench/http_api.py [--duration 5] [--connections 8] [--profile]

(a) GET /api/v1/accounts, signed and encrypted (AES-256-GCM), served from memory (each
    nonce written to the nonce journal first, as start.py wires it), beside a
    bare Tornado handler that answers the same JSON with the same AES-GCM code and nothing
    else (no signature check, no parameter parsing, no metrics): the framework's ceiling.
    Target: the service answers at least 70% of the bare handler's requests/s.
(b) GET /api/v1/messages?peer=@tgc_news&limit=100 through the DC emulator (the demo world's
    150-post channel), beside bare Telethon `get_messages(limit=100)` plus orjson encoding
    of the messages' `to_dict()` on the same emulator. Target: the service's time per page
    at most 1.5x bare Telethon's (one request at a time: what a crawler paging a channel
    waits; also shown with several in flight, and as CPU per page of each process).

Every piece runs in its own process: the emulator, the service (make_app + make_server on
the real TeleClients pool of three accounts and the real media processor), the bare
handler, bare Telethon, and the load generator, wrk (/usr/bin/wrk), which sends requests
signed beforehand by this script, each with its own nonce (a Lua script walks a file of
them; a replayed nonce would be a 401 and is reported). Everything is on 127.0.0.1, every
run is bounded in time (--duration) and in requests (the signed files).

`--profile` runs the service under cProfile and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import re
import secrets
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

API_ID, API_HASH = 12345, "0123456789abcdef0123456789abcdef"
TOKEN = "bench-token-" + "k" * 20
KEY = "42" * 32
ACCOUNTS = (1001, 1002, 1003)  # the service's pool (demo world accounts)
BARE_ACCOUNT = 1004  # bare Telethon's own account: no lock on the pool's sessions
PEER = "@tgc_news"
ACCOUNTS_URI = "/api/v1/accounts"
MESSAGES_URI = "/api/v1/messages?peer=%40tgc_news&limit=100"
WRK = "/usr/bin/wrk"
# Keep freed TL answers in the heap instead of mmap/munmap per answer (MEASURED.md).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
TARGET_A = 0.70
TARGET_B = 1.5

LUA = r"""
-- Each wrk thread walks its own file of pre-signed requests (NUL-separated).
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  local f = assert(io.open(args[1] .. "/" .. id .. ".req", "rb"))
  local data = f:read("*a")
  f:close()
  reqs = {}
  for r in string.gmatch(data, "([^%z]+)") do reqs[#reqs + 1] = r end
  i = 0
end
function request()
  i = i + 1
  if i > #reqs then i = 1 end  -- a replay: the server answers 401 (counted as non-2xx)
  return reqs[i]
end
"""


# --- child processes ---------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # the parent sees it whole or not at all


async def until_sigterm() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


async def run_emulator(workdir: Path) -> None:
    from tests.fakedc.cluster import FakeTelegram
    from tests.fakedc.demo_world import demo_world
    from tests.fakedc.rpc import TelegramRpc

    tg = FakeTelegram(TelegramRpc(demo_world()), dc_ids=(1, 2), keys_file=workdir / "keys.jsonl")
    await tg.start()
    write_json(workdir / "emulator.json", {"host": tg.host, "port": tg.port(1)})
    await until_sigterm()
    await tg.stop()


async def run_service(workdir: Path, profile: bool) -> None:
    """The service's HTTP API as start.py wires it, on the pool of session files."""
    from prometheus_client import CollectorRegistry
    from tornado.netutil import bind_sockets

    from model.joinmap import JoinMap
    from model.pool import TeleClients
    from service.cryptor import Cipher, Signer
    from service.handler import make_app, make_server
    from service.mediaprocessor import MediaProcessor
    from service.noncestore import JournalNonceStore
    from service.storage import LocalStorage

    data = workdir / "data"
    data.mkdir(exist_ok=True)
    pool = TeleClients.from_sessions_dir(
        workdir / "sessions", API_ID, API_HASH, flood_sleep_threshold=0, request_timeout=30
    )
    await pool.start()
    processor = MediaProcessor(
        data / "media.sqlite3", data / "spool", LocalStorage(data / "media"), pool
    )
    await processor.start()
    joinmap = JoinMap(data / "joinmap.sqlite3")
    # start.py's nonce store: each signed request's nonce is journaled first.
    nonces = JournalNonceStore(data / "nonces", window=300)
    await nonces.start()
    app = make_app(
        pool=pool,
        processor=processor,
        joinmap=joinmap,
        subscriptions=None,
        signer=Signer(TOKEN, nonces=nonces),
        cipher=Cipher.create("aes-256-gcm", KEY),
        metrics=CollectorRegistry(),
    )
    sockets = bind_sockets(0, "127.0.0.1")
    http = make_server(app, 1 << 20)
    http.add_sockets(sockets)
    profiler = cProfile.Profile() if profile else None
    write_json(workdir / "service.json", {"port": sockets[0].getsockname()[1]})
    # The parent warms up, then signals USR1 to start profiling the measured part only.
    if profiler is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, profiler.enable)
    await until_sigterm()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(workdir / "service.prof"))
    http.stop()
    await http.close_all_connections()
    await nonces.stop()
    await processor.stop()
    await pool.stop()
    joinmap.close()


async def run_bare_handler(workdir: Path) -> None:
    """The framework's ceiling: the same JSON, the same AES-GCM code, nothing else."""
    import orjson
    import tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from service.cryptor import Cipher

    document = {"ok": True, "data": json.loads((workdir / "accounts.json").read_text())}
    cipher = Cipher.create("aes-256-gcm", KEY)

    class Bare(tornado.web.RequestHandler):
        def get(self) -> None:
            nonce = self.request.headers.get("X-Nonce", "").encode()
            self.set_header("X-Encryption", cipher.name)
            self.set_header("Content-Type", "text/plain; charset=us-ascii")
            self.finish(cipher.encrypt(orjson.dumps(document), nonce))

    app = tornado.web.Application([(ACCOUNTS_URI, Bare)], log_function=lambda _h: None)
    sockets = bind_sockets(0, "127.0.0.1")
    http = HTTPServer(app)
    http.add_sockets(sockets)
    write_json(workdir / "bare.json", {"port": sockets[0].getsockname()[1]})
    await until_sigterm()
    http.stop()


def flat(m: Any) -> dict[str, Any]:
    """The contract's plain message fields straight from Telethon's Message (no parser)."""
    return {
        "id": m.id, "date": m.date, "edit_date": m.edit_date, "text": m.message,
        "from_id": m.sender_id, "post_author": m.post_author, "views": m.views,
        "forwards": m.forwards, "reply_to_msg_id": m.reply_to_msg_id,
        "grouped_id": m.grouped_id, "pinned": m.pinned,
    }  # fmt: skip


async def run_bare_telethon(workdir: Path) -> None:
    """Bare Telethon get_messages(limit=100) + orjson, run on command: each stdin line
    "DURATION CONCURRENCY ENCODE" answers one stdout line of JSON figures. `encode`: "flat"
    (a dict of the plain fields per message: the stricter baseline) or "to_dict"
    (Telethon's own full dict). One process for every run: no start-up in the figures."""
    from telethon import TelegramClient

    client = TelegramClient(
        str(workdir / "bare-telethon.session"), API_ID, API_HASH, receive_updates=False
    )
    client.flood_sleep_threshold = 0
    await client.connect()
    entity = await client.get_input_entity(PEER)
    for _ in range(5):  # warm-up, as the service gets
        await client.get_messages(entity, limit=100)
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        duration, concurrency, encode = line.split()
        result = await telethon_run(client, entity, float(duration), int(concurrency), encode)
        print(json.dumps(result), flush=True)
    await client.disconnect()


async def telethon_run(
    client: Any, entity: Any, duration: float, concurrency: int, encode: str
) -> dict[str, Any]:
    import orjson

    latencies: list[float] = []
    sizes: set[int] = set()

    async def loop(deadline: float) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            messages = await client.get_messages(entity, limit=100)
            if encode == "flat":
                body = orjson.dumps([flat(m) for m in messages])
            else:
                body = orjson.dumps([m.to_dict() for m in messages], default=str)
            latencies.append(time.perf_counter() - t0)
            sizes.add(len(messages))
            del body

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    await asyncio.gather(*(loop(t0 + duration) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    if sizes != {100}:
        raise AssertionError(f"pages of {sizes} messages, not 100")
    return {"latencies": latencies, "wall": wall, "cpu": cpu_seconds() - cpu0}


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one by default), from /proc."""
    stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the parent: processes, load, figures ------------------------------------------------------


class Child:
    """One role of this script in its own process; ready when it wrote `ready_file`."""

    def __init__(self, role: str, workdir: Path, ready_file: str | None, *extra: str) -> None:
        self.workdir = workdir
        args = [sys.executable, __file__, "--role", role, "--workdir", str(workdir), *extra]
        piped = ready_file is None  # then it talks over stdin/stdout, one JSON line each
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **MALLOC_ENV},
            stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else None,
            text=True,
        )
        self.info: dict[str, Any] = {}
        if ready_file is not None:
            self.info = self._wait(workdir / ready_file)
        else:
            self.info = self.read()

    def _wait(self, path: Path, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args[3]} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.proc.args[3]} did not start")
            time.sleep(0.05)
        info: dict[str, Any] = json.loads(path.read_text())
        return info

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.info['port']}"

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[3]} exited with {self.proc.wait()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the piped child ends at end of input
        elif self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def make_sessions(workdir: Path, host: str, port: int) -> None:
    from tests.fakedc.session import make_session

    keys = workdir / "keys.jsonl"
    for user_id in ACCOUNTS:
        make_session(workdir / "sessions" / f"acc{user_id}", 1, host, port, user_id, keys_file=keys)
    make_session(workdir / "bare-telethon", 1, host, port, BARE_ACCOUNT, keys_file=keys)


async def check_and_warm(url: str) -> Any:
    """Decrypts real answers first (a benchmark of 401s would be worthless); returns the
    /accounts data for the bare handler to serve."""
    from service.apiclient import ApiClient

    async with ApiClient(url, TOKEN, KEY) as api:
        accounts = await api.request("GET", ACCOUNTS_URI)
        assert accounts.ok, accounts
        for _ in range(5):
            page = await api.request("GET", MESSAGES_URI.replace("%40", "@"))
            assert page.ok and len(page.data["messages"]) == 100, page
        return accounts.data


def presign(folder: Path, uri: str, files: int, per_file: int) -> None:
    """`files` files of `per_file` raw HTTP requests, each signed with a fresh nonce."""
    from service.cryptor import Signer

    signer = Signer(TOKEN)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for n in range(files):
        requests = []
        for _ in range(per_file):
            h = signer.sign("GET", uri, nonce=secrets.token_urlsafe(18))
            requests.append(
                f"GET {uri} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Timestamp: {h['X-Timestamp']}\r\n"
                f"X-Nonce: {h['X-Nonce']}\r\nX-Signature: {h['X-Signature']}\r\n\r\n"
            )
        (folder / f"{n}.req").write_bytes("\0".join(requests).encode())


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text}")
    return float(m[1]) * _UNITS[m[2]]


def wrk(
    url: str, uri: str, requests: Path, connections: int, duration: float, cpu_pid: int | None
) -> dict[str, float]:
    """One bounded wrk run; requests/s, p50, p99, errors, and the server's CPU per request."""
    script = requests / "presigned.lua"
    script.write_text(LUA)
    cpu0 = cpu_seconds(cpu_pid) if cpu_pid else 0.0
    done = subprocess.run(
        [WRK, "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s", "--timeout", "10s",
         "--latency", "-s", str(script), url + uri, "--", str(requests)],
        capture_output=True, text=True, timeout=duration + 60,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    out = done.stdout
    cpu = (cpu_seconds(cpu_pid) - cpu0) if cpu_pid else 0.0
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out)[1]),  # type: ignore[index]
        "p50": _seconds(re.search(r"\s50%\s+(\S+)", out)[1]),  # type: ignore[index]
        "p99": _seconds(re.search(r"\s99%\s+(\S+)", out)[1]),  # type: ignore[index]
        "requests": total,
        "errors": int(errors[1]) if errors else 0,
        "socket_errors": 1.0 if socket_errors else 0.0,
        "cpu_per_request": cpu / max(total, 1),
    }


def enough(rate_guess: float, duration: float) -> int:
    """Enough signed requests that none is sent twice in `duration` (wrk's one thread
    hands them to all its connections)."""
    return int(rate_guess * duration * 1.5) + 100


def show(name: str, r: dict[str, float]) -> None:
    bad = ""
    if r["errors"] or r["socket_errors"]:
        bad = f"  INVALID: {r['errors']:.0f} non-2xx, socket errors {bool(r['socket_errors'])}"
    cpu = f"  cpu {1000 * r['cpu_per_request']:.2f} ms/req" if r.get("cpu_per_request") else ""
    print(
        f"  {name:<44} {r['rps']:>8.0f} req/s  p50 {1000 * r['p50']:>7.2f} ms"
        f"  p99 {1000 * r['p99']:>7.2f} ms{cpu}{bad}",
        flush=True,
    )


def telethon_figures(result: dict[str, Any]) -> dict[str, float]:
    lat = sorted(result["latencies"])
    n = len(lat)
    return {
        "rps": n / result["wall"],
        "p50": statistics.median(lat),
        "p99": lat[min(n - 1, int(0.99 * n))],
        "requests": n,
        "errors": 0,
        "socket_errors": 0.0,
        "cpu_per_request": result["cpu"] / n,
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_profile(path: Path, limit: int = 25) -> None:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(r"(service|model|common)/", limit)
    print("\nservice profile (cProfile) during the measured runs, by own time, then our")
    print("modules by cumulative time:")
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections for (a)")
    parser.add_argument("--in-flight", type=int, default=4, help="concurrent pages for (b)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds (medians)")
    parser.add_argument("--profile", action="store_true", help="cProfile the service")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for every process of the run (negative needs root): on a machine"
        " shared with other work, e.g. -10 keeps its scheduling from dominating the figures",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        workdir = Path(args.workdir)
        import logging

        logging.basicConfig(level=logging.WARNING)
        roles = {
            "emulator": lambda: run_emulator(workdir),
            "service": lambda: run_service(workdir, args.profile),
            "bare": lambda: run_bare_handler(workdir),
            "telethon": lambda: run_bare_telethon(workdir),
        }
        asyncio.run(roles[args.role]())
        return
    if not Path(WRK).exists():
        sys.exit(f"{WRK} is needed (apt-get install wrk)")
    if args.nice:
        os.nice(args.nice)  # inherited by every child: emulator, servers, Telethon, wrk
    bench(args)


def bench(args: argparse.Namespace) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; {args.rounds} alternated rounds"
          f" of {args.duration:.0f} s runs (medians shown); wrk 1 thread; all on 127.0.0.1;"
          f" niceness {os.nice(0)}")  # fmt: skip
    children: list[Child] = []
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="tgc-bench-http-") as tmp:
        workdir = Path(tmp)
        try:
            emulator = Child("emulator", workdir, "emulator.json")
            children.append(emulator)
            make_sessions(workdir, emulator.info["host"], emulator.info["port"])
            service_args = ["--profile"] if args.profile else []
            service = Child("service", workdir, "service.json", *service_args)
            children.append(service)
            accounts = asyncio.run(check_and_warm(service.url))
            write_json(workdir / "accounts.json", accounts)
            bare = Child("bare", workdir, "bare.json")
            children.append(bare)
            telethon = Child("telethon", workdir, None)
            children.append(telethon)
            if args.profile:
                service.proc.send_signal(signal.SIGUSR1)
            for n in range(args.rounds):
                print(f"  round {n + 1}/{args.rounds} ...", flush=True)
                runs = measure_round(args, workdir, service, bare, telethon, emulator)
                for name, run in runs.items():
                    results.setdefault(name, []).append(run)
        finally:
            for child in reversed(children):
                child.stop()
        if args.profile and (workdir / "service.prof").exists():
            print_profile(workdir / "service.prof")
    report(args, results)


def measure_round(
    args: argparse.Namespace,
    workdir: Path,
    service: Child,
    bare: Child,
    telethon: Child,
    emulator: Child,
) -> dict[str, dict[str, float]]:
    """One short run of every configuration, each service run between its baselines, so
    that a pair compared sees the same load on the machine (rounds absorb the drift)."""
    c, d, k = args.connections, args.duration, args.in_flight
    out: dict[str, dict[str, float]] = {}
    # (a) The bare handler ignores the signature headers; it gets the same request bytes.
    presign(workdir / "a-bare", ACCOUNTS_URI, 1, enough(8000, d))
    out["a-bare"] = wrk(bare.url, ACCOUNTS_URI, workdir / "a-bare", c, d, bare.proc.pid)
    presign(workdir / "a-service", ACCOUNTS_URI, 1, enough(8000, d))
    out["a-service"] = wrk(service.url, ACCOUNTS_URI, workdir / "a-service", c, d, service.proc.pid)
    # (b)
    for concurrency in (1, k):
        folder = workdir / f"b-{concurrency}"
        presign(folder, MESSAGES_URI, 1, enough(1000, d))
        for name in ("telethon-flat", "service", "telethon-to_dict"):
            emu0 = cpu_seconds(emulator.proc.pid)
            if name == "service":
                run = wrk(service.url, MESSAGES_URI, folder, concurrency, d, service.proc.pid)
            else:
                encode = name.split("-")[1]
                run = telethon_figures(telethon.ask(f"{d} {concurrency} {encode}"))
            run["emulator_cpu"] = (cpu_seconds(emulator.proc.pid) - emu0) / max(run["requests"], 1)
            out[f"b-{name}-{concurrency}"] = run
    return out


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds (errors: the sum, so none is hidden)."""
    out = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    out["errors"] = sum(r["errors"] for r in runs)
    out["socket_errors"] = max(r["socket_errors"] for r in runs)
    return out


def round_ratios(runs: dict[str, list[dict[str, float]]], a: str, b: str) -> list[float]:
    """rps[a] / rps[b] of each round (pairs measured seconds apart share the load)."""
    return [x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b], strict=True)]


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> None:
    c, k = args.connections, args.in_flight
    m = {name: median_run(r) for name, r in runs.items()}
    print(f"\n(a) GET {ACCOUNTS_URI}, {c} connections, AES-256-GCM answers")
    show("bare Tornado handler (same JSON, same AES-GCM)", m["a-bare"])
    show("service, signed and encrypted", m["a-service"])
    per_round = round_ratios(runs, "a-service", "a-bare")
    a = statistics.median(per_round)
    print(f"  service / bare requests/s, median of the rounds' ratios = {a:.2f}"
          f" (rounds: {', '.join(f'{x:.2f}' for x in per_round)})")  # fmt: skip
    # A saturated one-thread server answers about 1 / (its CPU per request) a second; this
    # ratio does not move with bursts of other load on the machine as much as requests/s.
    by_cpu = m["a-bare"]["cpu_per_request"] / m["a-service"]["cpu_per_request"]
    print(f"  the same from CPU per request (bare / service) = {by_cpu:.2f}")

    print(f"\n(b) a page of 100 messages of {PEER} through the emulator")
    ratios: dict[int, float] = {}
    for n in (1, k):
        show(f"bare Telethon + orjson(flat dicts), {n} in flight", m[f"b-telethon-flat-{n}"])
        show(f"bare Telethon + orjson(to_dict()), {n} in flight", m[f"b-telethon-to_dict-{n}"])
        show(f"service over signed HTTP, {n} in flight", m[f"b-service-{n}"])
        base = m[f"b-telethon-flat-{n}"]
        service = m[f"b-service-{n}"]
        # time per page = 1 / rps: (1 / service rps) / (1 / bare rps), per round
        per_round = round_ratios(runs, f"b-telethon-flat-{n}", f"b-service-{n}")
        ratios[n] = statistics.median(per_round)
        print(
            f"  time per page: service {1000 / service['rps']:.2f} ms, bare Telethon (flat)"
            f" {1000 / base['rps']:.2f} ms; ratio, median of the rounds' = {ratios[n]:.2f}"
            f" (rounds: {', '.join(f'{x:.2f}' for x in per_round)})"
        )
        print(
            f"  emulator cpu per page: {1000 * service['emulator_cpu']:.2f} ms serving the"
            f" service, {1000 * base['emulator_cpu']:.2f} ms serving bare Telethon"
        )
    cpu = m["b-service-1"]["cpu_per_request"] / m["b-telethon-flat-1"]["cpu_per_request"]
    print(f"  cpu per page, service process / bare Telethon process: {cpu:.2f} (less moved by"
          " other load on the machine than time per page)")
    print("  (cpu ms/req: the answering side's own CPU per request: the server process, or the"
          " bare Telethon process)")  # fmt: skip

    print("\nverdict:")
    print(f"  (a) service / bare handler requests/s = {a:.2f}  (target >= {TARGET_A:.2f})"
          f"  {verdict(a >= TARGET_A)}")  # fmt: skip
    b = ratios[1]
    print(f"  (b) service / bare Telethon time per page = {b:.2f} one at a time,"
          f" {ratios[k]:.2f} with {k} in flight  (target <= {TARGET_B:.2f})"
          f"  {verdict(max(ratios.values()) <= TARGET_B)}")  # fmt: skip
    if any(m[x]["errors"] or m[x]["socket_errors"] for x in m):
        print("  WARNING: some runs had non-2xx answers or socket errors: figures are not valid")


if __name__ == "__main__":
    main()
