"""Media download benchmark: our `download_media` against Telethon's stock `download_media`.

    .venv/bin/python bench/media_download.py [--size-mb 200] [--latencies 0,50] [--window 8]

For each latency (ms added by the emulator before every `upload.getFile` answer) it starts
the DC emulator in its own process (so client and emulator each have a core and a GIL, as
in production where Telegram is elsewhere), with glibc's malloc tuned for 1 MB answers
(MEASURED.md), writes a session file for one account, and downloads the same document
with both downloaders into a temporary folder, checking every byte (SHA-256 against the
emulator's generator). It prints MB/s of each, the ratio, and the client's peak RSS.

Targets (issue 4): ≥ 10× stock at 50 ms, ≥ 1.5× stock at 0 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
ACCOUNT = 1001
CHANNEL = 2001
DOC = 6001
API_ID, API_HASH = 12345, "0123456789abcdef0123456789abcdef"
# Keep freed 1 MB answers in the heap instead of mmap/munmap per answer (MEASURED.md).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


# -- the emulator process ---------------------------------------------------------------------


def world_dict(size: int) -> dict[str, Any]:
    return {
        "users": [{"id": ACCOUNT, "first_name": "Bench", "phone": "15550001"}],
        "chats": [
            {"id": CHANNEL, "kind": "broadcast", "title": "Bench", "username": "bench",
             "members": {str(ACCOUNT): 0}}
        ],
        "documents": [{"id": DOC, "kind": "file", "size": size, "dc_id": 1}],
        "messages": [{"chat": CHANNEL, "id": 1, "media": {"document": DOC}}],
    }  # fmt: skip


async def serve(size: int, latency: float, keys_file: str, ports_file: str) -> None:
    from tests.fakedc.cluster import FakeTelegram
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    rpc = TelegramRpc(World.from_dict(world_dict(size)))
    rpc.set_latency({"upload.getFile": latency})
    tg = FakeTelegram(rpc, dc_ids=(1, 2), keys_file=keys_file)
    await tg.start()
    write_ports(ports_file, {"host": tg.host, "ports": {d: tg.port(d) for d in tg.dcs}})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await tg.stop()


def write_ports(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(data))
    os.replace(tmp, path)  # the parent sees the file whole or not at all


class Emulator:
    """The emulator as a child process of this script."""

    def __init__(self, size: int, latency: float, workdir: Path) -> None:
        self.keys_file = workdir / "keys.jsonl"
        self.ports_file = workdir / f"ports-{latency}.json"
        args = [
            sys.executable, __file__, "--serve", "--size", str(size), "--latency", str(latency),
            "--keys-file", str(self.keys_file), "--ports-file", str(self.ports_file),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, env={**os.environ, **MALLOC_ENV}, cwd=ROOT)
        self.host, self.port = self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while not self.ports_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("emulator did not start")
            time.sleep(0.05)
        data = json.loads(self.ports_file.read_text())
        return data["host"], int(data["ports"]["1"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the client side --------------------------------------------------------------------------


def expected_digest(size: int) -> str:
    from tests.fakedc import files
    from tests.fakedc.render import document_file_key

    return files.digest(document_file_key(DOC), size)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default), from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Run:
    """One timed download: MB/s, and CPU seconds spent by the client and the emulator."""

    def __init__(self, emu: Emulator, size: int) -> None:
        self.emu, self.size = emu, size

    async def __call__(self, download: Any) -> dict[str, float]:
        c0, e0 = cpu_seconds(), cpu_seconds(self.emu.proc.pid)
        start = time.perf_counter()
        await download
        wall = time.perf_counter() - start
        c1, e1 = cpu_seconds(), cpu_seconds(self.emu.proc.pid)
        return {
            "mbps": self.size / MIB / wall,
            "client_cpu": c1 - c0,
            "emu_cpu": e1 - e0,
            "wall": wall,
        }


async def measure(
    emu: Emulator, workdir: Path, size: int, window: int, part_size: int, rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Alternates ours and stock `rounds` times (other load on the machine drifts; the
    median of alternated runs compares them fairly)."""
    from telethon import TelegramClient

    from model.media import download_media
    from service.parser import parse_message
    from tests.fakedc.session import make_session

    session = make_session(
        workdir / f"bench-{emu.port}", 1, emu.host, emu.port, ACCOUNT, keys_file=emu.keys_file
    )
    client = TelegramClient(str(session), API_ID, API_HASH, receive_updates=False)
    client.flood_sleep_threshold = 0
    await client.connect()
    run = Run(emu, size)
    want = expected_digest(size)
    results: dict[str, list[dict[str, float]]] = {"ours": [], "stock": []}
    try:
        msg = await client.get_messages("bench", ids=1)
        _, media = parse_message(msg, "bench")
        for _ in range(rounds):
            ours = workdir / "ours.bin"
            results["ours"].append(
                await run(
                    download_media(
                        client, media[0], ours, parts_in_flight=window, part_size=part_size
                    )
                )
            )
            if file_digest(ours) != want:
                raise AssertionError("our download is not byte-exact")
            ours.unlink()
            stock = workdir / "stock.bin"
            results["stock"].append(await run(client.download_media(msg, file=str(stock))))
            if file_digest(stock) != want:
                raise AssertionError("stock download is not byte-exact")
            stock.unlink()
        return results
    finally:
        await client.disconnect()


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["mbps"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--latencies", default="0,50", help="ms, comma-separated")
    parser.add_argument("--window", type=int, default=8, help="parts in flight")
    parser.add_argument("--part-kb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs at 0 ms (median)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latency", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--keys-file", help=argparse.SUPPRESS)
    parser.add_argument("--ports-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.size, args.latency, args.keys_file, args.ports_file))
        return

    from tests.fakedc.handshake import add_emulator_key

    add_emulator_key()
    size = args.size_mb * MIB
    print(f"document {args.size_mb} MB; ours: {args.window} parts of {args.part_kb} KB in flight;"
          f" stock: Telethon {_telethon_version()} download_media")  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load} (figures drift with other load)")
    print(
        f"{'latency':>8} {'ours MB/s':>10} {'stock MB/s':>11} {'ratio':>6}"
        f" {'ours MB/cpu-s client|emulator':>30} {'stock MB/cpu-s client|emulator':>31}"
    )
    with tempfile.TemporaryDirectory(prefix="tgc-bench-") as tmp:
        workdir = Path(tmp)
        for latency_ms in (float(x) for x in args.latencies.split(",")):
            rounds = args.rounds if latency_ms == 0 else 1
            emu = Emulator(size, latency_ms / 1000, workdir)
            try:
                r = asyncio.run(
                    measure(emu, workdir, size, args.window, args.part_kb * 1024, rounds)
                )
            finally:
                emu.stop()
            ours, stock = median_run(r["ours"]), median_run(r["stock"])
            print(
                f"{latency_ms:>6.0f}ms {ours['mbps']:>10.1f} {stock['mbps']:>11.1f}"
                f" {ours['mbps'] / stock['mbps']:>5.1f}x"
                f" {_per_cpu(ours, size):>30} {_per_cpu(stock, size):>31}",
                flush=True,
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"client peak RSS {rss:.0f} MB (both downloaders, {args.size_mb} MB file)")
    print("MB/cpu-s: MB moved per CPU second of that process; the emulator's figure is its ceiling")


def _per_cpu(run: dict[str, float], size: int) -> str:
    mb = size / MIB
    return f"{mb / max(run['client_cpu'], 1e-9):.0f} | {mb / max(run['emu_cpu'], 1e-9):.0f}"


def _telethon_version() -> str:
    import telethon

    return str(telethon.__version__)


if __name__ == "__main__":
    main()
