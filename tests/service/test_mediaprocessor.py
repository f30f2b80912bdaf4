"""service/mediaprocessor.py: the public surface (submit, get, stats, start/stop) and the
flow through it: one download and one upload per key, the states, the size limit, files
described but not queued.

The rig (fake downloads and accounts, nginx or the local folder) is tests/service/
media_rig.py; each part of the pipeline has its own module beside this one
(test_media{store,queue,download,upload,source}.py) and the end-to-end flow through the
emulator is test_media_flow.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from model.media import Media
from service.storage import HttpStorage, LocalStorage
from tests.fixtures.nginx import Nginx
from tests.fixtures.wait import wait_for
from tests.service.media_rig import (
    PART,
    GatedStorage,
    Rig,
    content,
    make_media,
    running_rig,
    sha,
    stored_on,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


async def test_stored_byte_exact_on_nginx(rig: Rig, nginx_dav: Nginx) -> None:
    items = [
        make_media(i, size) for i, size in enumerate([1, 4096, PART, PART * 3 + 17, 2_000_000], 1)
    ]
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    for m in items:
        assert p.submit(m)["state"] == "pending"
    await wait_for(lambda: all((p.get(m.key) or {}).get("state") == "stored" for m in items))

    for m in items:
        record = p.get(m.key)
        assert record is not None
        assert record["url"] == f"{nginx_dav.base_url}/{m.key[:2]}/{m.key}.pdf"
        assert record["size"] == m.size and record["mime_type"] == "application/pdf"
        assert record["error"] is None and record["updated_at"].endswith("Z")
        assert sha(stored_on(nginx_dav, m).read_bytes()) == sha(content(m))
    await wait_for(lambda: rig.spool_files() == [])  # deleted once nginx confirmed
    assert sorted(e["key"] for e in rig.stored) == sorted(m.key for m in items)
    assert {e["account"] for e in rig.stored} == {"acc1"}
    assert {e["msg_id"] for e in rig.stored} == {5}


async def test_one_key_in_ten_submits_is_downloaded_once(rig: Rig, nginx_dav: Nginx) -> None:
    storage = GatedStorage(HttpStorage(nginx_dav.base_url, timeout=5))
    p = rig.processor(storage)
    await p.start()
    # Ten messages, two accounts, one file: the same key.
    same = [make_media(77, 300_000, account=f"acc{1 + i % 2}", msg_id=i) for i in range(10)]
    records = [p.submit(m) for m in same]
    assert {r["key"] for r in records} == {same[0].key}
    await wait_for(lambda: (p.get(same[0].key) or {}).get("state") == "stored")
    for m in same:  # and after it is stored, still once
        assert p.submit(m)["state"] == "stored"

    assert [c[0] for c in rig.downloads.calls] == [same[0].key]
    assert storage.puts == Counter({same[0].key: 1})
    assert len(rig.stored) == 1
    assert nginx_dav.files() == [Path(same[0].key[:2]) / f"{same[0].key}.pdf"]


async def test_states_pending_downloading_uploading_stored(rig: Rig, tmp_path: Path) -> None:
    storage = GatedStorage(LocalStorage(rig.local))
    storage.gate.clear()
    rig.downloads.gate.clear()
    p = rig.processor(storage)
    m = make_media(3, PART * 2)
    assert p.submit(m)["state"] == "pending"  # accepted before start, kept in the table
    await p.start()
    await wait_for(lambda: p.get(m.key)["state"] == "downloading")  # type: ignore[index]
    assert rig.clients["acc1"].pending_downloads == 1
    rig.downloads.gate.set()
    await wait_for(lambda: p.get(m.key)["state"] == "uploading")  # type: ignore[index]
    assert rig.clients["acc1"].pending_downloads == 0
    assert rig.spool_files() == [f"{m.key}.part"]
    storage.gate.set()
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    record = p.get(m.key)
    assert record is not None and record["url"] == (rig.local / m.key[:2] / f"{m.key}.pdf").as_uri()
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)
    assert p.get("0" * 32) is None


async def test_a_file_over_max_file_bytes_is_failed_not_downloaded(rig: Rig) -> None:
    p = rig.processor(max_file_bytes=PART * 2)
    await p.start()
    big, edge = make_media(200, PART * 2 + 300_000), make_media(201, PART * 2)
    record = p.submit(big)
    assert record["state"] == "failed"
    assert record["error"] == "file is 421.0 KB (431072 bytes), over media.max_file_bytes=128K"
    assert p.get(big.key) == record  # GET /api/v1/media/KEY says why
    p.submit(edge)  # exactly the limit goes
    await wait_for(lambda: p.get(edge.key)["state"] == "stored")  # type: ignore[index]
    assert [c[0] for c in rig.downloads.calls] == [edge.key]
    assert rig.clients["acc1"].pending_downloads == 0
    assert p.stats()["spool_bytes"] == 0
    # Brought again under a raised limit, the same file is downloaded.
    await p.stop()
    p2 = rig.processor(max_file_bytes=PART * 8)
    await p2.start()
    assert p2.submit(big)["state"] == "pending"
    await wait_for(lambda: p2.get(big.key)["state"] == "stored")  # type: ignore[index]


async def test_a_queued_file_over_a_lowered_limit_is_failed_at_start(rig: Rig) -> None:
    queued, small = make_media(202, PART * 4), make_media(203, 1000)
    p = rig.processor()
    p.submit(queued)  # before start: pending in the table
    p.submit(small)
    await p.stop()
    p2 = rig.processor(max_file_bytes=PART)
    await p2.start()
    await wait_for(lambda: p2.get(small.key)["state"] == "stored")  # type: ignore[index]
    record = p2.get(queued.key)
    assert record is not None and record["state"] == "failed"
    assert record["error"] == "file is 256.0 KB (262144 bytes), over media.max_file_bytes=64K"
    assert [c[0] for c in rig.downloads.calls] == [small.key]


async def a_first_life(rig: Rig, stored: Media, failed: Media) -> None:
    """A processor that stored `stored` and failed `failed` (its download raised), stopped."""
    rig.downloads.faults[failed.key] = [ZeroDivisionError("oops")]
    p = rig.processor()
    await p.start()
    p.submit(stored)
    p.submit(failed)
    await wait_for(lambda: p.get(stored.key)["state"] == "stored")  # type: ignore[index]
    await wait_for(lambda: p.get(failed.key)["state"] == "failed")  # type: ignore[index]
    await p.stop()


async def test_without_auto_download_files_are_described_not_queued(rig: Rig) -> None:
    stored, failed, new = make_media(204, 1000), make_media(205, 1000), make_media(206, 1000)
    await a_first_life(rig, stored, failed)
    calls = len(rig.downloads.calls)

    p2 = rig.processor(auto_download=False)
    await p2.start()
    assert p2.submit(stored) == p2.get(stored.key)  # what the table knows: stored, its url
    assert p2.submit(stored)["url"] is not None
    assert p2.submit(failed)["state"] == "failed"  # not tried again
    record = p2.submit(new)
    assert record["state"] is None and record["url"] is None and record["size"] == 1000
    assert p2.get(new.key) is None  # nothing kept: GET /api/v1/media/KEY is 404
    assert p2.stats()["in_progress"] == 0 and p2.stats()["downloads_queued"] == 0
    assert len(rig.downloads.calls) == calls
    assert rig.clients["acc1"].pending_downloads == 0


async def test_queue_now_downloads_what_an_answer_described_and_retries_a_failed_one(
    rig: Rig,
) -> None:
    stored, failed, new = make_media(207, 1000), make_media(208, 1000), make_media(209, 2000)
    await a_first_life(rig, stored, failed)

    p2 = rig.processor(auto_download=False)
    await p2.start()
    assert p2.queue_now(new.key) is None  # no answer described it yet: POST is 404
    assert p2.submit(new)["state"] is None  # described, not queued ...
    await p2.stop()
    p3 = rig.processor(auto_download=False)  # ... and remembered across a restart
    await p3.start()
    calls = len(rig.downloads.calls)
    assert p3.queue_now(new.key)["state"] == "pending"  # type: ignore[index]
    assert p3.queue_now(failed.key)["state"] == "pending"  # type: ignore[index]
    assert p3.queue_now(stored.key) == p3.get(stored.key)  # stored: nothing to do
    for m in (new, failed):
        await wait_for(lambda m=m: p3.get(m.key)["state"] == "stored")  # type: ignore[index,misc]
    assert sorted(c[0] for c in rig.downloads.calls[calls:]) == sorted([new.key, failed.key])
    assert content(new) == (rig.local / new.key[:2] / f"{new.key}.pdf").read_bytes()
    assert p3.queue_now(new.key)["state"] == "stored"  # type: ignore[index]
    assert len(rig.downloads.calls) == calls + 2  # a stored one is not downloaded again


async def test_queue_now_over_max_file_bytes_is_failed_with_the_reason(rig: Rig) -> None:
    p = rig.processor(auto_download=False, max_file_bytes=1000)
    await p.start()
    big = make_media(210, 5000)
    p.submit(big)
    record = p.queue_now(big.key)
    assert record is not None and record["state"] == "failed"
    assert "over media.max_file_bytes" in record["error"]
    assert rig.downloads.calls == []


@pytest.mark.parametrize("kind", ["http", "shared folder"])
async def test_a_file_another_process_stored_is_not_downloaded_again(
    rig: Rig, nginx_dav: Nginx, tmp_path: Path, kind: str
) -> None:
    """Store-once across processes: two processors with their own table and spool (two
    server processes) on one storage; the second asks the storage before downloading."""

    def storage() -> GatedStorage:
        inner = HttpStorage(nginx_dav.base_url, timeout=5) if kind == "http" else None
        return GatedStorage(inner or LocalStorage(tmp_path / "shared"))

    first_storage = storage()
    first = rig.processor(first_storage)
    await first.start()
    media = make_media(91, PART * 2 + 5, msg_id=7)
    first.submit(media)
    await wait_for(lambda: (first.get(media.key) or {}).get("state") == "stored")
    url = (first.get(media.key) or {})["url"]

    async with running_rig(tmp_path / "other") as other_rig:
        (tmp_path / "other").mkdir(exist_ok=True)
        second_storage = storage()
        second = other_rig.processor(second_storage)
        await second.start()
        assert second.submit(make_media(91, PART * 2 + 5, account="acc2", msg_id=8))["state"] in (
            "pending",
            "stored",
        )
        await wait_for(lambda: (second.get(media.key) or {}).get("state") == "stored")
        assert (second.get(media.key) or {})["url"] == url
        assert other_rig.downloads.calls == []  # nothing asked of Telegram
        assert second_storage.tried == Counter()  # nothing uploaded
        assert second.found_stored == 1
        # Its media.stored event still goes out, for the message that brought it here.
        await wait_for(lambda: [e["msg_id"] for e in other_rig.stored] == [8])
        assert other_rig.stored[0]["url"] == url
    assert [c[0] for c in rig.downloads.calls] == [media.key]
    assert first_storage.puts == Counter({media.key: 1})


async def test_a_storage_that_cannot_tell_does_not_stop_the_download(
    rig: Rig, nginx_dav: Nginx
) -> None:
    """A HEAD that fails (the storage refuses it, or is down) is no answer: download, then
    store as ever."""
    storage = GatedStorage(HttpStorage(nginx_dav.base_url, timeout=5))
    p = rig.processor(storage)
    await p.start()
    media = make_media(92, 1000)
    nginx_dav.stop()
    p.submit(media)
    await wait_for(lambda: len(rig.downloads.calls) == 1)  # downloaded despite the HEAD
    nginx_dav.start()
    await wait_for(lambda: (p.get(media.key) or {}).get("state") == "stored")
    assert p.found_stored == 0
