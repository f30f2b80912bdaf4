"""How fast the emulator's protocol layer serves `upload.getFile` to a stock Telethon client.

    .venv/bin/python bench/emulator_throughput.py [--total-mb 512] [--part-kb 1024]
                                                  [--window 32] [--transport full]

The emulator runs in its own process (one core and GIL each, as in production) with a
dispatcher that answers every upload.getFile with the same preallocated bytes, so only the
protocol layer (MTProto framing, SHA-256, AES-IGE, CRC, socket writes) is measured. The
client keeps `--window` requests in flight on one stock TelegramClient. Prints MB/s and the
CPU seconds each process spent per GB: the process near 1 s of CPU per second of wall time
is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
USER = 1000
API_ID, API_HASH = 12345, "0123456789abcdef0123456789abcdef"


async def _serve(port: int, keys: Path, part: int) -> None:
    from telethon.tl import functions, types

    from tests.emulator.mini_world import MiniWorld
    from tests.fakedc.cluster import FakeTelegram

    data = os.urandom(part)
    fallback = MiniWorld()

    async def dispatcher(ctx: Any, request: Any) -> Any:
        if isinstance(request, functions.upload.GetFileRequest):
            return types.upload.File(types.storage.FilePartial(), 0, data)
        return await fallback(ctx, request)

    tg = FakeTelegram(dispatcher, dc_ids=(1,), ports={1: port}, keys_file=keys)
    await tg.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await tg.stop()


def _cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _client(port: int, keys: Path, args: argparse.Namespace, server_pid: int) -> None:
    from telethon import TelegramClient
    from telethon.network import (
        ConnectionTcpAbridged,
        ConnectionTcpFull,
        ConnectionTcpIntermediate,
    )
    from telethon.tl import functions, types

    from tests.fakedc.session import make_session

    transports = {
        "full": ConnectionTcpFull,
        "intermediate": ConnectionTcpIntermediate,
        "abridged": ConnectionTcpAbridged,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = make_session(Path(tmp) / "bench", 1, "127.0.0.1", port, USER, keys_file=keys)
        client = TelegramClient(str(path), API_ID, API_HASH, connection=transports[args.transport])
        await client.connect()
        try:
            part = args.part_kb * 1024
            parts = args.total_mb * MIB // part
            loc = types.InputDocumentFileLocation(1, 1, b"", "")
            sem = asyncio.Semaphore(args.window)
            got = 0

            async def one(i: int) -> None:
                nonlocal got
                async with sem:
                    req = functions.upload.GetFileRequest(loc, offset=i * part, limit=part)
                    n = len((await client(req)).bytes)  # not `got += len(await ...)`: racy
                    got += n

            await asyncio.gather(*(one(i) for i in range(min(parts, args.window))))  # warm-up
            got = 0
            c0, s0, t0 = _cpu_seconds(), _cpu_seconds(server_pid), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(parts)))
            wall = time.perf_counter() - t0
            c1, s1 = _cpu_seconds(), _cpu_seconds(server_pid)
        finally:
            await client.disconnect()
    gb = got / (1 << 30)
    print(
        f"{got / MIB:.0f} MiB in {wall:.2f} s = {got / MIB / wall:.0f} MiB/s "
        f"({args.transport}, {args.part_kb} KiB parts, window {args.window}); "
        f"CPU per wall second: client {(c1 - c0) / wall:.2f}, emulator {(s1 - s0) / wall:.2f}; "
        f"CPU s/GiB: client {(c1 - c0) / gb:.2f}, emulator {(s1 - s0) / gb:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mb", type=int, default=512)
    parser.add_argument("--part-kb", type=int, default=1024)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--transport", default="full", choices=["full", "intermediate", "abridged"])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.keys, args.part_kb * 1024))
        return

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--keys", str(keys),
             "--part-kb", str(args.part_kb)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            asyncio.run(_client(port, keys, args, server.pid))
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
