"""GET /files (issue 12): a 1 GB stored file through the server beside nginx, in one run.

    flock /tmp/bench.lock .venv/bin/python bench/files.py [--size-mb 1024] [--rounds 3]

A file stored in the server's local storage folder (data.dir/media, a sparse file made in
a moment, so both servers read page-cache zeros and the disk takes no part; its row put in
the media table as the pipeline would leave it) is fetched whole with curl (to /dev/null):

- through the real server (`start.py serve` in its own process, no account needed), at the
  `content_url` that GET /api/v1/media/KEY answers;
- from nginx (`sendfile on`, tests/fixtures/nginx.py), serving the same folder.

An untimed fetch from each first (the page cache; the server's code paths), then rounds
alternate the two.
Figures: each one's MB/s (best and median of the rounds), the ratio of the bests (on a
shared machine the best round is the one least disturbed by others; the medians' ratio is
shown too), and the server's RSS before its first transfer and at most during them
(sampled every 20 ms).
Targets: at least 50% of nginx's MB/s, RSS growing less than 32 MB. Prints the load average;
the machine is shared, so the figures are those of a busy machine. Exit 1 if a target fails.
Everything lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.soak_rig import Server, free_port, proc_figures  # noqa: E402
from model.media import Media  # noqa: E402
from service.apiclient import ApiClient  # noqa: E402
from service.mediastore import Item, MediaTable, State  # noqa: E402
from service.storage import LocalStorage  # noqa: E402
from tests.fixtures.nginx import Nginx  # noqa: E402

TOKEN = "bench-token-" + "f" * 20
AES_KEY = "42" * 32
CURL = "/usr/bin/curl"
RATIO_TARGET = 0.5
RSS_TARGET_MB = 32.0


def seed_stored_file(data_dir: Path, size: int) -> str:
    """A sparse file of `size` bytes in the local storage, recorded `stored`; its key."""
    media = Media(
        type="video", kind="document", file_id=424242, access_hash=1, file_reference=b"",
        dc_id=1, size=size, mime_type="video/mp4", file_name="big.mp4",
    )  # fmt: skip
    path = LocalStorage(data_dir / "media").path_for(media.key, media.extension)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    table = MediaTable(data_dir / "media.sqlite3", time.time)
    item = Item(media=media, part_size=1024 * 1024)
    table.insert_pending(item)
    item.state, item.url = State.STORED, path.as_uri()
    table.save(item)
    table.mark_notified(media.key)
    table.close()
    return media.key


def curl_mb_s(url: str, size: int) -> float:
    """Fetches `url` whole to /dev/null; MB/s (10^6 bytes) as curl measured it."""
    out = subprocess.run(
        [CURL, "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}",
         url],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout.split()  # fmt: skip
    code, got, speed = out[0], int(float(out[1])), float(out[2])
    if code != "200" or got != size:
        raise RuntimeError(f"{url}: HTTP {code}, {got} of {size} bytes")
    return speed / 1e6


class RssPeak:
    """The highest VmRSS of `pid` while running (sampled every 20 ms on a thread)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            figures = proc_figures(self.pid)
            if figures is not None:
                self.peak = max(self.peak, figures[0])
            self._stop.wait(0.02)


async def run(size: int, rounds: int, tmp: Path) -> bool:
    data = tmp / "server" / "data"
    key = seed_stored_file(data, size)
    nginx = Nginx(tmp / "nginx")
    nginx.root.rmdir()
    nginx.root.symlink_to(data / "media")  # the same folder, the same file
    props = {
        "server.port": str(free_port()),
        "api.token": TOKEN,
        "api.aes_key": AES_KEY,
        "telegram.api_id": "12345",
        "telegram.api_hash": "0123456789abcdef" * 2,
        "telegram.sessions_dir": "sessions",
        "data.dir": "data",
        "log.dir": "logs",
    }
    (tmp / "server" / "sessions").mkdir(parents=True)
    server = Server(tmp / "server", props)
    nginx.start()
    try:
        await server.start()
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            record = await api.request("GET", f"/api/v1/media/{key}")
        assert record.ok and record.data["state"] == "stored", record
        ours = server.url + record.data["content_url"]
        theirs = f"{nginx.base_url}/{key[:2]}/{Path(record.data['url']).name}"
        await asyncio.to_thread(curl_mb_s, theirs, size)  # the page cache, for both
        pid = server.pid
        assert pid is not None
        before = proc_figures(pid)
        assert before is not None
        speeds: dict[str, list[float]] = {"server": [], "nginx": []}
        with RssPeak(pid) as rss:
            await asyncio.to_thread(curl_mb_s, ours, size)  # untimed: the code paths warm
            for _ in range(rounds):
                speeds["nginx"].append(await asyncio.to_thread(curl_mb_s, theirs, size))
                speeds["server"].append(await asyncio.to_thread(curl_mb_s, ours, size))
        code, _ = await server.terminate(30)
    finally:
        server.ensure_dead()
        nginx.stop()
    ratio = max(speeds["server"]) / max(speeds["nginx"])
    median_ratio = statistics.median(speeds["server"]) / statistics.median(speeds["nginx"])
    growth = rss.peak - before[0]
    print(f"file: {size / 2**20:.0f} MiB (sparse), {rounds} rounds, curl to /dev/null")
    for name, figures in speeds.items():
        each = ", ".join(f"{s:.0f}" for s in figures)
        print(f"  {name:6}: best {max(figures):6.0f} MB/s, median"
              f" {statistics.median(figures):6.0f}  ({each})")
    print(f"  ratio server/nginx: {ratio:.2f} of the bests (target >= {RATIO_TARGET})"
          f"  {'PASS' if ratio >= RATIO_TARGET else 'FAIL'}; of the medians {median_ratio:.2f}")
    print(f"  server RSS: {before[0]:.1f} MB before, {rss.peak:.1f} MB at most:"
          f" +{growth:.1f} MB (target < {RSS_TARGET_MB:.0f})"
          f"  {'PASS' if growth < RSS_TARGET_MB else 'FAIL'}")
    print(f"  server stopped with exit code {code}")
    print("  load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} CPUs (a shared machine: figures of a busy one)")
    return ratio >= RATIO_TARGET and growth < RSS_TARGET_MB and code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tgc-bench-files-") as tmp:
        ok = asyncio.run(run(args.size_mb * 2**20, args.rounds, Path(tmp)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
