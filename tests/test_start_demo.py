"""start.py's demo and `call` as a user meets them: every request the demo prints answers 200
against its world, and `start.py call ... | head` ends quietly."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from pathlib import Path

import orjson
import pytest

import start
from common.const import load_settings
from tests.fixtures.server_config import ROOT, SUBPROCESS_ENV, write_config


async def _spawn(
    *args: str, stdout: int = asyncio.subprocess.PIPE, unbuffered: bool = False
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "start.py",
        *args,
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def _read_hints(proc: asyncio.subprocess.Process) -> tuple[Path, list[list[str]]]:
    """The demo's config file and its suggested requests (each `METHOD URI [--body JSON]`),
    read from its output up to the blank line after them."""
    assert proc.stdout is not None
    config: Path | None = None
    requests: list[list[str]] = []
    in_block = False
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, "the demo ended before printing its requests"
        words = shlex.split(line)
        if config is None and "--config" in words:  # the first request's command
            config = Path(words[words.index("--config") + 1])
        if line.rstrip("\n") == start.DEMO_MORE:
            in_block = True
        elif in_block and not line.strip():
            break
        elif in_block:
            requests.append(words)
    assert config is not None, "no `call --config PATH` line"
    return config, requests


@pytest.mark.slow
async def test_every_request_the_demo_prints_answers_200() -> None:
    proc = await _spawn("demo", unbuffered=True)  # its lines as they come
    try:
        config, requests = await _read_hints(proc)
        assert len(requests) >= 3
        # The first answer's photo as a media item, GET and POST (issue 12's new kinds).
        assert {w[0] for w in requests if w[1].startswith("/api/v1/media/")} == {"GET", "POST"}
        settings = load_settings(config, env={})
        failed = {}
        for words in requests:
            method, uri, *rest = words
            body = orjson.loads(rest[rest.index("--body") + 1]) if "--body" in rest else None
            code, shown = await start.call(settings, method, uri, body)
            if shown.get("status") != 200 or code != 0:
                failed[" ".join(words)] = shown
        assert failed == {}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


async def test_call_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`start.py call ... | head`: the reader is gone before the answer is printed. The call's
    own exit code (1: no server there) and nothing on stderr, no BrokenPipeError."""
    config = write_config(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # what `head` does once it has its lines
    try:
        proc = await _spawn(
            "call", "--config", str(config), "--url", "http://127.0.0.1:9", "GET",
            "/api/v1/accounts", stdout=write_end,
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert err.decode() == ""
    assert proc.returncode == 1


async def test_accounts_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`start.py accounts | head`: the same for a command whose output waits in stdout's
    buffer until the exit (no flush of its own)."""
    config = write_config(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await _spawn("accounts", "--config", str(config), stdout=write_end)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert err.decode() == ""
    assert proc.returncode == 0
