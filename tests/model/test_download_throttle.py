"""Downloads against the emulator's download budget (tests/fakedc/budget.py), stock Telethon
underneath: the account's window shrinks on Telegram's FLOOD_PREMIUM_WAIT and grows back,
its pace settles under the budget, and an account throttled on getFile still serves reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from common.errors import FloodWait
from common.utils import parse_peer
from model.downloader import download_media
from model.pool import TeleClients
from model.teleclient import TeleClient
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

KIB, MIB = 1 << 10, 1 << 20
ACCOUNT, CHANNEL, DOC, SMALL = 1001, 2001, 6001, 7001
DOC_SIZE = 6 * MIB
PART = 256 * KIB
BUDGET = 3 * MIB  # bytes per second
pytestmark = pytest.mark.slow


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    world = World.from_dict({
        "users": [{"id": ACCOUNT, "first_name": "Acc", "phone": "15550001001"}],
        "chats": [{"id": CHANNEL, "kind": "broadcast", "title": "Files", "username": "files",
                   "members": {str(ACCOUNT): 0}}],
        "documents": [{"id": DOC, "kind": "file", "size": DOC_SIZE},
                      *({"id": SMALL + i, "kind": "file", "size": 40 * KIB} for i in range(8))],
        "messages": [*({"chat": CHANNEL, "text": f"post {i}"} for i in range(1, 6)),
                     {"chat": CHANNEL, "id": 10, "media": {"document": DOC}},
                     *({"chat": CHANNEL, "id": 11 + i, "media": {"document": SMALL + i}}
                       for i in range(8))],
        "download_budget": BUDGET,
        "download_burst": 1,
    })  # fmt: skip
    return TelegramRpc(world)


@pytest.fixture
async def account(telegram_session: Callable[..., Path]) -> AsyncIterator[TeleClients]:
    path = telegram_session(ACCOUNT, name="acc")
    pool = TeleClients.from_sessions_dir(
        path.parent, FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0, request_timeout=10
    )
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


async def the_document(tc: TeleClient) -> Any:
    return (await the_media(tc, [10]))[0]


async def the_media(tc: TeleClient, ids: list[int]) -> list[Any]:
    from service.parser import parse_messages

    _, msgs = await tc.get_messages(parse_peer("@files"), ids)
    _, media = parse_messages(msgs, tc.name)
    return media


async def download_for(tc: TeleClient, media: Any, folder: Path, seconds: float) -> list[int]:
    """Downloads the document again and again for `seconds`, waiting out flood waits as the
    media pipeline does (noted on the account, then resumed from the parts written); the
    window's limit after each part, -1 for each flood wait."""
    sizes: list[int] = []
    window = tc.media_connections.window(media.dc_id, 8)
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        done: set[int] = set()
        out = folder / f"f{n}"
        while True:
            try:
                await download_media(
                    tc, media, out, parts_in_flight=8, part_size=PART, done_parts=done,
                    on_part=lambda i, b: sizes.append(int(window.limit)),
                )  # fmt: skip
                break
            except FloodWait as e:
                tc.note_error(e)
                sizes.append(-1)  # a flood wait, in the sequence
                await asyncio.sleep(e.retry_after)
        out.unlink()
    return sizes


async def test_the_window_shrinks_on_a_flood_wait_and_grows_back(
    account: TeleClients, fake_telegram: Any, tmp_path: Path
) -> None:
    tc = next(iter(account))
    media = await the_document(tc)
    started = time.monotonic()
    sizes = await download_for(tc, media, tmp_path, seconds=8)
    elapsed = time.monotonic() - started
    connections = tc.media_connections
    # Telegram said wait (the account is not premium), and the window halved then.
    assert -1 in sizes and connections.pace.floods >= 1
    first = sizes.index(-1)
    before, after = max(sizes[:first]), sizes[first + 1]
    assert after <= max(1, before // 2)
    # And grew back while the pace, not Telegram, held the parts back.
    assert max(sizes[first + 1 :]) > after
    # The pace settled under the budget: few flood waits, not one every second.
    assert connections.pace.rate is not None and connections.pace.rate <= BUDGET
    assert sizes.count(-1) <= 3
    served = fake_telegram.dispatcher.count("upload.getFile", ACCOUNT)
    assert served > 0
    # Bytes moved stay within the budget plus its 1 s burst (and at least half of it).
    moved = connections.pace.bytes
    assert BUDGET * elapsed * 0.5 <= moved <= BUDGET * (elapsed + 1) + PART
    assert connections.describe()["flood_waits"] == connections.pace.floods


async def test_an_account_throttled_on_getfile_keeps_serving_history(
    account: TeleClients, tmp_path: Path
) -> None:
    tc = next(iter(account))
    media = await the_document(tc)
    # 6 MiB against a bucket of 3: Telegram says wait half-way.
    with pytest.raises(FloodWait) as info:
        await download_media(tc, media, tmp_path / "f", parts_in_flight=8, part_size=PART)
    assert isinstance(tc.note_error(info.value), FloodWait)  # as the media pipeline notes it
    assert tc.flood_waits == 1 and tc.media_connections.pace.waiting() > 0
    # The one account is still the pool's pick for reads while its downloads wait.
    (_, messages), served_by = await account.run(
        lambda t: t.get_history(parse_peer("@files"), limit=3), parse_peer("@files")
    )
    assert served_by is tc and len(messages) == 3
    assert tc.ready_in(parse_peer("@files")) == 0


async def test_a_flood_wait_met_between_small_files_does_not_pace_the_account(
    account: TeleClients, fake_telegram: Any, tmp_path: Path
) -> None:
    # The soak's case (issue 14): a channel's photos now and then, and a FLOOD_WAIT on getFile
    # that is no byte budget's. Paced from it, the account crawled at 64 KiB/s for good, each
    # small file charged a whole part, and its queue never drained.
    tc = next(iter(account))
    small = await the_media(tc, [11 + i for i in range(8)])
    for n, media in enumerate(small[:5]):
        await download_media(tc, media, tmp_path / f"a{n}", parts_in_flight=8, part_size=PART)
        await asyncio.sleep(0.5)  # the account idles between posts
    fake_telegram.dispatcher.flood_wait("upload.getFile", 1, user_id=ACCOUNT)
    with pytest.raises(FloodWait) as info:
        await download_media(tc, small[5], tmp_path / "b", parts_in_flight=8, part_size=PART)
    tc.note_error(info.value)
    pace = tc.media_connections.pace
    assert pace.floods == 1 and pace.rate is None  # the wait alone: no rate learnt
    await asyncio.sleep(info.value.retry_after)
    for n, media in enumerate(small[5:]):
        await download_media(tc, media, tmp_path / f"c{n}", parts_in_flight=8, part_size=PART)
        assert (tmp_path / f"c{n}").stat().st_size == 40 * KIB
