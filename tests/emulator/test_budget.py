"""The emulator's download budget (tests/fakedc/budget.py) through a stock Telethon client:
FLOOD_PREMIUM_WAIT_X for an account without Premium, FLOOD_WAIT_X for one with it, X
sized to the overdraft, and the bytes served never above the budget plus the burst."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient, errors
from telethon.tl import functions as F
from telethon.tl import types as T

from tests.fakedc.__main__ import _parser
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import World
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

KIB, MIB = 1 << 10, 1 << 20
PLAIN, PREMIUM = 1001, 1002
CHANNEL, DOC = 2001, 6001
DOC_SIZE = 8 * MIB


class Clock:
    """The emulator's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world() -> World:
    world = World.from_dict({
        "users": [
            {"id": PLAIN, "first_name": "Plain", "phone": "15550001"},
            {"id": PREMIUM, "first_name": "Gold", "phone": "15550002", "premium": True},
        ],
        "chats": [{"id": CHANNEL, "kind": "broadcast", "title": "Files", "username": "files",
                   "members": {str(PLAIN): 0, str(PREMIUM): 0}}],
        "documents": [{"id": DOC, "kind": "file", "size": DOC_SIZE}],
        "messages": [{"chat": CHANNEL, "id": 1, "media": {"document": DOC}}],
        "download_budget": 100 * KIB,
        "download_burst": 2,
    })  # fmt: skip
    return world


@pytest.fixture
def fakedc_dispatcher(world: World, clock: Clock) -> TelegramRpc:
    return TelegramRpc(world, clock=clock)


@pytest.fixture
async def connect(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> AsyncIterator[Callable[[int], Any]]:
    made: list[TelegramClient] = []
    TelegramClient._config = None  # Telethon caches the DC addresses on the class

    async def make(user_id: int) -> TelegramClient:
        path = fake_telegram.make_session(tmp_path / f"s{user_id}", user_id)
        client = TelegramClient(str(path), FAKEDC_API_ID, FAKEDC_API_HASH, flood_sleep_threshold=0)
        made.append(client)
        await client.connect()
        return client

    yield make
    for client in made:
        await client.disconnect()


async def location(client: TelegramClient) -> T.InputDocumentFileLocation:
    msg = await client.get_messages("files", ids=1)
    doc = msg.media.document
    return T.InputDocumentFileLocation(doc.id, doc.access_hash, doc.file_reference, "")


def forget_waits(client: TelegramClient) -> None:
    """Telethon refuses a request again by itself, on the real clock, while a wait over 3 s
    it met runs (TelegramClient._flood_waited_requests): the emulator's clock moved instead."""
    client._flood_waited_requests.clear()


def get_file(loc: Any, part: int, limit: int) -> F.upload.GetFileRequest:
    return F.upload.GetFileRequest(location=loc, offset=part * limit, limit=limit)


async def test_non_premium_gets_flood_premium_wait_sized_to_the_overdraft(
    connect: Any, clock: Clock, fakedc_dispatcher: TelegramRpc
) -> None:
    client = await connect(PLAIN)
    loc = await location(client)
    # The bucket holds max(100 KiB/s × 2 s, one part): the first 1 MiB part empties it.
    assert len((await client(get_file(loc, 0, MIB))).bytes) == MIB
    with pytest.raises(errors.FloodPremiumWaitError) as caught:
        await client(get_file(loc, 1, MIB))
    assert caught.value.seconds == 11  # 1 MiB ÷ 100 KiB/s = 10.24 s, rounded up
    forget_waits(client)
    clock.now += 5  # 500 KiB back: 524 KiB short, 5.24 s
    with pytest.raises(errors.FloodPremiumWaitError) as caught:
        await client(get_file(loc, 1, MIB))
    assert caught.value.seconds == 6
    forget_waits(client)
    clock.now += 6
    assert len((await client(get_file(loc, 1, MIB))).bytes) == MIB
    assert fakedc_dispatcher.download_budget.refused == {PLAIN: 2}


async def test_premium_gets_plain_flood_wait_and_a_bucket_of_its_own(
    connect: Any, clock: Clock
) -> None:
    plain, premium = await connect(PLAIN), await connect(PREMIUM)
    plain_loc, premium_loc = await location(plain), await location(premium)
    await plain(get_file(plain_loc, 0, MIB))
    with pytest.raises(errors.FloodPremiumWaitError):
        await plain(get_file(plain_loc, 1, MIB))
    # The other account's bucket is still full: the budget is per account.
    assert len((await premium(get_file(premium_loc, 0, MIB))).bytes) == MIB
    with pytest.raises(errors.FloodWaitError) as caught:
        await premium(get_file(premium_loc, 1, 512 * KIB))
    assert caught.value.seconds == 6  # 512 KiB ÷ 100 KiB/s = 5.12 s
    forget_waits(premium)
    # Small parts and reads go on: only getFile bytes are counted, and a part that fits
    # the bucket is served.
    assert (await premium.get_messages("files", ids=1)).id == 1
    clock.now += 1
    assert len((await premium(get_file(premium_loc, 0, 64 * KIB))).bytes) == 64 * KIB


async def test_the_budget_holds_against_a_client_asking_all_the_time(
    connect: Any, clock: Clock, world: World
) -> None:
    world.download_budget, world.download_burst = 1 * MIB, 2  # a 2 MiB bucket
    client = await connect(PREMIUM)
    loc = await location(client)
    served = refused = 0
    part, index = 256 * KIB, 0
    for _ in range(100):  # 10 s of emulated time, 4 asks every 0.1 s (10 MiB/s asked)
        for _ in range(4):
            try:
                result = await client(get_file(loc, index % (DOC_SIZE // part), part))
            except errors.FloodWaitError as e:
                refused += 1
                assert 1 <= e.seconds <= 1  # never more than a part short: X is 1 s
                continue
            served += len(result.bytes)
            index += 1
        clock.now += 0.1
    # 10 s of budget plus the burst the bucket started with, within a part.
    assert 12 * MIB - part <= served <= 12 * MIB
    assert refused == 400 - served // part


def test_serve_takes_a_download_budget_in_mb_per_second() -> None:
    args = _parser().parse_args(["serve", "--port", "1", "--download-budget", "20"])
    assert args.download_budget == 20.0
    assert World.from_dict({"download_budget": 5}).download_budget == 5.0
    with pytest.raises(ValueError, match="download_budgt"):
        World.from_dict({"download_budgt": 5})
