"""service/queries.py: paging rules and how media records reach the answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon import types

from common.errors import PeerNotFound
from common.utils import PeerRef, parse_peer
from model import tlrequests as tl
from model.media import Media
from service.queries import (
    DateRange,
    attach_media,
    history,
    next_offset_id,
    replies,
    search_messages,
)
from tests.fakedc.rpc import history_window
from tests.fakedc.world import MessageSpec


def page(ids: list[int]) -> list[dict[str, Any]]:
    return [{"id": i} for i in ids]


def test_short_or_empty_page_is_the_last() -> None:
    assert next_offset_id([], 20) is None
    assert next_offset_id(page([9, 8, 7]), 20) is None


def test_full_page_points_below_its_oldest_message() -> None:
    assert next_offset_id(page([30, 29, 27]), 3) == 27


def test_full_page_reaching_min_id_or_id_1_is_the_last() -> None:
    assert next_offset_id(page([3, 2, 1]), 3) is None
    assert next_offset_id(page([13, 12, 11]), 3, min_id=10) is None
    assert next_offset_id(page([14, 13, 12]), 3, min_id=10) == 12


@given(
    ids=st.sets(st.integers(1, 500), max_size=120),
    limit=st.integers(1, 100),
    min_id=st.integers(0, 100),
)
def test_paging_walks_every_message_once(ids: set[int], limit: int, min_id: int) -> None:
    """Simulated getHistory over any id set: following next_offset_id returns each message
    above min_id exactly once, newest first, and stops."""
    history = sorted((i for i in ids if i > min_id), reverse=True)
    seen: list[int] = []
    offset = 0
    for _ in range(len(history) + 2):
        chunk = [i for i in history if not offset or i < offset][:limit]
        seen += chunk
        nxt = next_offset_id(page(chunk), limit, min_id)
        if nxt is None:
            break
        assert nxt < (offset or 10**9)
        offset = nxt
    else:
        raise AssertionError("paging did not end")
    assert seen == history


class Queue:
    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.submitted: list[str] = []

    def submit(self, media: Media) -> dict[str, Any]:
        self.submitted.append(media.key)
        return self.records.get(media.key, {"state": "pending", "url": None})

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)


def media(file_id: int) -> Media:
    return Media(
        type="photo", kind="photo", file_id=file_id, access_hash=1, file_reference=b"",
        dc_id=2, size=10, mime_type="image/jpeg", thumb_size="x",
    )  # fmt: skip


def test_attach_media_merges_states_where_the_parser_put_descriptors() -> None:
    a, b, c = media(1), media(2), media(3)
    items: list[dict[str, Any] | None] = [
        {"id": 1, "media": a.descriptor()},
        None,
        {"id": 2, "media": None, "action": {"type": "chat_edit_photo", "photo": b.descriptor()}},
        {"id": 3, "photo": c.descriptor()},
    ]
    queue = Queue(
        {
            a.key: {"state": "stored", "url": "http://s/a.jpg"},
            b.key: {"state": "downloading", "url": None},
        }
    )
    attach_media(items, [a, b, c], queue)
    assert queue.submitted == [a.key, b.key, c.key]
    assert items[0] is not None and items[0]["media"]["state"] == "stored"
    assert items[0]["media"]["url"] == "http://s/a.jpg"
    assert items[2] is not None and items[2]["action"]["photo"]["state"] == "downloading"
    assert items[3] is not None and items[3]["photo"]["state"] == "pending"


def test_attach_media_without_a_queue_leaves_pending() -> None:
    a = media(1)
    items: list[dict[str, Any] | None] = [{"media": a.descriptor()}]
    attach_media(items, [a], None)
    assert items[0] == {"media": a.descriptor()}


# --- date ranges: service.queries.history with a DateRange over a simulated getHistory ----


def test_a_date_range_is_since_inclusive_until_exclusive() -> None:
    r = DateRange(since=100.0, until=200.5)
    assert [r.holds(t) for t in (99, 100, 200, 201)] == [False, True, True, False]
    assert r.offset_date() == 201  # "older than 201" is "before 200.5" for whole seconds
    assert DateRange(until=200.0).offset_date() == 200
    assert DateRange(since=5.0).offset_date() is None
    assert DateRange(until=-3.0).offset_date() == 1  # before 1970: nothing (0 is no offset)
    assert DateRange(until=2.0**31).offset_date() is None  # past Telegram's dates: no bound


class DatedChat:
    """A TeleClient's get_history over messages (id → date) as the emulator answers it
    (tests/fakedc/rpc.history_window), counting the calls."""

    name = "acc"

    def __init__(self, dates: dict[int, int]) -> None:
        box = [MessageSpec(id=i, chat=1, date=d) for i, d in dates.items()]
        self.box = sorted(box, key=lambda m: m.id, reverse=True)
        self.calls = 0

    async def get_history(
        self, ref: Any, limit: int, offset_id: int, min_id: int, max_id: int,
        offset_date: int | None = None,
    ) -> tuple[None, list[Any]]:  # fmt: skip
        self.calls += 1
        top = 0 if offset_date is not None else tl.window_top(offset_id, max_id)
        found = history_window(self.box, top, offset_date, 0, limit, min_id, max_id)
        return None, [
            types.Message(m.id, types.PeerChannel(1), datetime.fromtimestamp(m.date, UTC), "")
            for m in found
        ]

    async def run(self, op: Any, peer: Any = None) -> tuple[Any, Any]:
        return await op(self), self


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.sampled_from([0, 0, 1, 7, 60]), min_size=0, max_size=60),
    since=st.none() | st.integers(0, 400),
    span=st.none() | st.integers(1, 400),
    limit=st.integers(1, 12),
    start=st.none() | st.integers(1, 65),
    max_id=st.sampled_from([0, 0, 30]),
)
async def test_a_date_range_pages_to_exactly_its_messages(
    steps: list[int], since: int | None, span: int | None, limit: int, start: int | None,
    max_id: int,
) -> None:  # fmt: skip
    dates, when = {}, 0
    for i, step in enumerate(steps, 1):
        when += step
        dates[i] = when
    until = None if span is None else (since or 0) + span
    chat = DatedChat(dates)
    dates_range = DateRange(None if since is None else float(since), None if until is None else float(until))
    got: list[int] = []
    offset, pages = start or 0, 0
    while True:
        answer = await history(chat, None, PeerRef("x"), limit=limit, offset_id=offset, max_id=max_id, dates=dates_range)  # type: ignore[arg-type]
        pages += 1
        got += [m["id"] for m in answer["messages"]]
        offset = answer["next_offset_id"]
        if offset is None:
            break
        assert pages <= len(dates) + 1, "paging did not end"
    expected = [
        i for i in sorted(dates, reverse=True)
        if dates_range.holds(dates[i]) and (not start or i < start) and (not max_id or i < max_id)
    ]  # fmt: skip
    assert got == expected
    assert pages <= len(expected) // limit + 1
    assert chat.calls <= pages + 1  # a second call only on a first page above `until`


# --- search in a chat: a sender by id the chat's account never met ------------------------


class Knower:
    """An account that knows some peers (by their raw text) and searches with them."""

    def __init__(self, name: str, knows: set[str]) -> None:
        self.name, self.knows = name, knows

    async def search_messages(
        self, ref: PeerRef, q: str, *, sender: PeerRef | None, **kw: Any
    ) -> tuple[None, list[Any], int]:
        for peer in (ref, sender):
            if peer is not None and str(peer) not in self.knows:
                raise PeerNotFound(str(peer))
        return None, [], 0


class KnowersPool:
    """Runs a call on the first account that knows the peer (else the first one)."""

    def __init__(self, *accounts: Knower) -> None:
        self.accounts = accounts
        self.picked: list[str] = []

    async def run(self, op: Any, peer: PeerRef | None = None) -> tuple[Any, Any]:
        knowers = [a for a in self.accounts if peer is not None and str(peer) in a.knows]
        account = (knowers or list(self.accounts))[0]
        self.picked.append(account.name)
        return await op(account), account


async def test_a_sender_the_chats_account_never_met_moves_the_search_once() -> None:
    chat, bob = PeerRef.from_marked_id(-1001), PeerRef.from_marked_id(77)
    pool = KnowersPool(Knower("a", {str(chat)}), Knower("b", {str(chat), str(bob)}))
    answer = await search_messages(
        pool, None, chat, q="", sender=bob, filter_name=None, limit=5  # type: ignore[arg-type]
    )
    assert answer["count"] == 0 and pool.picked == ["a", "b"]
    # Nobody who knows Bob can reach the chat: the answer is about Bob, not the chat.
    alone = KnowersPool(Knower("a", {str(chat)}), Knower("b", {str(bob)}))
    with pytest.raises(PeerNotFound) as caught:
        await search_messages(
            alone, None, chat, q="", sender=bob, filter_name=None, limit=5  # type: ignore[arg-type]
        )
    assert caught.value.peer == str(bob) and alone.picked == ["a", "b"]
    # A chat nobody knows is not retried.
    lost = KnowersPool(Knower("a", set()))
    with pytest.raises(PeerNotFound) as missing:
        await search_messages(
            lost, None, chat, q="", sender=bob, filter_name=None, limit=5  # type: ignore[arg-type]
        )
    assert missing.value.peer == str(chat) and lost.picked == ["a"]


class ThreadPool:
    """A Pool whose one account answers get_replies from a list of TL messages."""

    def __init__(self, msgs: list[Any], count: int, group: Any) -> None:
        self.msgs, self.count, self.group = msgs, count, group
        self.asked: list[tuple[Any, ...]] = []

    async def run(self, op: Any, peer: Any = None) -> tuple[Any, Any]:
        return await op(self), self

    name = "acc1"

    async def get_replies(self, ref: Any, msg_id: int, limit: int, offset_id: int) -> Any:
        self.asked.append((ref, msg_id, limit, offset_id))
        older = [m for m in self.msgs if not offset_id or m.id < offset_id][:limit]
        return None, older, self.count, self.group

    def accounts(self) -> list[dict[str, Any]]:
        return []

    def usable(self) -> bool:
        return True


async def test_replies_page_a_thread_and_name_its_discussion_group() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    msgs = [types.Message(i, types.PeerChannel(2103), when, f"c{i}") for i in range(12, 2, -1)]
    group = types.Channel(2103, "Talk chat", types.ChatPhotoEmpty(), when, megagroup=True)
    pool = ThreadPool(msgs, 10, group)
    ref = parse_peer("@open_talk")
    seen: list[int] = []
    offset = 0
    for _ in range(5):
        data = await replies(pool, None, ref, msg_id=2, limit=4, offset_id=offset)  # type: ignore[arg-type]
        assert data["count"] == 10 and data["discussion"]["id"] == -1000000002103
        assert data["discussion"]["type"] == "megagroup"
        seen += [m["id"] for m in data["messages"]]
        if data["next_offset_id"] is None:
            break
        offset = data["next_offset_id"]
    assert seen == list(range(12, 2, -1))
    assert [a[1:] for a in pool.asked] == [(2, 4, 0), (2, 4, 9), (2, 4, 5)]
    pool.group = None  # a megagroup's own thread
    assert (await replies(pool, None, ref, msg_id=7, limit=4))["discussion"] is None  # type: ignore[arg-type]
