"""model/downloader.py: download_media and MediaConnections. Unit tests against a fake
Telethon client (part rules, concurrency, faults), then integration tests against the DC
emulator (tests/fakedc)."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telethon import errors
from telethon.tl import functions, types

from common.errors import AccountUnusable, FloodWait, TelegramError
from model import downloader as downloader_mod
from model.downloader import MIB, MediaConnections, download_media, part_count
from model.media import Media
from tests.fakedc import files
from tests.fixtures.wait import wait_for

FILE_KEY = 4242


def make_media(size: int, dc_id: int = 1, ref: bytes = b"ref-0", file_id: int = 9) -> Media:
    return Media(
        type="document",
        kind="document",
        file_id=file_id,
        access_hash=1,
        file_reference=ref,
        dc_id=dc_id,
        size=size,
        mime_type="application/pdf",
        account="acc1",
        peer_id=-1001,
        msg_id=5,
    )


class FakeSender:
    def __init__(self, dc_id: int) -> None:
        self.dc_id = dc_id
        self.connected = True

    def is_connected(self) -> bool:
        return self.connected

    async def disconnect(self) -> None:
        self.connected = False


class FakeClient:
    """What the downloader touches of a TelegramClient, serving one file from
    tests/fakedc/files.py with Telegram's part rules checked on every request; and, like a
    TeleClient, its `media_connections` (whose home-DC media connection is one more fake
    sender, counted in `opened`)."""

    def __init__(self, size: int, file_dc: int = 1, home_dc: int = 1, latency: float = 0.0) -> None:
        _fakes.append(self)
        self.size = size
        self.file_dc = file_dc
        self.session = SimpleNamespace(dc_id=home_dc)
        self._sender = FakeSender(home_dc)
        self.latency = latency
        self.reference = b"ref-0"
        self.requests: list[tuple[int, int, int]] = []  # (dc, offset, limit)
        self.in_flight = 0
        self.max_in_flight = 0
        self.borrowed: Counter[int] = Counter()
        self.returned: Counter[int] = Counter()
        self.senders: dict[int, FakeSender] = {}
        # Called before answering each request; may raise (a fault) or return None.
        self.fault: Any = None
        self.opened = 0
        self.media_connections = MediaConnections(self, open_sender=self._open_home)
        self._disconnected: asyncio.Future[None] | None = None

    @property
    def disconnected(self) -> asyncio.Future[None]:
        if self._disconnected is None:
            self._disconnected = asyncio.get_running_loop().create_future()
        return self._disconnected

    async def _open_home(self, client: Any) -> FakeSender:
        self.opened += 1
        return FakeSender(self.session.dc_id)

    async def _call(self, sender: FakeSender, request: Any) -> Any:
        assert isinstance(request, functions.upload.GetFileRequest)
        offset, limit = request.offset, request.limit
        assert offset % 4096 == 0 and limit % 4096 == 0 and MIB % limit == 0
        assert offset // MIB == (offset + limit - 1) // MIB, "a part crosses a 1 MB boundary"
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
            self.requests.append((sender.dc_id, offset, limit))
            if self.fault is not None:
                self.fault(request, sender)
            if request.location.file_reference != self.reference:
                raise errors.FileReferenceExpiredError(request)
            if sender.dc_id != self.file_dc:
                raise errors.FileMigrateError(request, self.file_dc)
            data = files.read(FILE_KEY, self.size, offset, limit)
            return types.upload.File(type=types.storage.FilePartial(), mtime=0, bytes=data)
        finally:
            self.in_flight -= 1

    async def _borrow_exported_sender(self, dc_id: int) -> FakeSender:
        self.borrowed[dc_id] += 1
        return self.senders.setdefault(dc_id, FakeSender(dc_id))

    async def _return_exported_sender(self, sender: FakeSender) -> None:
        self.returned[sender.dc_id] += 1


_fakes: list[FakeClient] = []


@pytest.fixture(autouse=True)
async def close_fake_connections() -> AsyncIterator[None]:
    """Closes the media connections of the FakeClients a test made, as TeleClient.stop does."""
    yield
    while _fakes:
        await _fakes.pop().media_connections.close()


def expected(size: int) -> bytes:
    return files.read(FILE_KEY, size)


async def test_byte_exact_with_parts_in_flight(tmp_path: Path) -> None:
    size = 5 * MIB + 12345
    client = FakeClient(size, latency=0.002)
    seen: list[tuple[int, int]] = []
    done: set[int] = set()
    out = tmp_path / "f.bin"
    await download_media(
        client, make_media(size), out, parts_in_flight=4, done_parts=done,
        on_part=lambda i, n: seen.append((i, n)),
    )  # fmt: skip
    assert out.read_bytes() == expected(size)
    # The account's window decides how many of the 4 go at once (a worker writing its part
    # meanwhile may leave fewer): several, never more.
    assert 2 <= client.max_in_flight <= 4
    assert sorted(seen) == [(i, MIB) for i in range(5)] + [(5, 12345)]
    assert done == set(range(6)) and len(client.requests) == 6
    assert oct(out.stat().st_mode & 0o777) == "0o600"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(1, 3 * MIB + 5000),
    part_size=st.sampled_from([4096, 8192, 64 * 1024, 128 * 1024, 512 * 1024, MIB]),
    window=st.integers(1, 12),
)
def test_any_size_part_size_and_window(
    tmp_path: Path, size: int, part_size: int, window: int
) -> None:
    client = FakeClient(size)
    _fakes.remove(client)  # its own event loop: closed here
    out = tmp_path / f"{size}-{part_size}-{window}.bin"

    async def download() -> None:
        try:
            await download_media(
                client, make_media(size), out, parts_in_flight=window, part_size=part_size
            )
        finally:
            await client.media_connections.close()

    asyncio.run(download())
    assert out.read_bytes() == expected(size)
    assert len(client.requests) == part_count(size, part_size)
    assert client.max_in_flight <= window


@pytest.mark.parametrize("part_size", [0, 1000, 4096 * 3, 2 * MIB])
async def test_bad_part_size_refused(tmp_path: Path, part_size: int) -> None:
    with pytest.raises(ValueError, match="part_size"):
        await download_media(FakeClient(10), make_media(10), tmp_path / "x", part_size=part_size)


async def test_other_dc_uses_exported_sender(tmp_path: Path) -> None:
    size = 3 * MIB
    client = FakeClient(size, file_dc=2, home_dc=1)
    await download_media(client, make_media(size, dc_id=2), tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == expected(size)
    assert {dc for dc, _, _ in client.requests} == {2}
    assert client.borrowed == Counter({2: 1}) and client.returned == Counter({2: 1})
    assert client.opened == 0  # no home media connection for a file elsewhere


async def test_file_migrate_switches_dc_once(tmp_path: Path) -> None:
    size = 4 * MIB
    client = FakeClient(size, file_dc=2, home_dc=1, latency=0.001)
    media = make_media(size, dc_id=1)
    await download_media(client, media, tmp_path / "f", parts_in_flight=4)
    assert (tmp_path / "f").read_bytes() == expected(size)
    assert media.dc_id == 2
    # The home media connection, then DC 2's exported sender; both given back.
    assert client.opened == 1 and client.media_connections.in_use == 0
    assert client.borrowed == Counter({2: 1}) and client.returned == Counter({2: 1})


async def test_main_connection_when_asked(tmp_path: Path) -> None:
    client = FakeClient(2 * MIB)
    await download_media(client, make_media(2 * MIB), tmp_path / "f", media_connection=False)
    assert (tmp_path / "f").read_bytes() == expected(2 * MIB)
    assert not client.borrowed and {dc for dc, _, _ in client.requests} == {1}
    assert client.opened == 0 and client.media_connections.in_use == 0


async def test_reference_expired_mid_file_refreshes_once(tmp_path: Path) -> None:
    size = 10 * MIB
    client = FakeClient(size, latency=0.001)
    refreshed = 0

    def expire_after_three(request: Any, sender: Any) -> None:
        if len(client.requests) == 3:
            client.reference = b"ref-1"

    async def refresh() -> bytes:
        nonlocal refreshed
        refreshed += 1
        await asyncio.sleep(0.01)
        return b"ref-1"

    client.fault = expire_after_three
    media = make_media(size)
    await download_media(
        client, media, tmp_path / "f", parts_in_flight=8, refresh_reference=refresh
    )
    assert (tmp_path / "f").read_bytes() == expected(size)
    assert refreshed == 1 and media.file_reference == b"ref-1"


async def test_reference_expired_without_refresh_fails(tmp_path: Path) -> None:
    client = FakeClient(MIB)
    client.reference = b"other"
    with pytest.raises(TelegramError) as info:
        await download_media(client, make_media(MIB), tmp_path / "f")
    assert info.value.rpc_error == "FILE_REFERENCE_EXPIRED"


async def test_refresh_that_gives_nothing_new_fails(tmp_path: Path) -> None:
    client = FakeClient(MIB)
    client.reference = b"other"

    async def same() -> bytes:
        return b"ref-0"

    with pytest.raises(TelegramError, match="FILE_REFERENCE_EXPIRED"):
        await download_media(client, make_media(MIB), tmp_path / "f", refresh_reference=same)


async def test_flood_wait_raises_and_resume_fetches_only_the_rest(tmp_path: Path) -> None:
    size = 8 * MIB + 77
    client = FakeClient(size)
    done: set[int] = set()

    def flood_on_sixth(request: Any, sender: Any) -> None:
        if len(client.requests) == 6:
            raise errors.FloodWaitError(request, 1)

    client.fault = flood_on_sixth
    out = tmp_path / "f"
    with pytest.raises(FloodWait) as info:
        await download_media(client, make_media(size), out, parts_in_flight=2, done_parts=done)
    assert info.value.retry_after == 1 and info.value.account == "acc1"
    assert 0 < len(done) < part_count(size)
    before = set(done)
    client.fault = None
    client.requests.clear()
    # Asked again while Telegram's wait runs: nothing is sent, the wait left is the answer.
    with pytest.raises(FloodWait) as info:
        await download_media(client, make_media(size), out, parts_in_flight=2, done_parts=done)
    assert info.value.retry_after == 1 and client.requests == []
    await wait_for(lambda: client.media_connections.pace.waiting() == 0, within=3)
    await download_media(client, make_media(size), out, parts_in_flight=2, done_parts=done)
    assert out.read_bytes() == expected(size)
    assert {offset // MIB for _, offset, _ in client.requests} == set(range(9)) - before


async def test_resume_overwrites_only_missing_parts(tmp_path: Path) -> None:
    size = 4 * MIB
    out = tmp_path / "f"
    data = bytearray(expected(size))
    data[MIB : 2 * MIB] = b"\x00" * MIB  # part 1 never arrived
    out.write_bytes(bytes(data) + b"trailing garbage")
    client = FakeClient(size)
    await download_media(client, make_media(size), out, done_parts={0, 2, 3})
    assert [offset for _, offset, _ in client.requests] == [MIB]
    assert out.read_bytes() == expected(size)


async def test_connection_error_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloader_mod, "_RETRY_DELAY", 0.0)
    size = 3 * MIB
    client = FakeClient(size)
    failures = iter([True, True, False])

    def flaky(request: Any, sender: Any) -> None:
        if request.offset == MIB and next(failures, False):
            raise ConnectionError("connection lost")

    client.fault = flaky
    await download_media(client, make_media(size), tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == expected(size)
    assert [o for _, o, _ in client.requests].count(MIB) == 3


async def test_connection_that_stays_down_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloader_mod, "_RETRY_DELAY", 0.0)
    client = FakeClient(MIB)

    def down(request: Any, sender: Any) -> None:
        raise ConnectionError("Cannot send requests while disconnected")

    client.fault = down
    with pytest.raises(ConnectionError):
        await download_media(client, make_media(MIB), tmp_path / "f")


async def test_server_errors_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloader_mod, "_RETRY_DELAY", 0.0)
    client = FakeClient(2 * MIB)
    failures = iter([True, True])

    def flaky(request: Any, sender: Any) -> None:
        if request.offset == 0 and next(failures, False):
            raise errors.ServerError(request, "INTERNAL_SERVER_ERROR", 500)

    client.fault = flaky
    await download_media(client, make_media(2 * MIB), tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == expected(2 * MIB)


@pytest.mark.parametrize(
    ("error", "expected_type", "name"),
    [
        (errors.AuthKeyUnregisteredError, AccountUnusable, "AUTH_KEY_UNREGISTERED"),
        (errors.UserDeactivatedBanError, AccountUnusable, "USER_DEACTIVATED_BAN"),
        (errors.FileIdInvalidError, TelegramError, "FILE_ID_INVALID"),
    ],
)
async def test_rpc_errors_become_domain_errors(
    tmp_path: Path, error: type[Exception], expected_type: type[Exception], name: str
) -> None:
    client = FakeClient(MIB)

    def fail(request: Any, sender: Any) -> None:
        raise error(request)

    client.fault = fail
    with pytest.raises(expected_type) as info:
        await download_media(client, make_media(MIB), tmp_path / "f")
    assert name in str(info.value)
    if isinstance(info.value, AccountUnusable):
        assert info.value.account == "acc1"


async def test_short_part_of_known_size_is_an_error(tmp_path: Path) -> None:
    client = FakeClient(MIB)  # serves 1 MiB, but we believe it is 3 MiB
    with pytest.raises(TelegramError, match="FILE_PART_SIZE"):
        await download_media(client, make_media(3 * MIB), tmp_path / "f")


@pytest.mark.parametrize("size", [0, 1, 4096, MIB, 2 * MIB + 3])
async def test_unknown_size_reads_until_short_part(tmp_path: Path, size: int) -> None:
    client = FakeClient(size)
    media = make_media(size)
    media.size = 0
    out = tmp_path / "f"
    out.write_bytes(b"x" * (3 * MIB))  # longer leftovers are cut
    await download_media(client, media, out, parts_in_flight=3, part_size=512 * 1024)
    assert out.read_bytes() == expected(size)


async def test_cancel_waits_for_writes_and_closes_file(tmp_path: Path) -> None:
    size = 20 * MIB
    client = FakeClient(size, latency=0.001)
    fds_before = len(os.listdir("/proc/self/fd"))
    parts = 0
    two_parts = asyncio.Event()

    def count(index: int, nbytes: int) -> None:
        nonlocal parts
        parts += 1
        if parts == 2:
            two_parts.set()

    task = asyncio.create_task(
        download_media(client, make_media(size), tmp_path / "f", parts_in_flight=4, on_part=count)
    )
    await asyncio.wait_for(two_parts.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert parts < part_count(size)


class TrackedPart(bytearray):
    """A part's bytes that a test can watch being freed (a weak reference)."""


async def test_parts_in_memory_stay_within_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 workers, a window held at 2 (a trial of 4 now and then): a worker waiting for its
    # next place must not keep the part it wrote (it did: 1 MB a worker, issue 14).
    monkeypatch.setattr("model.partwindow.GAIN", 1e9)  # every trial fails: the window holds
    size = 24 * MIB
    client = FakeClient(size, latency=0.001)
    window = client.media_connections.window(1, 16)
    window.limit = 2.0
    parts: list[weakref.ref[TrackedPart]] = []
    held: list[tuple[int, int]] = []  # (parts alive, the window's size) at each answer
    answer = client._call

    async def tracked(sender: FakeSender, request: Any) -> Any:
        result = await answer(sender, request)
        result.bytes = part = TrackedPart(result.bytes)
        parts.append(weakref.ref(part))
        gc.collect()  # only what is still referenced counts
        held.append((sum(ref() is not None for ref in parts), window.size))
        return result

    monkeypatch.setattr(client, "_call", tracked)
    await download_media(client, make_media(size), tmp_path / "f", parts_in_flight=16)
    assert (tmp_path / "f").read_bytes() == expected(size)
    # No more parts alive than the largest window (4): without the fix, 12.
    assert len(held) == 24 and max(n for n, _ in held) <= max(w for _, w in held) <= 4


# -- integration: the DC emulator -----------------------------------------------------------

ACCOUNT = 1001
CHANNEL = 2001
DOC_HOME = 6001  # on DC 1, the account's home
DOC_DC2 = 6002  # on DC 2: Telethon's exported-auth sender
HOME_SIZE = 12 * MIB + 321
DC2_SIZE = 6 * MIB + 5


@pytest.fixture
def fakedc_dispatcher() -> Any:
    from tests.fakedc.rpc import TelegramRpc
    from tests.fakedc.world import World

    world = World.from_dict(
        {
            "users": [{"id": ACCOUNT, "first_name": "A", "phone": "15550001"}],
            "chats": [
                {"id": CHANNEL, "kind": "broadcast", "title": "Files", "username": "files",
                 "members": {str(ACCOUNT): 0}}
            ],
            "documents": [
                {"id": DOC_HOME, "kind": "file", "size": HOME_SIZE, "dc_id": 1},
                {"id": DOC_DC2, "kind": "video", "size": DC2_SIZE, "dc_id": 2, "duration": 5},
            ],
            "messages": [
                {"chat": CHANNEL, "id": 1, "media": {"document": DOC_HOME}},
                {"chat": CHANNEL, "id": 2, "media": {"document": DOC_DC2}},
            ],
        }
    )  # fmt: skip
    return TelegramRpc(world)


@pytest.fixture
async def make_client(telegram_session: Any) -> AsyncIterator[Any]:
    """Factory of connected TelegramClients of ACCOUNT (one session file per test), each
    given what download_media takes of a TeleClient: its `media_connections`."""
    from telethon import TelegramClient

    from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

    path = telegram_session(ACCOUNT, dc_id=1)
    # Telethon caches help.getConfig (the DCs' addresses) on the class, process-wide: a
    # cluster of an earlier test would leave its DC 2 port there.
    TelegramClient._config = None
    clients: list[TelegramClient] = []

    async def make() -> TelegramClient:
        client = TelegramClient(str(path), FAKEDC_API_ID, FAKEDC_API_HASH, receive_updates=False)
        # As the pool sets it: FLOOD_WAIT comes back to us instead of a silent sleep.
        client.flood_sleep_threshold = 0
        await client.connect()
        assert await client.is_user_authorized()
        client.media_connections = MediaConnections(client)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.media_connections.close()
        if client.is_connected():
            await client.disconnect()


async def fetch_media(client: Any, msg_id: int) -> Media:
    from service.parser import parse_messages

    msgs = await client.get_messages("files", ids=[msg_id])
    _, media = parse_messages(msgs, "acc1")
    assert len(media) == 1
    return media[0]


def emulated_bytes(doc_id: int, size: int) -> bytes:
    from tests.fakedc.render import document_file_key

    return files.read(document_file_key(doc_id), size)


async def test_emulator_home_dc_byte_exact(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    home = fake_telegram.dcs[1]
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        assert (media.dc_id, media.size) == (1, HOME_SIZE)
        assert len(home.connections) == 1
        await download_media(client, media, tmp_path / "home.bin", parts_in_flight=8)
        # The parts came over a media connection of their own (intermediate transport: no
        # CRC32 per packet), kept for the next file.
        assert len(home.connections) == 2
        assert sorted(c.codec.name for c in home.connections) == ["full", "intermediate"]
        opened = home.stats["connection"]
        await download_media(client, media, tmp_path / "again.bin", parts_in_flight=8)
        assert home.stats["connection"] == opened
    finally:
        await client.disconnect()
    assert (tmp_path / "home.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)
    assert (tmp_path / "again.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)
    assert fake_telegram.dispatcher.count("upload.getFile") == 2 * part_count(HOME_SIZE)
    assert fake_telegram.dispatcher.count("auth.exportAuthorization") == 0
    # client.disconnect() closes the media connection too.
    await wait_for(lambda: not home.connections, what="both connections closed")


async def test_emulator_idle_media_connection_closes_and_reopens(
    make_client: Any, fake_telegram: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = fake_telegram.dcs[1]
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        # Idle for a minute, as soon as the download gave it back.
        client.media_connections.idle_close = 0.0
        await download_media(client, media, tmp_path / "a.bin")
        await wait_for(lambda: len(home.connections) == 1, what="the idle one closed")
        client.media_connections.idle_close = 60.0
        await download_media(client, media, tmp_path / "b.bin")
        assert len(home.connections) == 2
    finally:
        await client.disconnect()
    assert (tmp_path / "b.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)


async def test_emulator_media_connections_close_closes_it_now(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    home = fake_telegram.dcs[1]
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        await download_media(client, media, tmp_path / "a.bin")
        assert len(home.connections) == 2
        await client.media_connections.close()  # what TeleClient.stop calls
        await wait_for(lambda: len(home.connections) == 1, what="the media connection closed")
        assert client.is_connected()
        await client.media_connections.close()  # none left: harmless
    finally:
        await client.disconnect()


@pytest.mark.parametrize("dc2", ["slow", "down"])
async def test_emulator_home_download_does_not_wait_for_another_dc(
    make_client: Any, fake_telegram: Any, tmp_path: Path, dc2: str
) -> None:
    """Telethon holds its borrow lock while it connects to another DC and imports the
    authorization there; a home-DC download meanwhile goes over its own connection."""
    client = await make_client()
    foreign: asyncio.Task[None] | None = None
    try:
        home_media, dc2_media = await fetch_media(client, 1), await fetch_media(client, 2)
        if dc2 == "slow":
            fake_telegram.dispatcher.slow("auth.importAuthorization", 3.0)
        else:
            await fake_telegram.dcs[2].stop()  # Telethon retries the connect for ~5 s
        foreign = asyncio.create_task(download_media(client, dc2_media, tmp_path / "dc2.bin"))
        await wait_for(client._borrow_sender_lock.locked, 5, what="the DC 2 borrow started")
        await asyncio.wait_for(download_media(client, home_media, tmp_path / "home.bin"), 10)
        # Done while Telethon still connects to DC 2.
        assert client._borrow_sender_lock.locked() and not foreign.done()
        assert (tmp_path / "home.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)
        if dc2 == "slow":
            await asyncio.wait_for(foreign, 20)
            assert (tmp_path / "dc2.bin").read_bytes() == emulated_bytes(DOC_DC2, DC2_SIZE)
        else:
            with pytest.raises(ConnectionError):
                await asyncio.wait_for(foreign, 20)
    finally:
        if foreign is not None and not foreign.done():
            foreign.cancel()
            await asyncio.gather(foreign, return_exceptions=True)
        await client.disconnect()


async def test_emulator_banned_account_is_unusable_and_leaks_no_connection(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    home = fake_telegram.dcs[1]
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        fake_telegram.dispatcher.deactivated_ban(ACCOUNT)
        with pytest.raises(AccountUnusable) as info:
            await download_media(client, media, tmp_path / "f.bin")
        assert (info.value.account, info.value.state) == ("acc1", "banned")
        await wait_for(lambda: len(home.connections) == 1, what="only the main connection")
    finally:
        await client.disconnect()


async def test_emulator_teleclient_owns_and_closes_its_media_connections(
    telegram_session: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    """A TeleClient is what download_media takes: its media connection is opened by the
    download and closed by its stop()."""
    from model.teleclient import TeleClient
    from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

    home = fake_telegram.dcs[1]
    path = telegram_session(ACCOUNT, dc_id=1)
    tele = TeleClient(path, FAKEDC_API_ID, FAKEDC_API_HASH, receive_updates=False)
    await tele.start()
    try:
        media = await fetch_media(tele.client, 1)
        await download_media(tele, media, tmp_path / "f.bin")
        assert len(home.connections) == 2 and tele.media_connections.in_use == 0
        sender = await tele.media_connections.borrow(1)  # the same, kept open
        await tele.media_connections.give_back(sender)
        assert len(home.connections) == 2 and sender.is_connected()
    finally:
        await tele.stop()
    assert not sender.is_connected()
    await wait_for(lambda: not home.connections, what="both connections closed")
    assert (tmp_path / "f.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)


async def test_emulator_home_dc_on_main_connection(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        await download_media(client, media, tmp_path / "f.bin", media_connection=False)
        assert len(fake_telegram.dcs[1].connections) == 1
    finally:
        await client.disconnect()
    assert (tmp_path / "f.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)


async def test_media_download_delegates_to_download_media(tmp_path: Path) -> None:
    size = 2 * MIB + 7
    client = FakeClient(size)
    media = make_media(size)
    done: set[int] = set()
    await media.download(tmp_path / "f.bin", client=client, parts_in_flight=3, done_parts=done)
    assert (tmp_path / "f.bin").read_bytes() == expected(size)
    assert done == {0, 1, 2}
    # parts_in_flight bounds the account's window (which starts above 3: all 3 at once).
    assert client.max_in_flight == 3
    assert client.media_connections.describe()["dcs"][1]["ceiling"] == 3


async def test_emulator_media_download_streams_into_a_file(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    client = await make_client()
    try:
        media = await fetch_media(client, 2)  # on DC 2: through the exported sender
        await media.download(tmp_path / "dc2.bin", client=client)
    finally:
        await client.disconnect()
    assert (tmp_path / "dc2.bin").read_bytes() == emulated_bytes(DOC_DC2, DC2_SIZE)
    assert fake_telegram.dispatcher.count("upload.getFile") == part_count(DC2_SIZE)


async def test_emulator_other_dc_byte_exact(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    client = await make_client()
    try:
        media = await fetch_media(client, 2)
        assert (media.dc_id, media.type) == (2, "video")
        await download_media(client, media, tmp_path / "dc2.bin")
        # A second file on the same DC reuses the exported sender: no new export.
        await download_media(client, media, tmp_path / "dc2-again.bin")
    finally:
        await client.disconnect()
    assert (tmp_path / "dc2.bin").read_bytes() == emulated_bytes(DOC_DC2, DC2_SIZE)
    assert (tmp_path / "dc2-again.bin").read_bytes() == emulated_bytes(DOC_DC2, DC2_SIZE)
    assert fake_telegram.dispatcher.count("auth.exportAuthorization") == 1
    assert fake_telegram.dispatcher.count("auth.importAuthorization") == 1


async def test_emulator_reference_expired_mid_file(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    from service.parser import fresh_reference

    rpc = fake_telegram.dispatcher
    client = await make_client()
    refreshes = 0
    try:
        media = await fetch_media(client, 1)
        first_reference = media.file_reference

        def expire_after_three(index: int, nbytes: int) -> None:
            if len(done) == 3:
                rpc.expire_file_references()

        async def refresh() -> bytes:
            nonlocal refreshes
            refreshes += 1
            msg = await client.get_messages("files", ids=media.msg_id)
            ref = fresh_reference(msg, media)
            assert ref is not None
            return ref

        done: set[int] = set()
        await download_media(
            client, media, tmp_path / "f.bin", parts_in_flight=4, done_parts=done,
            on_part=expire_after_three, refresh_reference=refresh,
        )  # fmt: skip
    finally:
        await client.disconnect()
    assert refreshes == 1 and media.file_reference != first_reference
    assert (tmp_path / "f.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)


async def test_emulator_connection_dropped_mid_file(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    rpc = fake_telegram.dispatcher
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        rpc.reset_counts()
        rpc.drop_connection_in_file(file_id=DOC_HOME, nth=5)
        await asyncio.wait_for(
            download_media(client, media, tmp_path / "f.bin", parts_in_flight=4), 30
        )
    finally:
        await client.disconnect()
    assert (tmp_path / "f.bin").read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)
    # The dropped request (and whatever was in flight with it) was asked again.
    assert rpc.count("upload.getFile") > part_count(HOME_SIZE)


async def test_emulator_flood_wait_then_resume_from_done_parts(
    make_client: Any, fake_telegram: Any, tmp_path: Path
) -> None:
    rpc = fake_telegram.dispatcher
    out = tmp_path / "f.bin"
    done: set[int] = set()
    written: list[int] = []
    client = await make_client()
    try:
        media = await fetch_media(client, 1)
        rpc.reset_counts()
        rpc.flood_wait("upload.getFile", 300, every=6)
        with pytest.raises(FloodWait) as info:
            await download_media(
                client, media, out, parts_in_flight=2, done_parts=done,
                on_part=lambda i, n: written.append(i),
            )  # fmt: skip
        assert info.value.retry_after == 300
    finally:
        await client.disconnect()
    assert sorted(written) == sorted(done) and 0 < len(done) < part_count(HOME_SIZE)
    rpc.clear_faults()
    rpc.reset_counts()
    # As after a restart: a new client on the same session, the persisted parts.
    client = await make_client()
    try:
        media = Media.from_json(media.to_json())
        await download_media(client, media, out, parts_in_flight=4, done_parts=set(done))
    finally:
        await client.disconnect()
    assert out.read_bytes() == emulated_bytes(DOC_HOME, HOME_SIZE)
    assert rpc.count("upload.getFile") == part_count(HOME_SIZE) - len(done)
