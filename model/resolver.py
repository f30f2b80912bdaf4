"""How one account finds a peer: its session's entity cache first, a resolution last.

An id is looked up only in the session's entity cache (the SQLite `entities` table Telethon
fills from every answer), but for a basic group's (-CHAT_ID), which needs no access hash: a
member reaches it by the id alone. A username is looked up there too, and only when that misses is
`contacts.resolveUsername` sent, paid from the account's resolution budget
(model.budgetstore.ResolveBudget). Bursts of resolutions are what get accounts flood-waited
for hours, so a username is resolved at most once at a time per account (concurrent callers
share the one in flight), the answer is committed to the session file at once, and the
pool prefers accounts that already know the peer (`knows`). An invite link is checked with
messages.checkChatInvite instead: it costs no resolution.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from telethon import functions, types, utils

from common.errors import PeerNotFound, PeerPrivate, RateLimited, UnknownUsername
from common.utils import PeerRef
from model.account import AccountStatus
from model.budgetstore import ResolveBudget
from model.tgerrors import RESOLVE

log = logging.getLogger(__name__)

Entity = Any  # types.User | types.Chat | types.Channel (Telethon ships no type stubs)


class Invoke(Protocol):
    """`model.connection.Connection.invoke`: sends one request as the account."""

    async def __call__(
        self, request: Any, *, peer: str = "", blame: Mapping[str, str] | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class Cached:
    """A peer as one account's session holds it: its marked id and its input peer."""

    marked_id: int
    input_peer: Any


class PeerResolver:
    """Finds peers for one account: `session` is its Telethon session (the entity cache),
    `invoke` sends a request as the account, `budget` pays for resolutions."""

    def __init__(
        self, session: Any, invoke: Invoke, status: AccountStatus, budget: ResolveBudget
    ) -> None:
        self._session = session
        self._invoke = invoke
        self._status = status
        self._budget = budget
        self._resolving: dict[str, asyncio.Future[tuple[Cached, Entity]]] = {}

    # --- what the pool asks before it picks the account ---

    def knows(self, peer: PeerRef) -> bool:
        """Whether the session holds the peer's access hash (or is resolving it right now)."""
        if peer.username is not None and peer.username in self._resolving:
            return True
        return self.cached(peer) is not None

    def resolution_ready_in(self) -> float:
        """Seconds until this account may send a resolution (a flood wait, the budget)."""
        return max(self._status.flood_ready_in(RESOLVE), self._budget.ready_in())

    def resolutions_left(self) -> tuple[int, int]:
        """The budget's resolutions left (this minute, today); a flood wait not counted."""
        return self._budget.left()

    def blocked_by_budget(self) -> bool:
        """Whether the budget, not a flood wait, is what holds resolutions back longest."""
        return self._budget.ready_in() > self._status.flood_ready_in(RESOLVE)

    # --- finding the peer ---

    def cached(self, peer: PeerRef) -> Cached | None:
        """The peer from the session's entity cache, by username or by any id it may be."""
        if peer.username is not None:
            row = self._session.get_entity_rows_by_username(peer.username)
            return _from_row(row) if row else None
        for marked in peer.marked_ids():
            row = self._session.get_entity_rows_by_id(marked, exact=True)
            if row:
                return _from_row(row)
        return None

    async def input_peer(self, peer: PeerRef) -> tuple[Cached, Entity | None]:
        """The peer's input form, from the cache if possible; the entity when it came free
        (a resolution or an invite check answers with it)."""
        if peer.invite is not None:
            entity = await self.entity_from_invite(peer)
            return Cached(utils.get_peer_id(entity), utils.get_input_peer(entity)), entity
        cached = self.cached(peer)
        if cached is not None:
            return cached, None
        if peer.kind == "chat" and peer.id is not None:
            # A basic group has no access hash: its id is all a member needs (Telegram
            # answers a non-member CHAT_ID_INVALID, and the pool asks the next account).
            return Cached(-peer.id, types.InputPeerChat(peer.id)), None
        if peer.username is None:
            raise PeerNotFound(str(peer), unknown_id_message(peer))
        return await self._resolve_once(peer.username, str(peer))

    async def entity(self, cached: Cached, raw: str) -> Entity:
        """The User, Chat or Channel of a cached peer (channels.getChannels & co)."""
        p = cached.input_peer
        if isinstance(p, types.InputPeerChannel):
            channel = types.InputChannel(p.channel_id, p.access_hash)
            request: Any = functions.channels.GetChannelsRequest([channel])
        elif isinstance(p, types.InputPeerChat):
            request = functions.messages.GetChatsRequest([p.chat_id])
        else:
            request = functions.users.GetUsersRequest([types.InputUser(p.user_id, p.access_hash)])
        found = await self._invoke(request, peer=raw)
        return pick_entity(getattr(found, "chats", found), cached.marked_id, raw)

    async def entity_from_invite(self, peer: PeerRef) -> Entity:
        """The chat an invite link leads to, when the account may see it without joining
        (already in, or a peek); PeerPrivate otherwise."""
        invite = await self._invoke(
            functions.messages.CheckChatInviteRequest(peer.invite), peer=str(peer)
        )
        chat = getattr(invite, "chat", None)  # ChatInviteAlready, ChatInvitePeek
        if chat is None:
            raise PeerPrivate(str(peer), f"{peer} is private: join it first")
        return chat

    async def _resolve_once(self, username: str, raw: str) -> tuple[Cached, Entity]:
        """One `contacts.resolveUsername` per username at a time on this account."""
        while (pending := self._resolving.get(username)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled, not the resolution it waited on
        future: asyncio.Future[tuple[Cached, Entity]] = asyncio.get_running_loop().create_future()
        self._resolving[username] = future
        try:
            result = await self._resolve(username, raw)
        except asyncio.CancelledError:
            future.cancel()  # the waiters try again themselves
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # marks it retrieved: there may be no waiter at all
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._resolving[username]

    async def _resolve(self, username: str, raw: str) -> tuple[Cached, Entity]:
        wait = self._budget.ready_in()
        if wait > 0:
            raise RateLimited(wait, f"account {self._status.name} spent its username resolutions")
        self._budget.take()
        log.info("account %s resolves a username", self._status.name)
        try:
            found = await self._invoke(
                functions.contacts.ResolveUsernameRequest(username), peer=raw
            )
        except PeerNotFound as e:  # USERNAME_NOT_OCCUPIED, USERNAME_INVALID
            raise UnknownUsername(username, raw, e.message) from None
        # Telethon writes entities to SQLite at once but commits only every minute or at
        # disconnect; commit now, so a crash can't make the account pay for this again.
        self._session.save()
        marked = utils.get_peer_id(found.peer)
        entity = next(
            (e for e in [*found.chats, *found.users] if utils.get_peer_id(e) == marked), None
        )
        if entity is None:
            raise PeerNotFound(raw)
        return Cached(marked, utils.get_input_peer(entity)), entity


def _from_row(row: tuple[int, int]) -> Cached:
    marked_id, access_hash = row
    bare, kind = utils.resolve_id(marked_id)
    if kind is types.PeerUser:
        return Cached(marked_id, types.InputPeerUser(bare, access_hash))
    if kind is types.PeerChat:
        return Cached(marked_id, types.InputPeerChat(bare))
    return Cached(marked_id, types.InputPeerChannel(bare, access_hash))


def pick_entity(found: Iterable[Any], marked_id: int, raw: str) -> Entity:
    """The entity of `marked_id` among `found` (an answer's chats or users); PeerNotFound
    when it is missing or empty (userEmpty, chatEmpty)."""
    for entity in found:
        if utils.get_peer_id(entity) == marked_id:
            if isinstance(entity, (types.UserEmpty, types.ChatEmpty)):
                break
            return entity
    raise PeerNotFound(raw)


def unknown_id_message(peer: PeerRef) -> str:
    """Why an id no account has met can't be served, and what to do about it."""
    return (
        f"no account knows the id {peer}: ask once by @username (or t.me link) so an "
        "account learns its access hash; ids work after that"
    )
