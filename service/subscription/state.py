"""What the subscription flow's parts share, and the small pieces they all use.

`Shared` is built once per `Subscriber` and handed to each part: the pool, the join map, the
publisher, the media queue, the clock, the bounded set of recently published ids (`Recent`),
the basic groups' message ids per account (`GroupIds`), the counters /metrics and /status
read (`Counters`), the lock that makes the API's joins and
the takeovers one at a time, the queue of chats to poll (`PollQueue`) and the watermarks.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.joinmap import JoinMap, State
from model.pool import TeleClients
from service import parser, queries
from service.publisher import Publisher
from service.subscription.watermarks import Watermarks


class Recent:
    """A bounded set remembering the most recent keys (oldest forgotten first)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def claim(self, key: str) -> bool:
        """True the first time a key is seen (and remembers it), False after."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True

    def forget(self, key: str) -> None:
        """Forgets a key (claimed, but its event never reached the outbox)."""
        self._keys.pop(key, None)

    def __contains__(self, key: str) -> bool:
        return key in self._keys


class GroupIds:
    """Basic-group messages by each account's own id: (account, own id) → (the chat, the id
    its message.new event carried), kept in the join map (written with the cursors, read
    back after a restart). updateDeleteMessages names no chat, only the account's own ids,
    and private chats share that sequence: what the account saw is what tells a basic
    group's deletion from a private chat's. The event id is the first sight's own id (the
    sight that claims, and so publishes, the message), so a deletion seen by any account
    names the message as its message.new did; that first sight is remembered in memory
    (`size` messages): after a restart another account's first sight of an old message
    names it by its own id."""

    def __init__(self, joinmap: JoinMap, size: int) -> None:
        self._joinmap = joinmap
        self._size = size
        self._first: OrderedDict[str, int] = OrderedDict()  # content key → event id

    def note(self, account: str, own_id: int, peer_id: int, key: str) -> None:
        """Account `account` saw message `own_id` of basic group `peer_id`; `key` is what
        the message is for every account (Intake's content key of a new message)."""
        event_id = self._first.setdefault(key, own_id)
        while len(self._first) > self._size:
            self._first.popitem(last=False)
        self._joinmap.note_group_message(account, own_id, peer_id, event_id, persist=False)

    def find(self, account: str, own_id: int) -> tuple[int, int] | None:
        """(chat, event id) of the account's own id, None when it saw no such message of a
        basic group (a private chat's, or one older than the join map keeps)."""
        return self._joinmap.group_message(account, own_id)


@dataclass
class Counters:
    """The flow's plain counters, read by SubscriberCollector and the /status page."""

    published: int = 0  # events handed to the publisher
    duplicates: int = 0  # events dropped as already published
    polls: int = 0  # chats polled
    poll_found: int = 0  # messages a poll published that the updates had missed


class PollQueue:
    """The chats the gap poller reads next: some at once (a gap, a reconnect, a takeover),
    or every joined chat (the first round after start, and each interval)."""

    def __init__(self) -> None:
        self._chats: set[int] = set()
        self._all = True  # the first poll covers every chat (missed while down)
        self._wake = asyncio.Event()
        self._waiting = False

    def soon(self, peer_id: int | None = None) -> None:
        """Asks for a poll of one chat (or, with None, of every chat) at once."""
        if peer_id is None:
            self._all = True
        else:
            self._chats.add(peer_id)
        self._wake.set()

    def take(self) -> tuple[bool, set[int]]:
        """What was asked for since the last take: (every chat?, the chats named)."""
        everything, chats = self._all, set(self._chats)
        self._all = False
        self._chats.clear()
        return everything, chats

    @property
    def pending(self) -> bool:
        """Whether a poll was asked for and not taken yet."""
        return self._all or bool(self._chats)

    @property
    def waiting(self) -> bool:
        """Whether the poller is waiting (in `wait`) for the next ask or the interval."""
        return self._waiting

    async def wait(self, interval: float) -> None:
        """Returns when a poll is asked for, or after `interval` s (then every chat is due)."""
        if self.pending:
            return
        self._wake.clear()
        self._waiting = True
        try:
            # Not wait_for: on 3.11 it can swallow the cancel of stop() (bpo-42130).
            async with asyncio.timeout(interval):
                await self._wake.wait()
        except TimeoutError:
            self._all = True
        finally:
            self._waiting = False


class Shared:
    """What the subscription flow's parts share (see the module's docstring)."""

    def __init__(
        self,
        pool: TeleClients,
        joinmap: JoinMap,
        publisher: Publisher,
        *,
        media_queue: queries.MediaQueue | None,
        clock: Callable[[], float],
        recent_size: int,
    ) -> None:
        self.pool = pool
        self.joinmap = joinmap
        self.publisher = publisher
        self.media_queue = media_queue
        self.clock = clock
        self.recent = Recent(recent_size)
        self.group_ids = GroupIds(joinmap, recent_size)
        self.counts = Counters()
        # One join or leave at a time (the API's and the takeovers'): two POSTs for one chat
        # must not join two accounts, nor a takeover beside an API join of the same chat.
        self.api_lock = asyncio.Lock()
        self.polls = PollQueue()
        self.watermarks = Watermarks(joinmap, self.polls.soon)
        self.running = False  # the pool keeps calling back until it stops: ignored after

    def joined(self, peer_id: int | None) -> dict[str, Any] | None:
        """The chat's subscription if an account is in it, else None."""
        sub = self.joinmap.get(peer_id) if peer_id is not None else None
        if sub is None or sub["state"] != State.JOINED:
            return None
        return sub

    def joined_accounts(self, peer_id: int) -> list[str]:
        """The accounts in the chat, oldest membership first."""
        members = self.joinmap.memberships(peer_id)
        return [m["account"] for m in members if m["state"] == State.JOINED]


def peer_of(entity: Any) -> dict[str, Any]:
    """The peer dict (as the API answers it) of a Telethon chat entity."""
    peer, _ = parser.parse_peer(entity)
    return peer


def event_peer(peer: dict[str, Any]) -> dict[str, Any]:
    """The part of a peer dict an event carries."""
    return {k: peer.get(k) for k in ("id", "type", "title", "username")}
