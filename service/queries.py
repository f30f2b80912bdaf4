"""The read side of the API as plain service functions: pool call → parser → media queue.

Each function is what one route of CONTRACT.md section 1 returns in `data`, with no HTTP in
it, so the handlers stay thin and any other entry point (the CLI, a test, a future batch
job) gets the same answers. Paging rules live here, not in the handler:

- history is newest first; `next_offset_id` is the id of the oldest message of a full page
  (pass it back as `offset_id`), null once a page comes back short or reaches `min_id`;
- participants: `next_offset` is `offset + len(page)` while more remain, else null;
- a date range ([since, until), `DateRange`) pages history the same way: the first page
  starts at the newest message older than `until` (getHistory's offset_date), each page
  keeps only the messages dated in the range, and `next_offset_id` is null once a page
  reaches a message older than `since`. That relies on what Telegram guarantees within a
  chat: a later message id never carries an earlier date (imported histories aside);
- search in a chat: `messages`, `next_offset_id` as for history, and Telegram's `count`.
- a reply thread pages as history does (its message ids are those of the chat holding
  the thread: a channel post's comments live in its discussion group).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from common.errors import NotFound, PeerNotFound, PeerPrivate
from common.utils import PeerRef
from model.media import Media
from model.tlrequests import SEARCH_FILTERS, window_top
from service import parser
from service.ports import Pool

log = logging.getLogger(__name__)


class Account(Protocol):
    name: str


class MediaQueue(Protocol):
    """What the queries need of `service.mediaprocessor.MediaProcessor`."""

    def submit(self, media: Media) -> dict[str, Any]: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def queue_now(self, key: str) -> dict[str, Any] | None: ...


async def peer_info(pool: Pool, queue: MediaQueue | None, ref: PeerRef) -> dict[str, Any]:
    """GET /api/v1/peer: the peer dict (with its full info and its photo's descriptor)."""
    (entity, full), account = await pool.run(lambda c: c.get_full(ref), ref)
    peer, media = parser.parse_peer(entity, full, account.name)
    attach_media([peer], media, queue)
    return peer


# The `filter` values of GET /api/v1/messages/search.
SEARCH_FILTER_NAMES = tuple(SEARCH_FILTERS)
# Telegram's dates are 32-bit Unix times: an `until` past this has no message after it.
_LAST_DATE = 2**31 - 1


@dataclass(frozen=True)
class DateRange:
    """Messages dated in [since, until) (Unix seconds; None: unbounded on that side)."""

    since: float | None = None
    until: float | None = None

    def holds(self, date: float) -> bool:
        return (self.since is None or date >= self.since) and (
            self.until is None or date < self.until
        )

    def offset_date(self) -> int | None:
        """getHistory's offset_date for `until`: dates are whole seconds, so "older than
        ceil(until)" is "before until"; None when nothing starts the window. An `until`
        before 1970 asks for what is older than 1 (0 would mean no offset): nothing."""
        if self.until is None or self.until > _LAST_DATE:
            return None
        return max(1, math.ceil(self.until))


async def history(
    pool: Pool,
    queue: MediaQueue | None,
    ref: PeerRef,
    *,
    limit: int,
    offset_id: int = 0,
    min_id: int = 0,
    max_id: int = 0,
    dates: DateRange | None = None,
) -> dict[str, Any]:
    """GET /api/v1/messages (paging): `messages` newest first and `next_offset_id`; with
    `dates`, only the messages dated in that range (see the module's paging rules)."""
    if dates is not None and (dates.since is not None or dates.until is not None):
        return await _dated_history(pool, queue, ref, limit, offset_id, min_id, max_id, dates)
    (_, found), account = await pool.run(
        lambda c: c.get_history(ref, limit, offset_id, min_id, max_id), ref
    )
    messages, media = parser.parse_messages(found, account.name)
    attach_media(messages, media, queue)
    page = [m for m in messages if m is not None]
    return {"messages": page, "next_offset_id": next_offset_id(page, limit, min_id)}


async def _dated_history(
    pool: Pool,
    queue: MediaQueue | None,
    ref: PeerRef,
    limit: int,
    offset_id: int,
    min_id: int,
    max_id: int,
    dates: DateRange,
) -> dict[str, Any]:
    start = dates.offset_date()

    async def window(c: Any) -> list[Any]:
        if not window_top(offset_id, max_id):
            dated: list[Any] = (await c.get_history(ref, limit, 0, min_id, max_id, start))[1]
            return dated
        found: list[Any] = (await c.get_history(ref, limit, offset_id, min_id, max_id))[1]
        if start is not None and any(_unix(m.date) >= start for m in found):
            # The ids given start the window above `until`: start it at `until` instead
            # (below the ids then, dates growing with ids).
            found = (await c.get_history(ref, limit, 0, min_id, max_id, start))[1]
        return found

    found, account = await pool.run(window, ref)
    kept = [m for m in found if dates.holds(_unix(m.date))]
    messages, media = parser.parse_messages(kept, account.name)
    attach_media(messages, media, queue)
    page = [m for m in messages if m is not None]
    reached = dates.since is not None and any(_unix(m.date) < dates.since for m in found)
    ids = [{"id": m.id} for m in found]  # the window's, kept or not: where the next starts
    following = None if reached else next_offset_id(ids, limit, min_id)
    return {"messages": page, "next_offset_id": following}


def _unix(date: Any) -> float:
    """A TL message's date (Telethon gives an aware datetime) in Unix seconds."""
    return float(date.timestamp()) if hasattr(date, "timestamp") else float(date)


async def search_messages(
    pool: Pool,
    queue: MediaQueue | None,
    ref: PeerRef,
    *,
    q: str,
    sender: PeerRef | None,
    filter_name: str | None,
    limit: int,
    offset_id: int = 0,
) -> dict[str, Any]:
    """GET /api/v1/messages/search: the chat's messages matching `q`, sent by `sender`, of
    the kind `filter_name`; `messages` newest first, `next_offset_id`, `count` (all hits).

    The pool picks an account that knows the chat; a sender given by id must be known to
    it too. When it is not, the call moves once to an account that knows the sender (one
    that has read their messages), if that account can reach the chat as well."""

    def search(c: Any) -> Any:
        return c.search_messages(
            ref, q, sender=sender, filter_name=filter_name, limit=limit, offset_id=offset_id
        )

    try:
        (_, found, count), account = await pool.run(search, ref)
    except PeerNotFound as unknown:
        if sender is None or sender.id is None or unknown.peer != str(sender):
            raise
        try:
            (_, found, count), account = await pool.run(search, sender)
        except (PeerNotFound, PeerPrivate):
            raise unknown from None  # no account knows both: the sender is what is missing
    messages, media = parser.parse_messages(found, account.name)
    attach_media(messages, media, queue)
    page = [m for m in messages if m is not None]
    return {"messages": page, "next_offset_id": next_offset_id(page, limit), "count": count}


def next_offset_id(page: list[dict[str, Any]], limit: int, min_id: int = 0) -> int | None:
    """The `offset_id` of the next (older) page, or None when there is none.

    A short page is the last one; so is a page whose oldest message is just above
    `min_id` (or id 1): nothing older can match. A full page may be followed by an empty
    one when the history has exactly a multiple of `limit` messages.
    """
    if not page or len(page) < limit:
        return None
    oldest = min(int(m["id"]) for m in page)
    if oldest <= max(min_id, 0) + 1:
        return None
    return oldest


async def replies(
    pool: Pool,
    queue: MediaQueue | None,
    ref: PeerRef,
    *,
    msg_id: int,
    limit: int,
    offset_id: int = 0,
) -> dict[str, Any]:
    """GET /api/v1/replies: the comments of channel post `msg_id` (or the reply thread of
    a megagroup's message), `messages` newest first, `next_offset_id`, `count` (the whole
    thread) and `discussion` (the discussion group's peer dict; null for a group's own
    thread)."""
    (_, found, count, group), account = await pool.run(
        lambda c: c.get_replies(ref, msg_id, limit, offset_id), ref
    )
    messages, media = parser.parse_messages(found, account.name)
    attach_media(messages, media, queue)
    page = [m for m in messages if m is not None]
    return {
        "messages": page,
        "next_offset_id": next_offset_id(page, limit),
        "count": count,
        "discussion": None if group is None else parser.parse_peer(group)[0],
    }


async def messages_by_id(
    pool: Pool, queue: MediaQueue | None, ref: PeerRef, ids: list[int]
) -> dict[str, Any]:
    """GET /api/v1/messages?ids=: those messages in that order, null for a missing one."""
    (_, found), account = await pool.run(lambda c: c.get_messages(ref, ids), ref)
    messages, media = parser.parse_messages(found, account.name)
    attach_media(messages, media, queue)
    return {"messages": messages}


async def participants(pool: Pool, ref: PeerRef, *, limit: int, offset: int = 0) -> dict[str, Any]:
    """GET /api/v1/participants: the members this account may see, `count`, `next_offset`."""
    (_, users, total), _ = await pool.run(lambda c: c.get_participants(ref, limit, offset), ref)
    page = [parser.parse_user(u) for u in users]
    end = offset + len(page)
    more = len(page) == limit and end < total
    return {"participants": page, "count": total, "next_offset": end if more else None}


async def search(pool: Pool, q: str, *, limit: int) -> dict[str, Any]:
    """GET /api/v1/search: public channels and groups Telegram finds for `q`."""
    found, _ = await pool.run(lambda c: c.search(q, limit), None)
    return {"results": [parser.parse_search_result(e) for e in found]}


def media_state(queue: MediaQueue | None, key: str) -> dict[str, Any]:
    """GET /api/v1/media/KEY: the processor's record of that file."""
    record = None if queue is None else queue.get(key)
    if record is None:
        raise NotFound(f"no media with key {key}")
    return {"key": key, **record}


def queue_media(queue: MediaQueue | None, key: str) -> dict[str, Any]:
    """POST /api/v1/media/KEY: that file queued now (a failed one again); its record."""
    record = None if queue is None else queue.queue_now(key)
    if record is None:
        raise NotFound(f"no answer carried media with key {key}")
    return {"key": key, **record}


def accounts(pool: Pool) -> dict[str, Any]:
    """GET /api/v1/accounts."""
    return {"accounts": pool.accounts()}


def attach_media(
    items: Iterable[dict[str, Any] | None], media: list[Media], queue: MediaQueue | None
) -> None:
    """Hands every file to the media queue and writes its current state into the answer.

    The parser puts each file's descriptor (state "pending") at the top level of a message
    or peer dict (`media`, `photo`) or inside a service message's `action`; the queue
    dedupes by key and answers with its record, so a file already stored shows "stored"
    and its URL. Without a queue (no processor configured) descriptors stay "pending".
    """
    if queue is None or not media:
        return
    records = {m.key: queue.submit(m) for m in media}
    for item in items:
        if item is None:
            continue
        for value in item.values():
            if isinstance(value, dict):
                _apply_record(value, records)
        action = item.get("action")
        if isinstance(action, dict):
            for value in action.values():
                if isinstance(value, dict):
                    _apply_record(value, records)


def _apply_record(descriptor: dict[str, Any], records: dict[str, dict[str, Any]]) -> None:
    key = descriptor.get("key")
    record = records.get(key) if isinstance(key, str) else None
    if record is None or "state" not in descriptor:
        return
    descriptor["state"] = record.get("state", descriptor["state"])
    descriptor["url"] = record.get("url")
    # A link when stored and served through the API (service/files.py), else null.
    descriptor["content_url"] = record.get("content_url")
