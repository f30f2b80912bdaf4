"""A real server process out of file descriptors (issue 11, item 4): started with a low
RLIMIT_NOFILE and flooded with idle connections past it, it neither spins nor floods its
log, and answers /healthz again as soon as the flood leaves. And at start the soft limit is
raised to the hard one, the figure logged."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from common.const import load_settings
from tests.fixtures.server_config import ROOT, SUBPROCESS_ENV, write_config
from tests.fixtures.wait import wait_for

pytestmark = pytest.mark.slow  # a server process each

LIMIT = 128  # the child's descriptor limit: the idle server uses ~30


async def serve_with_limit(config: Path, soft: int, hard: int) -> asyncio.subprocess.Process:
    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    # stderr to a file, never a pipe nobody reads: a full pipe would block the server.
    with (config.parent / "stderr.txt").open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "start.py",
            "serve",
            "--no-console",
            "--config",
            str(config),
            cwd=ROOT,
            env=SUBPROCESS_ENV,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=limit,
        )


async def started(proc: asyncio.subprocess.Process, config: Path, url_file: Path) -> str:
    await wait_for(
        lambda: url_file.exists() or proc.returncode is not None, within=30, what="the url file"
    )
    assert proc.returncode is None, read(config.parent / "stderr.txt")
    return read(url_file).strip()


def read(path: Path) -> str:
    return path.read_text()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def healthz(url: str) -> int | None:
    """/healthz's status code, None without an answer within a second."""
    http = AsyncHTTPClient(force_instance=True)
    try:
        answer = await http.fetch(
            f"{url}/healthz", raise_error=False, connect_timeout=1, request_timeout=1
        )
    except (HTTPClientError, OSError):  # a timeout (599) or a refused connection
        return None
    finally:
        http.close()
    return answer.code


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise


async def test_a_flood_past_the_limit_neither_spins_nor_floods_the_log(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    proc = await serve_with_limit(config, LIMIT, LIMIT)
    flood: list[asyncio.StreamWriter] = []
    try:
        url = await started(proc, config, settings.run_dir / "tgc.url")
        assert await healthz(url) == 503  # serving (no account: not healthy)
        log = settings.log.file
        assert f"descriptors: limit {LIMIT}" in read(log)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # Past the limit, and within the listen backlog (128) so that every connect completes.
        for _ in range(LIMIT - open_descriptors(proc.pid) + 40):
            flood.append((await asyncio.open_connection(host, int(port)))[1])
        await wait_for(
            lambda: open_descriptors(proc.pid) >= LIMIT - 1,
            within=10,
            what="the server out of descriptors",
        )

        # A measurement window, not a wait: how much CPU and log the shortage costs.
        size, cpu, t0 = log.stat().st_size, cpu_seconds(proc.pid), time.monotonic()
        await asyncio.sleep(3)
        share = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - t0)
        grown = log.stat().st_size - size
        print(f"out of descriptors: {share:.1%} of a CPU, the log grew {grown} bytes in 3 s")
        assert share < 0.15, f"the server used {share:.0%} of a CPU out of descriptors"
        assert grown < 2000, f"the log grew {grown} bytes in 3 s"
        assert "out of file descriptors (EMFILE" in read(log)

        for writer in flood:
            writer.close()
        flood.clear()
        t0 = time.monotonic()
        await wait_for(lambda: healthz_answers(url), within=10, what="/healthz after the flood")
        print(f"/healthz answered {time.monotonic() - t0:.2f} s after the flood closed")
        assert "accepting connections again after" in read(log)
        assert await stop(proc) == 0
    finally:
        for writer in flood:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def healthz_answers(url: str) -> bool:
    return await healthz(url) is not None


async def test_the_soft_limit_is_raised_to_the_hard_one_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    proc = await serve_with_limit(config, 256, 2048)
    try:
        await started(proc, config, settings.run_dir / "tgc.url")
        limits = read(Path(f"/proc/{proc.pid}/limits"))
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == ["2048", "2048"], row
        assert "descriptors: limit raised from 256 to 2048" in settings.log.file.read_text()
        assert await stop(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
