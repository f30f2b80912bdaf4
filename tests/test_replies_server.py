"""GET /api/v1/replies through the real server: start.py serve as its own process (through
tests/fakedc/launch.py), the emulator in this process on the demo world plus one post of
@open_talk with 250 comments (two answers inside the thread, one comment with a photo),
requests signed as a crawler signs them.

What is checked from the outside: a post's comments paged to the end come each once, newest
first, with the thread's `count` and the discussion group on every page, and equal the
emulator's thread; the post itself carries `replies` and `replies_info`; a megagroup's own
reply thread (no discussion group); the thread asked in the group by its forward's id; a
message with no thread is 400 naming `msg_id`; a flood wait moves the call to the next
account; a photo in a comment is downloaded and stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from service.apiclient import ApiClient
from tests.fakedc import demo_world as dw
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import DEFAULT_DATE, World
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.server_process import ServerProcess
from tests.fixtures.wait import wait_for

COMMENTS = 250
POST = dw.TALK_POSTS + 1  # the post this module adds
INSIDE = (100, 200)  # comments answering comment 50, inside the thread
WITH_PHOTO = 120
GROUP_MARKED = -1_000_000_000_000 - dw.TALK_CHAT


def big_thread_world() -> World:
    world = dw.demo_world()
    post = world.add_post(dw.TALK, "a post with many comments", date=DEFAULT_DATE + 86_400)
    assert post.id == POST
    answered = 0
    for n in range(1, COMMENTS + 1):
        fields: dict[str, Any] = {"date": post.date + n}
        if n in INSIDE:
            fields["reply_to"] = answered
        if n == WITH_PHOTO:
            fields["media"] = {"photo": dw.PHOTO_DC1}
        comment = world.add_comment(dw.TALK, POST, f"comment {n}", dw.USER_BOB, **fields)
        if n == 50:
            answered = comment.id
    return world


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    return TelegramRpc(big_thread_world())


@asynccontextmanager
async def serving(
    tmp_path: Path, telegram_session: Callable[..., Path], props: dict[str, str]
) -> AsyncIterator[ApiClient]:
    for user_id in (dw.ACCOUNT_A, dw.ACCOUNT_B):
        telegram_session(user_id, name=f"acc{user_id}")
    server = ServerProcess(write_config(tmp_path, props))
    try:
        url = await server.start()
        async with ApiClient(url, TOKEN, AES_KEY) as client:
            yield client
        await server.stop()
    finally:
        if server.proc is not None and server.proc.returncode is None:
            server.proc.kill()
            await server.proc.wait()


@pytest.fixture
async def api(
    tmp_path: Path, telegram_session: Callable[..., Path]
) -> AsyncIterator[ApiClient]:
    """The server with media.auto_download=false: the answers alone are checked."""
    async with serving(tmp_path, telegram_session, {"media.auto_download": "false"}) as api:
        yield api


@pytest.fixture
async def downloading_api(
    tmp_path: Path, telegram_session: Callable[..., Path]
) -> AsyncIterator[ApiClient]:
    """The server as shipped: files in answers are downloaded and stored under data.dir."""
    async with serving(tmp_path, telegram_session, {}) as api:
        yield api


async def get(api: ApiClient, uri: str) -> dict[str, Any]:
    answer = await api.request("GET", uri)
    assert answer.ok, (uri, answer.error)
    data: dict[str, Any] = answer.data
    return data


async def error_param(api: ApiClient, uri: str) -> tuple[int, str, str | None]:
    answer = await api.request("GET", uri)
    assert not answer.ok
    return answer.status, answer.error["code"], answer.error.get("param")


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_posts_comments_paged_to_the_end_each_once_newest_first(
    api: ApiClient, fakedc_dispatcher: TelegramRpc
) -> None:
    world = fakedc_dispatcher.world
    forward = world.forward_of(world.chats[dw.TALK], POST)
    assert forward is not None
    expected = [m.id for m in world.threads(world.chats[dw.TALK_CHAT]).thread(forward.id)]
    assert len(expected) == COMMENTS

    seen: list[int] = []
    texts: dict[str, dict[str, Any]] = {}
    pages = 0
    uri = f"/api/v1/replies?peer=@open_talk&msg_id={POST}&limit=37"
    while True:
        data = await get(api, uri)
        pages += 1
        assert data["count"] == COMMENTS
        assert data["discussion"]["id"] == GROUP_MARKED
        assert data["discussion"]["type"] == "megagroup"
        assert data["discussion"]["username"] == "open_talk_chat"
        for m in data["messages"]:
            assert m["peer_id"] == GROUP_MARKED and m["from_id"] == dw.USER_BOB
            top = m["reply_to_top_id"] or m["reply_to_msg_id"]
            assert top == forward.id
        seen += [m["id"] for m in data["messages"]]
        texts.update((m["text"], m) for m in data["messages"])
        if data["next_offset_id"] is None:
            break
        uri = f"/api/v1/replies?peer=@open_talk&msg_id={POST}&limit=37&offset_id={data['next_offset_id']}"
    assert seen == expected and len(set(seen)) == COMMENTS
    assert pages == -(-COMMENTS // 37)

    photo = texts[f"comment {WITH_PHOTO}"]["media"]
    assert photo["type"] == "photo" and photo["key"] and photo["state"] is None
    answers = [texts[f"comment {n}"] for n in INSIDE]
    assert {m["reply_to_msg_id"] for m in answers} == {texts["comment 50"]["id"]}
    first = await get(api, f"/api/v1/replies?peer=@open_talk&msg_id={POST}&limit=100")
    assert [m["id"] for m in first["messages"]] == expected[:100]

    # The post says where its comments are.
    (post,) = (await get(api, f"/api/v1/messages?peer=@open_talk&ids={POST}"))["messages"]
    assert post["replies"] == COMMENTS
    info = post["replies_info"]
    assert info["comments"] is True and info["discussion_id"] == GROUP_MARKED
    assert info["max_id"] == expected[0] and info["recent_repliers"] == [dw.USER_BOB]

    # The same thread asked in the group itself, by the forward's id: no discussion then.
    own = await get(api, f"/api/v1/replies?peer=@open_talk_chat&msg_id={forward.id}&limit=5")
    assert [m["id"] for m in own["messages"]] == expected[:5] and own["discussion"] is None


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_groups_thread_and_what_has_no_thread(
    api: ApiClient, fakedc_dispatcher: TelegramRpc
) -> None:
    demo_hint = await get(api, "/api/v1/replies?peer=@open_talk&msg_id=2&limit=5")  # start.py demo's
    assert len(demo_hint["messages"]) == 5 and demo_hint["count"] == dw.TALK_COMMENTS[2]
    thread = await get(api, "/api/v1/replies?peer=@tgc_chat&msg_id=7")
    assert [m["id"] for m in thread["messages"]] == [8]
    assert thread["count"] == 1 and thread["discussion"] is None
    assert thread["next_offset_id"] is None
    empty = await get(api, "/api/v1/replies?peer=@open_talk&msg_id=1")
    assert empty["messages"] == [] and empty["count"] == 0
    assert empty["discussion"]["id"] == GROUP_MARKED
    assert await error_param(api, "/api/v1/replies?peer=@tgc_news&msg_id=10") == (
        400, "INVALID_PARAM", "msg_id"
    )  # fmt: skip
    # A flood wait on the account asked first: the next account serves, the wait shows.
    rpc = fakedc_dispatcher
    rpc.reset_counts()
    rpc.flood_wait("messages.getReplies", 30, times=1)
    again = await get(api, "/api/v1/replies?peer=@open_talk&msg_id=2&limit=5")
    assert [m["id"] for m in again["messages"]] == [m["id"] for m in demo_hint["messages"]]
    assert rpc.count("messages.getReplies") == 2
    accounts = (await get(api, "/api/v1/accounts"))["accounts"]
    assert sorted(a["state"] for a in accounts) == ["flood_wait", "ok"]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_comments_photo_is_downloaded_and_stored(downloading_api: ApiClient) -> None:
    """A file in a comment is bound to the discussion group's message: the pipeline fetches
    it with the account that read the thread and stores it like any other."""
    api = downloading_api
    offset = 0
    photo: dict[str, Any] | None = None
    while photo is None:
        uri = f"/api/v1/replies?peer=@open_talk&msg_id={POST}&limit=100&offset_id={offset}"
        data = await get(api, uri)
        photo = next((m["media"] for m in data["messages"] if m["media"]), None)
        offset = data["next_offset_id"]
        assert photo is not None or offset is not None, "no comment with a photo"
    key = photo["key"]

    async def stored() -> bool:
        record = await get(api, f"/api/v1/media/{key}")
        assert record["state"] != "failed", record
        return bool(record["state"] == "stored")

    await wait_for(stored, within=30, what="the comment's photo stored")
    record = await get(api, f"/api/v1/media/{key}")
    assert record["url"].startswith("file://") and record["size"] == photo["size"]
