"""service/queries.py: paging rules and how media records reach the answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from telethon import types

from common.utils import parse_peer
from model.media import Media
from service.queries import attach_media, next_offset_id, replies


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
