"""service/mediastore.py: the parts' encoding, and what the table and the spool keep across a
stop, an unreadable row and a SIGKILL (through the processor that writes them)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.mediastore import decode_parts, encode_parts
from service.storage import HttpStorage
from tests.fixtures.nginx import Nginx
from tests.fixtures.wait import wait_for
from tests.service.media_rig import (
    PART,
    ROOT,
    Rig,
    content,
    make_media,
    query_one,
    running_rig,
    sha,
    stored_on,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


@given(st.sets(st.integers(min_value=0, max_value=5000), max_size=300))
def test_parts_round_trip(parts: set[int]) -> None:
    text = encode_parts(parts)
    assert decode_parts(text) == parts
    assert len(text) <= len(",".join(map(str, sorted(parts))))


def test_parts_are_ranges() -> None:
    assert encode_parts({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert encode_parts(set()) == "" and decode_parts("") == set()


async def test_stop_and_a_new_processor_resume_a_partial_download(
    rig: Rig, nginx_dav: Nginx
) -> None:
    m = make_media(90, PART * 8)
    rig.downloads.part_delay = 0.05
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    p.submit(m)
    await wait_for(lambda: sum(rig.downloads.fetched.values()) >= 3)
    await p.stop()
    assert query_one(rig.db, "SELECT state FROM media") == "downloading"
    fetched_before = set(k[1] for k in rig.downloads.fetched)

    rig.downloads.part_delay = 0.0
    p2 = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p2.start()
    await wait_for(lambda: p2.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert rig.downloads.calls[1][2] == frozenset(fetched_before)
    assert all(n == 1 for n in rig.downloads.fetched.values())
    assert stored_on(nginx_dav, m).read_bytes() == content(m)


async def test_stop_while_uploading_resumes_the_upload_without_downloading(
    rig: Rig, nginx_dav: Nginx
) -> None:
    nginx_dav.stop()
    m = make_media(91, PART * 3)
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=2))
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "uploading")  # type: ignore[index]
    await p.stop()
    nginx_dav.start()
    p2 = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p2.start()
    assert p2.submit(m)["state"] == "uploading"  # on its way: not queued twice
    await wait_for(lambda: p2.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert len(rig.downloads.calls) == 1
    assert stored_on(nginx_dav, m).read_bytes() == content(m)


async def test_an_unreadable_record_is_failed_not_fatal(rig: Rig) -> None:
    good, bad = make_media(93, 1000), make_media(94, 1000)
    p = rig.processor()
    p.submit(good)
    p.submit(bad)
    await p.stop()
    with contextlib.closing(sqlite3.connect(rig.db)) as conn, conn:
        conn.execute("UPDATE media SET media = '{\"kind\": 1}' WHERE key = ?", (bad.key,))
    p2 = rig.processor()
    await p2.start()
    await wait_for(lambda: p2.get(good.key)["state"] == "stored")  # type: ignore[index]
    record = p2.get(bad.key)
    assert record is not None and record["state"] == "failed"
    assert record["error"].startswith("unreadable record")


async def test_orphan_spool_files_are_removed_at_start(rig: Rig) -> None:
    rig.spool.mkdir(parents=True)
    (rig.spool / f"{'ab' * 16}.part").write_bytes(b"left over")
    (rig.spool / f"{'cd' * 16}.3.del").write_bytes(b"a deletion a crash cut short")
    p = rig.processor()
    await p.start()
    assert rig.spool_files() == []


async def test_sigkill_mid_download_resumes_in_a_new_process(rig: Rig, nginx_dav: Nginx) -> None:
    m = make_media(92, PART * 40)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from tests.service.media_rig import child_main; child_main(*sys.argv[1:])",
        str(rig.db),
        str(rig.spool),
        nginx_dav.base_url,
        str(m.file_id),
        str(m.size),
        cwd=ROOT,
    )

    def saved_parts() -> set[int]:
        if not rig.db.exists():
            return set()
        return decode_parts(query_one(rig.db, "SELECT done_parts FROM media") or "")

    try:
        await wait_for(lambda: len(saved_parts()) >= 5, within=30)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    at_kill = saved_parts()
    assert 5 <= len(at_kill) < 40

    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert len(rig.downloads.calls) == 1
    assert rig.downloads.calls[0][2] >= at_kill  # resumed from its parts
    assert set(k[1] for k in rig.downloads.fetched) == set(range(40)) - rig.downloads.calls[0][2]
    assert sha(stored_on(nginx_dav, m).read_bytes()) == sha(content(m))
    await wait_for(lambda: rig.spool_files() == [])
