"""The media pipeline through the real server: start.py as its own process (through
tests/fakedc/launch.py, so it can handshake with the emulator's DC 2), `storage.url` set to
nginx WebDAV, the emulator (two DCs) in this process, requests signed as a client would.

What is checked, from the outside only (the API, the emulator's record of what it answered,
nginx's files and access log, the server's SQLite file after a kill):
- a history page with photos (DC 1 and DC 2), a video, documents, an album and a link
  preview's photo ends `stored`, each object on nginx byte-exact to the emulator's bytes;
- a file in 10 messages costs the getFile parts of one download, and one PUT;
- the server killed with SIGKILL mid-download and started again: every item ends stored,
  each with one object and one successful PUT (two only for an item whose upload the kill
  cut short: nginx may have taken it before the server could record it), and no part that
  the killed server had recorded as written is asked again;
- the faults, each mid-file on the 20 MB video (41 parts, slowed by the GetFileLog wrapper):
  FILE_REFERENCE_EXPIRED (the message fetched again by the account the file is bound to),
  FLOOD_WAIT on that account's getFile (/api/v1/accounts shows it; nothing asked of it
  until the wait is over) and a connection dropped by the emulator: each file ends stored
  byte-exact and no part the server had recorded as written is asked again;
- nginx stopped: the items stay `uploading` over several failed attempts (the server's
  log), nothing fails, and once nginx is back each is stored with one PUT.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from telethon.tl import functions, types

from common.utils import media_key
from model.downloader import part_count
from service.apiclient import ApiClient
from tests.fakedc import demo_world as dw
from tests.fakedc import files, render
from tests.fakedc.api import DropConnection, RpcError
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import World
from tests.fixtures.nginx import Nginx
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.server_process import ServerProcess
from tests.fixtures.wait import wait_for

PART_SIZE = 512 * 1024
# A 1.3 MB document posted 10 times in the media channel: one key, three parts.
REPOST_DOC = 6101
REPOST_SIZE = 1_300_000
REPOSTS = range(16, 26)
# A part of the first life asked again must have been answered this recently before the kill.
RECENT = 3.0
PAGE = "/api/v1/messages?peer=@tgc_media&limit=40"


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    data = dw.demo_dict()
    data["documents"].append(
        {"id": REPOST_DOC, "kind": "file", "size": REPOST_SIZE, "file_name": "again.pdf",
         "mime_type": "application/pdf"}
    )  # fmt: skip
    data["messages"] += [
        {"chat": dw.MEDIA, "id": i, "text": f"again {i}", "media": {"document": REPOST_DOC}}
        for i in REPOSTS
    ]
    return TelegramRpc(World.from_dict(data))


@dataclass
class Part:
    key: str
    offset: int
    at: float  # time.monotonic() when the emulator answered it


@dataclass
class Ask:
    key: str
    offset: int
    at: float  # time.monotonic() when the request reached the emulator
    user_id: int | None
    outcome: str = ""  # "bytes", the error's name (FLOOD_WAIT_3, ...) or "dropped"
    done: float = 0.0  # time.monotonic() when it was answered (after `delay`)


@dataclass
class GetFileLog:
    """Wraps the emulator's dispatcher and notes every upload.getFile it answered with
    bytes: the media key (computed from the location, as the server computes it), the
    offset, and the emulator's file (its deterministic bytes). `delay[key]` adds seconds
    before the answers of one file. `asked` holds every upload.getFile that arrived, with
    the account that sent it and what it got."""

    rpc: TelegramRpc
    parts: list[Part] = field(default_factory=list)
    source: dict[str, tuple[int, int]] = field(default_factory=dict)  # key → (file key, size)
    delay: dict[str, float] = field(default_factory=dict)
    asked: list[Ask] = field(default_factory=list)

    async def __call__(self, ctx: Any, request: Any) -> Any:
        if not isinstance(request, functions.upload.GetFileRequest):
            return await self.rpc(ctx, request)
        key, file_key, size = self._file(request.location)
        ask = Ask(key, request.offset, time.monotonic(), ctx.user_id)
        self.asked.append(ask)
        if self.delay.get(key):
            await asyncio.sleep(self.delay[key])
        try:
            result = await self.rpc(ctx, request)
        except RpcError as e:
            ask.outcome = e.message
            raise
        except DropConnection:
            ask.outcome = "dropped"
            raise
        finally:
            ask.done = time.monotonic()
        ask.outcome = "bytes"
        if isinstance(result, types.upload.File):
            self.source[key] = (file_key, size)
            self.parts.append(Part(key, request.offset, time.monotonic()))
        return result

    def _file(self, loc: Any) -> tuple[str, int, int]:
        """(media key, the emulator's file key, size) of a location."""
        if isinstance(loc, types.InputDocumentFileLocation):
            doc = self.rpc.world.documents[loc.id]
            return media_key("document", loc.id, ""), render.document_file_key(loc.id), doc.size
        spec = self.rpc.world.photos[loc.id].size(loc.thumb_size)
        assert spec is not None
        return (
            media_key("photo", loc.id, loc.thumb_size),
            render.photo_file_key(loc.id, loc.thumb_size),
            spec.size,
        )

    def offsets(self, key: str, since: int = 0) -> list[int]:
        return [p.offset for p in self.parts[since:] if p.key == key]


@pytest.fixture
def getfile_log(fake_telegram: FakeTelegram) -> GetFileLog:
    rpc = fake_telegram.dispatcher
    assert isinstance(rpc, TelegramRpc)
    log = GetFileLog(rpc)
    fake_telegram.dispatcher = log  # the cluster reads it per request
    return log


@pytest.fixture
def config(tmp_path: Path, telegram_session: Callable[..., Path], nginx_dav: Nginx) -> Path:
    for user_id in (dw.ACCOUNT_A, dw.ACCOUNT_B):
        telegram_session(user_id, name=f"acc{user_id}")
    props = {
        "media.part_size": "512K",
        "media.parts_in_flight": "2",
        "media.per_account_downloads": "4",
        "storage.url": nginx_dav.base_url,
        "storage.timeout": "10",
        "storage.retry_max_delay": "1",
    }
    return write_config(tmp_path, props)


@pytest.fixture
async def server(config: Path) -> Any:
    s = ServerProcess(config)
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.returncode is None:
            s.proc.kill()
            await s.proc.wait()


async def page_media(api: ApiClient) -> dict[int, dict[str, Any]]:
    """The media descriptors of one history page of the media channel, by message id."""
    answer = await api.request("GET", PAGE)
    assert answer.ok, answer
    return {
        m["id"]: m["media"] for m in answer.data["messages"] if (m.get("media") or {}).get("key")
    }


async def records(api: ApiClient, keys: set[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        answer = await api.request("GET", f"/api/v1/media/{key}")
        assert answer.ok, answer
        out[key] = answer.data
    return out


async def all_stored(
    api: ApiClient, keys: set[str], limit: float = 20.0
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    async def done() -> bool:
        nonlocal found
        found = await records(api, keys)
        failed = {k: r.get("error") for k, r in found.items() if r["state"] == "failed"}
        assert not failed, failed
        return all(r["state"] == "stored" for r in found.values())

    try:
        await wait_for(done, within=limit, what="every item stored", step=0.05)
    except AssertionError:
        raise AssertionError({k: r["state"] for k, r in found.items()}) from None
    return found


def check_on_nginx(nginx: Nginx, stored: dict[str, dict[str, Any]], log: GetFileLog) -> None:
    """Every record's URL is on nginx, byte-exact; nginx holds nothing else."""
    paths = set()
    for key, record in stored.items():
        url = record["url"]
        assert url.startswith(nginx.base_url + "/"), record
        path = url.removeprefix(nginx.base_url + "/")
        assert path.startswith(f"{key[:2]}/{key}"), record
        paths.add(Path(path))
        file_key, size = log.source[key]
        assert record["size"] == size
        data = nginx.path_of(path).read_bytes()
        assert len(data) == size and data == files.read(file_key, size), f"{key} differs"
    assert set(nginx.files()) == paths


_PUT = re.compile(r'"PUT /\w\w/(\w{32})\S* HTTP/[\d.]+" (\d{3}) ')


def successful_puts(nginx: Nginx) -> Counter[str]:
    log = nginx.tmp / "access.log"
    text = log.read_text() if log.exists() else ""
    return Counter(m[1] for m in _PUT.finditer(text) if m[2] in ("201", "204"))


def dc2_keys(media: dict[int, dict[str, Any]]) -> set[str]:
    return {media[dw.MEDIA_IDS["photo_dc2"]]["key"], media[dw.MEDIA_IDS["file_dc2"]]["key"]}


@pytest.mark.slow
@pytest.mark.timeout(45)
async def test_a_history_page_is_stored_on_nginx_byte_exact_each_file_once(
    server: ServerProcess, nginx_dav: Nginx, getfile_log: GetFileLog
) -> None:
    url = await server.start()
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        media = await page_media(api)
        kinds = {m["type"] for m in media.values()}
        assert {"photo", "video", "document", "audio", "voice", "webpage_photo"} <= kinds, kinds
        assert all(mid in media for mid in dw.ALBUM_IDS)
        reposted = {media[i]["key"] for i in REPOSTS}
        assert len(reposted) == 1 and len(REPOSTS) == 10
        keys = {m["key"] for m in media.values()}
        stored = await all_stored(api, keys)
    await server.stop()

    assert dc2_keys(media) <= keys
    check_on_nginx(nginx_dav, stored, getfile_log)
    # Each file asked once, part by part: the reposted one too, though 10 messages bring it.
    for key in keys:
        size = getfile_log.source[key][1]
        want = [i * PART_SIZE for i in range(part_count(size, PART_SIZE))]
        assert sorted(getfile_log.offsets(key)) == want, key
    (repost,) = reposted
    assert len(getfile_log.offsets(repost)) == part_count(REPOST_SIZE, PART_SIZE) == 3
    # The emulator's own counter agrees: no getFile beyond these (none failed either).
    assert getfile_log.rpc.count("upload.getFile") == len(getfile_log.parts)
    # nginx logs a PUT after answering it: its line may come just after the item is stored.
    once = Counter(dict.fromkeys(keys, 1))
    await wait_for(lambda: successful_puts(nginx_dav) == once, within=5, what="one PUT per key")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_sigkill_mid_download_then_a_restart_stores_everything_once(
    server: ServerProcess, nginx_dav: Nginx, getfile_log: GetFileLog
) -> None:
    rpc: TelegramRpc = getfile_log.rpc
    # Slow parts in the first life, so it is killed mid-file: ~10 parts/s for the 20 MB
    # video (41 parts), 2 parts/s for DC 2's 3 MB zip (7 parts, ~4 s).
    rpc.set_latency({"upload.getFile": 0.2, "*": 0.0})
    url = await server.start()
    zip_key = media_key("document", dw.BIG_FILE_DC2, "")
    getfile_log.delay[zip_key] = 0.8
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        media = await page_media(api)
        keys = {m["key"] for m in media.values()}
        video = media[dw.MEDIA_IDS["video"]]["key"]
        assert media[dw.MEDIA_IDS["file_dc2"]]["key"] == zip_key

        def mid_download() -> bool:
            # The video and the zip have parts the server recorded as written, far from all
            # of them, and something else is stored already (so "stored before the kill" is
            # tested too).
            rows = server.rows()
            v_state, v_parts = rows.get(video, ("", set()))
            z_state, z_parts = rows.get(zip_key, ("", set()))
            stored = [k for k, (s, _) in rows.items() if s == "stored"]
            return (
                v_state == z_state == "downloading"
                and len(v_parts) >= 4
                and len(z_parts) >= 2
                and bool(stored)
            )

        await wait_for(mid_download, within=20, what="both files mid-download")
    await server.kill()
    killed_at = time.monotonic()
    at_kill = server.rows()
    life1 = len(getfile_log.parts)
    puts_before = successful_puts(nginx_dav)
    video_parts = part_count(dw.VIDEO_SIZE, PART_SIZE)
    assert 4 <= len(at_kill[video][1]) < video_parts
    zip_parts = part_count(media[dw.MEDIA_IDS["file_dc2"]]["size"], PART_SIZE)
    assert 2 <= len(at_kill[zip_key][1]) < zip_parts
    stored_at_kill = {k for k, (s, _) in at_kill.items() if s == "stored"}
    uploading_at_kill = {k for k, (s, _) in at_kill.items() if s == "uploading"}
    assert stored_at_kill and stored_at_kill != keys

    rpc.set_latency({"*": 0.0})
    getfile_log.delay.clear()
    url = await server.start()
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        stored = await all_stored(api, keys)
    await server.stop()

    # Every item stored byte-exact, DC 2's files included, each one object on nginx.
    assert dc2_keys(media) <= keys
    check_on_nginx(nginx_dav, stored, getfile_log)
    # One successful PUT per key; a second only where the kill cut an upload short (nginx
    # may have answered before the server recorded it: then it is PUT again, by design).
    puts = successful_puts(nginx_dav)
    for key in keys:
        if key in uploading_at_kill:
            assert puts[key] - puts_before[key] == 1 and puts_before[key] <= 1, key
        else:
            assert puts[key] == 1, (key, at_kill.get(key), puts[key])
    # Downloads resumed, not redone: the second life asked no part the first had recorded
    # as written, no part twice, and nothing of what was uploading or stored. Parts asked
    # again are the ones the kill caught in flight or not yet saved (the processor saves
    # a download's parts at most every 0.5 s).
    for key in keys:
        size = getfile_log.source[key][1]
        state, written = at_kill.get(key, ("pending", set()))
        second = getfile_log.offsets(key, since=life1)
        if state in ("stored", "uploading"):
            assert second == [], key
            continue
        all_parts = set(range(part_count(size, PART_SIZE)))
        assert sorted(second) == sorted(i * PART_SIZE for i in all_parts - written), key
    # So a part answered to the first life and asked again was answered in its last
    # moments (0.5 s between saves, plus time for the answer to arrive and be written).
    again = {(p.key, p.offset) for p in getfile_log.parts[life1:]}
    late = [killed_at - p.at for p in getfile_log.parts[:life1] if (p.key, p.offset) in again]
    assert all(age < RECENT for age in late), late


# === faults, through the server process ===================================================

VIDEO_MSG = dw.MEDIA_IDS["video"]
VIDEO_KEY = media_key("document", dw.VIDEO_20MB, "")
VIDEO_OFFSETS = [i * PART_SIZE for i in range(part_count(dw.VIDEO_SIZE, PART_SIZE))]
FLOOD = 3  # seconds of FLOOD_WAIT


async def media_of(api: ApiClient, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The media descriptors of some messages of the media channel (GET /messages?ids=)."""
    path = f"/api/v1/messages?peer=@tgc_media&ids={','.join(map(str, ids))}"
    answer = await api.request("GET", path)
    assert answer.ok, answer
    return {
        m["id"]: m["media"] for m in answer.data["messages"] if (m.get("media") or {}).get("key")
    }


async def parts_written(server: ServerProcess, key: str, at_least: int) -> set[int]:
    """Waits until the server's table records `at_least` parts of `key` as written while it
    is still downloading; those parts' offsets."""
    written: set[int] = set()

    def enough() -> bool:
        nonlocal written
        state, written = server.rows().get(key, ("", set()))
        assert state in ("", "pending", "downloading"), state  # not finished yet
        return state == "downloading" and len(written) >= at_least

    await wait_for(enough, within=15, what=f"{at_least} parts of {key} written")
    return {i * PART_SIZE for i in written}


def downloader(log: GetFileLog, key: str) -> int:
    """The one account (user id) that asked for the parts of `key`."""
    users = {a.user_id for a in log.asked if a.key == key}
    assert len(users) == 1 and None not in users, users
    (user,) = users
    assert user is not None
    return user


def asked_after(log: GetFileLog, key: str, since: float) -> list[Ask]:
    return [a for a in log.asked if a.key == key and a.at > since]


def each_part_answered(log: GetFileLog, key: str, offsets: list[int]) -> None:
    answered = log.offsets(key)
    assert sorted(set(answered)) == offsets
    # At most the parts in flight beside a fault (media.parts_in_flight=2) twice.
    assert len(answered) <= len(offsets) + 2, Counter(answered).most_common(3)


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_file_reference_expired_mid_file_is_refreshed_by_the_same_account(
    server: ServerProcess, nginx_dav: Nginx, getfile_log: GetFileLog
) -> None:
    rpc = getfile_log.rpc
    getfile_log.delay[VIDEO_KEY] = 0.1  # ~20 parts/s: 41 parts take ~2 s
    url = await server.start()
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        assert (await media_of(api, [VIDEO_MSG]))[VIDEO_MSG]["key"] == VIDEO_KEY
        written = await parts_written(server, VIDEO_KEY, 4)
        user = downloader(getfile_log, VIDEO_KEY)
        rpc.reset_counts()
        expired_at = time.monotonic()
        rpc.expire_file_references()  # the reference the server holds is stale now
        stored = await all_stored(api, {VIDEO_KEY})
    await server.stop()

    check_on_nginx(nginx_dav, stored, getfile_log)
    # The parts in flight then were refused (they reached the emulator just before the
    # knob but are answered after the wrapper's delay).
    refused = [a for a in getfile_log.asked if a.outcome == "FILE_REFERENCE_EXPIRED"]
    assert refused and {a.user_id for a in refused} == {user}
    # The message was fetched again, by the account the file is bound to (another
    # account's reference would not do), and that account finished the file.
    assert rpc.count("channels.getMessages", user_id=user) >= 1
    assert rpc.count("channels.getMessages") == rpc.count("channels.getMessages", user_id=user)
    assert downloader(getfile_log, VIDEO_KEY) == user
    # It continued where it was: no part recorded as written was asked again.
    after = asked_after(getfile_log, VIDEO_KEY, expired_at)
    assert written and not written & {a.offset for a in after}
    each_part_answered(getfile_log, VIDEO_KEY, VIDEO_OFFSETS)


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_flood_wait_on_get_file_is_waited_out_and_shown_on_the_account(
    server: ServerProcess, nginx_dav: Nginx, getfile_log: GetFileLog
) -> None:
    rpc = getfile_log.rpc
    getfile_log.delay[VIDEO_KEY] = 0.1
    url = await server.start()
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        assert (await media_of(api, [VIDEO_MSG]))[VIDEO_MSG]["key"] == VIDEO_KEY
        written = await parts_written(server, VIDEO_KEY, 2)
        user = downloader(getfile_log, VIDEO_KEY)
        armed = time.monotonic()
        rpc.flood_wait("upload.getFile", FLOOD, user_id=user)  # its next getFile
        account: dict[str, Any] = {}

        async def flood_waited() -> bool:
            nonlocal account
            answer = await api.request("GET", "/api/v1/accounts")
            assert answer.ok, answer
            account = next(a for a in answer.data["accounts"] if a["user_id"] == user)
            return bool(account["state"] == "flood_wait")

        await wait_for(flood_waited, within=10, what="the account in flood_wait", step=0.05)
        seen = time.time()
        until = datetime.fromisoformat(account["flood_wait_until"]).timestamp()
        assert seen - 1 <= until <= seen + FLOOD + 1, (account, seen)
        stored = await all_stored(api, {VIDEO_KEY})
        accounts = (await api.request("GET", "/api/v1/accounts")).data["accounts"]
    await server.stop()

    check_on_nginx(nginx_dav, stored, getfile_log)
    assert next(a for a in accounts if a["user_id"] == user)["state"] == "ok"
    (flood,) = [a for a in getfile_log.asked if a.outcome == f"FLOOD_WAIT_{FLOOD}"]
    assert flood.user_id == user and flood.done > armed
    # The account waited: nothing asked of it from just after the answer (a part already
    # on its way may land) until the wait is nearly over.
    during = [a for a in getfile_log.asked if flood.done + 0.3 < a.at < flood.done + FLOOD - 0.3]
    assert during == []
    assert downloader(getfile_log, VIDEO_KEY) == user
    assert written and not written & {a.offset for a in asked_after(getfile_log, VIDEO_KEY, armed)}
    each_part_answered(getfile_log, VIDEO_KEY, VIDEO_OFFSETS)


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_a_connection_dropped_mid_file_is_resumed(
    server: ServerProcess, nginx_dav: Nginx, getfile_log: GetFileLog
) -> None:
    rpc = getfile_log.rpc
    getfile_log.delay[VIDEO_KEY] = 0.05
    url = await server.start()
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        assert (await media_of(api, [VIDEO_MSG]))[VIDEO_MSG]["key"] == VIDEO_KEY
        written = await parts_written(server, VIDEO_KEY, 4)
        armed = time.monotonic()
        rpc.drop_connection_in_file(file_id=dw.VIDEO_20MB, nth=2)
        stored = await all_stored(api, {VIDEO_KEY})
    await server.stop()

    check_on_nginx(nginx_dav, stored, getfile_log)
    (dropped,) = [a for a in getfile_log.asked if a.outcome == "dropped"]
    assert dropped.key == VIDEO_KEY and dropped.done > armed
    after = asked_after(getfile_log, VIDEO_KEY, armed)
    # Resumed from the parts written: none of those was asked again.
    assert written and not written & {a.offset for a in after}
    each_part_answered(getfile_log, VIDEO_KEY, VIDEO_OFFSETS)


_UNAVAILABLE = re.compile(r"media (\w{32}): storage unavailable .*, attempt (\d+),")


def storage_attempts(server: ServerProcess) -> Counter[str]:
    """The failed upload attempts per key the server logged (its retries)."""
    log = server.settings.log.file
    text = log.read_text(errors="replace") if log.exists() else ""
    attempts: Counter[str] = Counter()
    for m in _UNAVAILABLE.finditer(text):
        attempts[m[1]] = max(attempts[m[1]], int(m[2]))
    return attempts


@pytest.mark.slow
@pytest.mark.timeout(30)
async def test_nginx_away_for_a_while_items_wait_then_are_stored_once(
    server: ServerProcess, nginx_dav: Nginx, getfile_log: GetFileLog
) -> None:
    # Four items, one for each upload worker (media.upload_workers=4): each retries.
    ids = [dw.MEDIA_IDS[n] for n in ("photo_dc1", "photo_dc2", "audio", "file")]
    nginx_dav.stop()
    url = await server.start()
    async with ApiClient(url, TOKEN, AES_KEY) as api:
        keys = {m["key"] for m in (await media_of(api, ids)).values()}
        assert len(keys) == len(ids)
        uploading: set[str] = set()

        async def waiting() -> bool:
            # Every item reaches `uploading` and stays there, nothing fails, until the
            # server has logged at least two failed attempts for each.
            found = await records(api, keys)
            states = {k: r["state"] for k, r in found.items()}
            assert set(states.values()) <= {"pending", "downloading", "uploading"}, found
            assert all(states[k] == "uploading" for k in uploading), states
            uploading.update(k for k, s in states.items() if s == "uploading")
            attempts = storage_attempts(server)
            return uploading == keys and all(attempts[k] >= 2 for k in keys)

        await wait_for(waiting, within=15, what="two failed attempts for each item", step=0.05)
        assert successful_puts(nginx_dav) == Counter() and nginx_dav.files() == []
        nginx_dav.start()
        stored = await all_stored(api, keys)
    await server.stop()

    check_on_nginx(nginx_dav, stored, getfile_log)
    assert successful_puts(nginx_dav) == Counter(dict.fromkeys(keys, 1))
    # Downloaded once each: the outage cost uploads only.
    for key in keys:
        size = getfile_log.source[key][1]
        assert sorted(getfile_log.offsets(key)) == [
            i * PART_SIZE for i in range(part_count(size, PART_SIZE))
        ], key
