"""service/mediadownload.py: what a failed download means: a dropped connection is retried
from the parts written, a banned or unknown account fails its files with the reason (or
hands them on through the rebind hook), a reconnecting account is waited for, a bug fails
the item and keeps the worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.errors import AccountUnusable, TelegramError, TgcError
from model.media import Media
from tests.fixtures.wait import wait_for
from tests.service.media_rig import (
    PART,
    Rig,
    content,
    make_media,
    running_rig,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


async def test_dropped_connection_is_retried_from_the_parts_written(rig: Rig) -> None:
    m = make_media(72, PART * 5)
    rig.downloads.faults[m.key] = [ConnectionError("reset"), TimeoutError()]
    rig.downloads.fault_after_parts = 2
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert [len(c[2]) for c in rig.downloads.calls] == [0, 2, 4]
    assert all(n == 1 for n in rig.downloads.fetched.values())
    assert (rig.local / m.key[:2] / f"{m.key}.pdf").read_bytes() == content(m)


async def test_repeated_connection_errors_fail_the_item(rig: Rig) -> None:
    m = make_media(73, 1000)
    rig.downloads.faults[m.key] = [ConnectionError(f"down {i}") for i in range(3)]
    p = rig.processor(max_download_attempts=3)
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(m.key)["error"] == "ConnectionError: down 2"  # type: ignore[index]
    assert rig.clients["acc1"].pending_downloads == 0


async def test_banned_account_fails_with_the_reason(rig: Rig) -> None:
    m = make_media(74, 1000)
    banned = AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")
    rig.downloads.faults[m.key] = [banned]
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert "USER_DEACTIVATED_BAN" in p.get(m.key)["error"]  # type: ignore[index]
    await wait_for(lambda: rig.spool_files() == [])
    # The downloader's error went to its account, which keeps the state (TeleClient).
    assert rig.clients["acc1"].noted == [banned]


async def test_banned_account_is_replaced_through_the_rebind_hook(rig: Rig) -> None:
    m = make_media(75, PART * 2)
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "banned", "USER_DEACTIVATED_BAN")]
    asked: list[tuple[str, str]] = []

    async def rebind(media: Media, error: TgcError) -> Media | None:
        asked.append((media.account, error.code))
        return make_media(media.file_id, media.size, account="acc2", msg_id=99)

    p = rig.processor(rebind=rebind)
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert asked == [("acc1", "NO_ACCOUNT_AVAILABLE")]
    assert [c[1] for c in rig.downloads.calls] == ["acc1", "acc2"]
    assert rig.stored[0]["account"] == "acc2" and rig.stored[0]["msg_id"] == 99


async def test_unknown_or_banned_account_in_the_pool(rig: Rig) -> None:
    rig.clients["acc2"].state = "banned"
    p = rig.processor()
    await p.start()
    ghost = make_media(76, 100, account="nobody")
    banned = make_media(77, 100, account="acc2")
    p.submit(ghost)
    p.submit(banned)
    await wait_for(lambda: p.get(ghost.key)["state"] == p.get(banned.key)["state"] == "failed")  # type: ignore[index]
    assert "nobody" in p.get(ghost.key)["error"]  # type: ignore[index]
    assert "banned" in p.get(banned.key)["error"]  # type: ignore[index]
    assert rig.downloads.calls == []


async def test_a_disconnected_account_is_waited_for_not_failed(rig: Rig) -> None:
    m = make_media(85, PART * 2)
    rig.downloads.faults[m.key] = [AccountUnusable("acc1", "disconnected", "connection lost")]
    p = rig.processor()
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "stored")  # type: ignore[index]
    assert len(rig.downloads.calls) == 2


async def test_a_bug_in_the_downloader_fails_the_item_and_keeps_the_worker(rig: Rig) -> None:
    m, after = make_media(95, 1000), make_media(96, 1000)
    rig.downloads.faults[m.key] = [ZeroDivisionError("oops")]
    p = rig.processor(download_workers=1)
    await p.start()
    p.submit(m)
    await wait_for(lambda: p.get(m.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(m.key)["error"] == "ZeroDivisionError: oops"  # type: ignore[index]
    p.submit(after)
    await wait_for(lambda: p.get(after.key)["state"] == "stored")  # type: ignore[index]


async def test_telegram_not_answering_is_retried_a_refusal_fails_with_its_name(rig: Rig) -> None:
    # What model/ makes of Telegram's errors: TeleClient's TIMEOUT when Telegram did not
    # answer (tried again from the parts written), any other refusal named by its RPC error.
    slow, refused = make_media(86, PART * 3), make_media(87, PART * 2)
    rig.downloads.faults[slow.key] = [TelegramError("TIMEOUT", "Telegram did not answer in 10 s")]
    rig.downloads.fault_after_parts = 1
    rig.downloads.faults[refused.key] = [TelegramError("FILE_ID_INVALID")]
    p = rig.processor()
    await p.start()
    p.submit(slow)
    p.submit(refused)
    await wait_for(lambda: p.get(slow.key)["state"] == "stored")  # type: ignore[index]
    await wait_for(lambda: p.get(refused.key)["state"] == "failed")  # type: ignore[index]
    assert p.get(refused.key)["error"] == "Telegram answered FILE_ID_INVALID"  # type: ignore[index]
    assert [len(c[2]) for c in rig.downloads.calls if c[0] == slow.key] == [0, 1]
    assert [c[0] for c in rig.downloads.calls].count(refused.key) == 1
    assert rig.clients["acc1"].pending_downloads == 0
