"""Media pipeline benchmark: the media processor's RSS while it moves a 1 GB file emulator →
nginx, in this process (a diagnostic: download and upload rates apart, loop lag).

    .venv/bin/python bench/media_pipeline.py [--size-mb 1024] [--window N] [--part-kb N]
        [--latency-ms 0]

The issue's figure, the real server's peak RSS, is stage 2 of bench/media_download.py
(start.py as its own process); this script runs what the server runs for one media item,
in this process: a TeleClients pool on a
session file of the DC emulator (its own process, as in bench/media_download.py), the
MediaProcessor with model.downloader.download_media into the spool, and HttpStorage streaming
the spool file to nginx WebDAV (started here on a free loopback port, as the tests do).
Part size and parts in flight are the server's shipped settings (config.properties) unless
--part-kb / --window say otherwise. It checks the object on nginx byte for byte (SHA-256
against the emulator's generator) and prints the download and upload rates and this
process's RSS: before the move, the highest sampled during it (every 20 ms), and the
kernel's high-water mark (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.media_download import (  # noqa: E402 - after the path is set
    ACCOUNT,
    API_HASH,
    API_ID,
    MIB,
    TARGET_RSS_MB,
    Emulator,
    expected_digest,
    file_digest,
    shipped_media_settings,
)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (or VmHWM, its peak) in MB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class RssSampler:
    """Samples VmRSS on the loop while the move runs (the loop must stay responsive too:
    a late sample is itself a finding)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0.0
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb())
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.max_lag = max(self.max_lag, time.perf_counter() - before - self.interval)


async def move(
    emu: Emulator, nginx: Any, workdir: Path, size: int, window: int, part_size: int
) -> dict[str, Any]:
    from common.utils import parse_peer
    from model.pool import TeleClients
    from service.mediaprocessor import MediaProcessor
    from service.parser import parse_messages
    from service.storage import HttpStorage
    from tests.fakedc.session import make_session

    sessions = workdir / "sessions"
    make_session(sessions / "bench", 1, emu.host, emu.port, ACCOUNT, keys_file=emu.keys_file)
    pool = TeleClients.from_sessions_dir(
        sessions, API_ID, API_HASH, flood_sleep_threshold=0, request_timeout=60,
        receive_updates=False,
    )  # fmt: skip
    await pool.start()
    processor = MediaProcessor(
        workdir / "media.db", workdir / "spool", HttpStorage(nginx.base_url, timeout=60), pool,
        parts_in_flight=window, part_size=part_size, spool_max_bytes=2 * size,
    )  # fmt: skip
    sampler = RssSampler()
    try:
        await processor.start()
        _, messages = await pool.get("bench").get_history(parse_peer("bench"), limit=1)
        _, media = parse_messages(messages, "bench")
        item = media[0]
        baseline = rss_mb()
        sampler.start()
        started = time.perf_counter()
        processor.submit(item)
        uploading_at = await wait_state(processor, item.key, "uploading")
        stored_at = await wait_state(processor, item.key, "stored")
        await sampler.stop()
        record = processor.get(item.key)
    finally:
        await sampler.stop()
        await processor.stop()
        await pool.stop()
    return {
        "item": item,
        "record": record,
        "download_s": uploading_at - started,
        "upload_s": stored_at - uploading_at,
        "baseline": baseline,
        "sampled_peak": sampler.peak,
        "hwm": rss_mb("VmHWM"),
        "max_lag": sampler.max_lag,
    }


async def wait_state(processor: Any, key: str, state: str) -> float:
    """The moment `key` reached `state` (or a later one), polled every 10 ms."""
    order = ["pending", "downloading", "uploading", "stored"]
    while True:
        record = processor.get(key)
        current = record["state"] if record else "pending"
        if current == "failed":
            raise RuntimeError(f"media failed: {record['error'] if record else ''}")
        if order.index(current) >= order.index(state):
            return time.perf_counter()
        await asyncio.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--window", type=int, help="parts in flight (default: shipped)")
    parser.add_argument("--part-kb", type=int, help="part size in KB (default: shipped)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    from tests.fakedc.handshake import add_emulator_key
    from tests.fixtures.nginx import Nginx

    add_emulator_key()
    shipped_part, shipped_window = shipped_media_settings()
    part_size = args.part_kb * 1024 if args.part_kb else shipped_part
    window = args.window or shipped_window
    size = args.size_mb * MIB
    with tempfile.TemporaryDirectory(prefix="tgc-pipeline-") as tmp:
        workdir = Path(tmp)
        emu = Emulator(size, args.latency_ms / 1000, workdir)
        nginx = Nginx(workdir / "nginx")
        nginx.start()
        try:
            r = asyncio.run(move(emu, nginx, workdir, size, window, part_size))
            item = r["item"]
            stored = nginx.path_of(f"{item.key[:2]}/{item.key}{item.extension}")
            exact = file_digest(stored) == expected_digest(size)
        finally:
            nginx.stop()
            emu.stop()
    mb = size / MIB
    print(f"moved {args.size_mb} MB emulator → spool → nginx WebDAV ({window} parts of"
          f" {part_size // 1024} KB in flight, {args.latency_ms:.0f} ms emulator latency); byte-exact: {exact}")  # fmt: skip
    print(f"download {mb / r['download_s']:.0f} MB/s ({r['download_s']:.1f} s),"
          f" upload {mb / r['upload_s']:.0f} MB/s ({r['upload_s']:.1f} s)")  # fmt: skip
    print(f"RSS before {r['baseline']:.0f} MB, sampled peak {r['sampled_peak']:.0f} MB,"
          f" high-water mark {r['hwm']:.0f} MB (target < {TARGET_RSS_MB:g} MB):"
          f" {'ok' if r['hwm'] < TARGET_RSS_MB else 'OVER'}")  # fmt: skip
    print(f"largest loop lag seen by the sampler: {r['max_lag'] * 1000:.0f} ms")
    if not exact:
        sys.exit(1)


if __name__ == "__main__":
    main()
