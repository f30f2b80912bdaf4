"""service/mediaupload.py: the storage down, misconfigured or refusing a file; names that
try to leave the key's path; the media.stored callback failing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.storage import HttpStorage, LocalStorage, StorageError
from tests.fixtures.nginx import Nginx
from tests.fixtures.wait import wait_for
from tests.service.media_rig import (
    GatedStorage,
    Rig,
    content,
    make_media,
    running_rig,
    stored_on,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


async def test_nginx_down_items_wait_and_are_stored_when_it_returns(
    rig: Rig, nginx_dav: Nginx
) -> None:
    nginx_dav.stop()
    storage = GatedStorage(HttpStorage(nginx_dav.base_url, timeout=2))
    p = rig.processor(storage)
    await p.start()
    items = [make_media(i, 200_000) for i in range(10, 14)]
    for m in items:
        p.submit(m)
    await wait_for(lambda: all(p.get(m.key)["state"] == "uploading" for m in items))  # type: ignore[index]
    # Several failed attempts (the two upload workers three each): nothing lost, nothing failed.
    await wait_for(lambda: sum(storage.tried.values()) >= 6, what="six refused puts")
    assert all(p.get(m.key)["state"] == "uploading" for m in items)  # type: ignore[index]
    assert len(rig.spool_files()) == 4

    nginx_dav.start()
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in items))  # type: ignore[index]
    for m in items:
        assert stored_on(nginx_dav, m).read_bytes() == content(m)
    await wait_for(lambda: rig.spool_files() == [])
    assert len(rig.downloads.calls) == 4


async def test_a_refused_upload_fails_the_item(rig: Rig) -> None:
    storage = GatedStorage(LocalStorage(rig.local))
    storage.fail_with = StorageError("PUT http://x/…: 413 Request Entity Too Large")
    p = rig.processor(storage)
    await p.start()
    m = make_media(4, 1000)
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(m.key)["error"] == "PUT http://x/…: 413 Request Entity Too Large"  # type: ignore[index]
    await wait_for(lambda: rig.spool_files() == [])
    assert rig.stored == []
    assert p.stats()["spool_bytes"] == 0
    # A failed key brought again is tried again.
    storage.fail_with = None
    assert p.submit(m)["state"] == "pending"
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]


def reconfigure(nginx: Nginx, old: str, new: str) -> None:
    """Edits the running nginx's config and restarts it on the same port."""
    text = nginx.conf.read_text()
    assert old in text
    nginx.conf.write_text(text.replace(old, new))
    nginx.restart()


@pytest.mark.parametrize(
    ("status", "mistake"),
    [
        # Every PUT forbidden (a deny rule, a read-only share).
        (403, ("autoindex on;", "autoindex on; deny all;")),
        # WebDAV's PUT left out of the location: 405 for every PUT.
        (405, ("dav_methods PUT DELETE MKCOL;", "dav_methods off;")),
    ],
    ids=["403", "405"],
)
async def test_a_misconfigured_storage_keeps_the_file_until_it_is_fixed(
    rig: Rig,
    nginx_dav: Nginx,
    caplog: pytest.LogCaptureFixture,
    status: int,
    mistake: tuple[str, str],
) -> None:
    reconfigure(nginx_dav, *mistake)
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    m = make_media(5, 200_000)
    url = f"{nginx_dav.base_url}/{m.key[:2]}/{m.key}.pdf"
    p.submit(m)
    refused = f"PUT {url}: {status} "

    def logged() -> bool:
        return any(r.levelname == "ERROR" and refused in r.getMessage() for r in caplog.records)

    await wait_for(logged)  # an error naming the status and the URL, for ops to see
    await wait_for(lambda: sum(refused in r.getMessage() for r in caplog.records) >= 3)
    # Refused again and again: the item waits with its file, nothing is lost.
    assert p.get(m.key)["state"] == "uploading"  # type: ignore[index]
    assert rig.spool_files() == [f"{m.key}.part"]
    assert (rig.spool / f"{m.key}.part").read_bytes() == content(m)

    reconfigure(nginx_dav, mistake[1], mistake[0])  # ops fix it
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert p.get(m.key)["url"] == url  # type: ignore[index]
    assert stored_on(nginx_dav, m).read_bytes() == content(m)
    await wait_for(lambda: rig.spool_files() == [])
    assert len(rig.downloads.calls) == 1  # downloaded once


async def test_a_file_the_storage_can_never_take_fails(rig: Rig, nginx_dav: Nginx) -> None:
    reconfigure(nginx_dav, "client_max_body_size 0;", "client_max_body_size 100k;")
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    big, small = make_media(6, 200_000), make_media(7, 50_000)
    p.submit(big)
    p.submit(small)
    await wait_for(lambda: p.get(big.key)["state"] == "failed")  # type: ignore[index]
    assert " 413 " in p.get(big.key)["error"]  # type: ignore[index]
    await wait_for(lambda: p.get(small.key)["state"] == "stored")  # type: ignore[index]
    await wait_for(lambda: rig.spool_files() == [])


async def test_a_blocked_local_folder_keeps_the_file_until_it_is_fixed(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    m = make_media(8, 200_000)
    rig.local.mkdir(parents=True, exist_ok=True)
    blocker = rig.local / m.key[:2]
    blocker.write_bytes(b"a file where the key's folder should be")
    p = rig.processor(LocalStorage(rig.local))
    await p.start()
    p.submit(m)

    def refusals() -> int:
        return sum(
            r.levelname == "ERROR" and "the storage refuses uploads" in r.getMessage()
            for r in caplog.records
        )

    await wait_for(lambda: refusals() >= 2)
    assert p.get(m.key)["state"] == "uploading"  # type: ignore[index]
    assert (rig.spool / f"{m.key}.part").read_bytes() == content(m)

    blocker.unlink()  # ops fix it
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)
    await wait_for(lambda: rig.spool_files() == [])
    assert len(rig.downloads.calls) == 1


async def test_path_traversal_names_land_under_the_key(rig: Rig, nginx_dav: Nginx) -> None:
    p = rig.processor(HttpStorage(nginx_dav.base_url, timeout=5))
    await p.start()
    evil = [
        make_media(80, 500, file_name="../../etc/passwd"),
        make_media(81, 500, file_name="a\x00b/../../x.sh"),
        make_media(82, 500, file_name="/etc/shadow\x00.pdf"),
    ]
    for m in evil:
        p.submit(m)
    await wait_for(lambda: all(p.get(m.key)["state"] == "stored" for m in evil))  # type: ignore[index]
    expected = sorted(Path(m.key[:2]) / f"{m.key}.pdf" for m in evil)
    assert nginx_dav.files() == expected
    assert sorted(rig.tmp.rglob("passwd")) == [] and sorted(rig.tmp.rglob("*.sh")) == []
    for m in evil:
        assert p.get(m.key)["url"].endswith(f"/{m.key[:2]}/{m.key}.pdf")  # type: ignore[index]


async def test_a_failing_stored_callback_is_called_again_at_the_next_start(rig: Rig) -> None:
    seen: list[str] = []

    async def flaky(record: dict[str, Any]) -> None:
        seen.append(record["key"])
        raise RuntimeError("broker gone")

    m = make_media(83, 1000)
    p = rig.processor(on_stored=flaky)
    await p.start()
    p.submit(m)
    await wait_for(lambda: seen == [m.key])
    await p.stop()

    p2 = rig.processor()  # on_stored = rig.stored.append
    await p2.start()
    await wait_for(lambda: len(rig.stored) == 1)
    assert rig.stored[0]["key"] == m.key and rig.stored[0]["state"] == "stored"
    await p2.stop()
    p3 = rig.processor()
    await p3.start()
    # The unconfirmed callbacks are sent when start() returns, before any new item can be
    # stored: once a new one is, the old one had its chance to be sent again.
    after = make_media(84, 1000)
    p3.submit(after)
    await wait_for(lambda: any(e["key"] == after.key for e in rig.stored), what="next stored")
    assert [e["key"] for e in rig.stored] == [m.key, after.key]  # confirmed once, not sent again
    assert rig.downloads.calls == [(m.key, "acc1", frozenset()), (after.key, "acc1", frozenset())]
