"""Update intake: Telegram's updates (and the poll's pages) → events, each published once.

    pool.on_update ──▶ Intake.on_update ──▶ parser ──▶ Publisher (outbox first)
                                   └──────▶ JoinMap (kicked, the watermarks)

Once: an event reaches the publisher once even when several accounts sit in the chat and
when both the push and the poll bring it. Two guards, both cheap:

- `Recent`, a bounded set of the last event ids (`CHAT:MSG:EVENT[:EDIT_DATE]`) handed to
  the publisher: an id is claimed before the first await, so concurrent callbacks of two
  accounts can't both publish it (Telethon dispatches each update in its own task);
- the watermark per chat (service.subscription.watermarks): a new message at or below it
  is old news, also after a restart.

Basic groups number their messages per account (the same message has another id for each
account in it; channels and megagroups have per-chat ids), so there:
- the watermark is the account's own cursor, in its own ids;
- across accounts a message is claimed by what it is (chat, date, sender, text, media, and
  the edit date of an edit: a hash in `Recent`), so one event comes of a message however
  many accounts see it, pushed or polled;
- after a restart, when the content hashes are gone, the cursors keep a poll or a replayed
  update of the same account from publishing again. Another account's first sight of a
  message published before may publish it again under that account's id (a duplicate,
  never a loss).
- updateDeleteMessages names no chat, only the account's own ids (private chats' too):
  each id the account saw lately in a basic group (`GroupIds`) tells the chat, and the
  deletion is published under the id the message.new carried, once however many accounts
  are told. An id it did not see since the start (a private chat's, or older) is ignored.
- a removal of one of the pool's accounts from a basic group (messageActionChatDeleteUser
  naming it, pushed or polled, by any account's sight) marks its membership kicked, as
  updateChannel does for a channel.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from telethon.tl import types

from common.errors import TgcError
from common.utils import PeerRef
from model.joinmap import State
from model.media import Media
from model.teleclient import TeleClient
from model.telethon_internals import update_entities
from service import parser, queries
from service.events import Event, make_event
from service.subscription.joins import Joins
from service.subscription.state import Shared, event_peer, peer_of

log = logging.getLogger("service.subscriber")  # the flow's one logger (see joins.py)


class Intake:
    """Turns updates into message.new/edited/deleted events (once each, watermarks moved)
    and a removal from a channel into a kick."""

    def __init__(self, shared: Shared, joins: Joins) -> None:
        self._shared = shared
        self._joins = joins

    async def on_update(self, tc: TeleClient, update: Any) -> None:
        """The pool's update callback: what account `tc` was told."""
        if not self._shared.running:
            return
        if isinstance(update, types.UpdateNewChannelMessage | types.UpdateNewMessage):
            await self.on_message(tc, update.message, "message.new")
        elif isinstance(update, types.UpdateEditChannelMessage | types.UpdateEditMessage):
            await self.on_message(tc, update.message, "message.edited")
        elif isinstance(update, types.UpdateDeleteChannelMessages):
            peer_id = parser.marked_id(types.PeerChannel(update.channel_id))
            await self._on_deleted(tc, peer_id, update.messages)
        elif isinstance(update, types.UpdateDeleteMessages):
            await self._on_group_deleted(tc, update.messages)
        elif isinstance(update, types.UpdateChannel):
            await self._on_channel(tc, update)

    async def on_message(self, tc: TeleClient, msg: Any, event: str) -> None:
        """A new or edited message as account `tc` saw it: published unless it was."""
        if not isinstance(msg, types.Message | types.MessageService):
            return
        sub = self._shared.joined(parser.marked_id(msg.peer_id))
        if sub is None:
            return  # a chat the account is in but nobody subscribed to
        if isinstance(msg.peer_id, types.PeerChannel):
            await self._channel_message(tc, sub, msg, event)
        elif isinstance(msg.peer_id, types.PeerChat):
            await self._group_message(tc, sub, msg, event)

    async def _channel_message(
        self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str
    ) -> None:
        peer_id = sub["peer"]["id"]
        last = self._shared.joinmap.last_message_id(peer_id)
        if event == "message.new" and msg.id <= last:
            self._shared.counts.duplicates += 1
            return
        await self.publish_message(tc, sub, msg, event)
        if event == "message.new":
            self._shared.watermarks.advance(peer_id, msg.id)

    async def _group_message(
        self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str
    ) -> None:
        # Basic groups number messages per account: the same message has another id for
        # each account. The account's own cursor tells old news (also after a restart);
        # across accounts the message is claimed by what it is.
        peer_id = sub["peer"]["id"]
        last = self._shared.joinmap.member_last_message_id(peer_id, tc.name)
        if event == "message.new" and msg.id <= last:
            self._shared.counts.duplicates += 1
            return
        await self.publish_group(tc, sub, msg, event)
        if event == "message.new" and tc.name in self._shared.joined_accounts(peer_id):
            self._shared.watermarks.advance_group(peer_id, tc.name, msg.id)

    async def publish_group(
        self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str
    ) -> bool:
        """A basic group's message, published once across accounts; False when it was.
        A new one's id is noted for its deletion, and a removal of an account it names is
        recorded, whichever account's sight it is."""
        peer_id = sub["peer"]["id"]
        key = _content_key(peer_id, msg, event)
        if event == "message.new":
            self._shared.group_ids.note(tc.name, msg.id, peer_id, key)  # before the claim
        if not self._shared.recent.claim(key):
            self._shared.counts.duplicates += 1
            published = False
        else:
            try:
                published = await self.publish_message(tc, sub, msg, event)
            except BaseException:
                self._shared.recent.forget(key)  # not in the outbox: the next sight does it
                raise
        if event == "message.new":
            await self._group_removal(peer_id, msg)
        return published

    async def _group_removal(self, peer_id: int, msg: Any) -> None:
        """messageActionChatDeleteUser naming an account of the pool that is in the chat:
        removed (by an admin, or it left other than through the API): kicked."""
        action = getattr(msg, "action", None)
        if not isinstance(action, types.MessageActionChatDeleteUser):
            return
        for account in self._shared.joined_accounts(peer_id):
            try:
                user_id = self._shared.pool.get(account).user_id
            except TgcError:
                continue  # an account no longer in the pool
            if user_id == action.user_id and not self._joins.leaving(peer_id, account):
                log.warning("account %s was removed from %s", account, peer_id)
                await self._joins.change(peer_id, account, State.KICKED)

    async def publish_message(
        self, tc: TeleClient, sub: dict[str, Any], msg: Any, event: str
    ) -> bool:
        """Parses and publishes once; False when it was already published."""
        message, media = parser.parse_message(msg, tc.name)
        ev = make_event(
            event,
            event_peer(sub["peer"]),
            account=tc.name,
            message=message,
            at=_message_time(msg, event, self._shared.clock),
        )
        return await self.publish_once(ev, media)

    async def publish_once(self, ev: Event, media: list[Media] | None = None) -> bool:
        """Hands the event to the publisher unless its id was handed over before (True
        when it was published now). Its files go to the media queue first."""
        shared = self._shared
        if not shared.recent.claim(ev.message_id):
            shared.counts.duplicates += 1
            return False
        if media and shared.media_queue is not None:
            # The files go to the media queue like the API's (a media.stored event follows
            # when stored); the event's descriptors show the state they have now.
            try:
                queries.attach_media([ev.body["message"]], media, shared.media_queue)
            except TgcError as e:
                log.warning("media of %s not queued: %s", ev.message_id, e.code)
        try:
            await shared.publisher.publish_event(ev)
        except BaseException:
            # Not in the outbox: let the next sight of it (a replay, the poll) publish it.
            shared.recent.forget(ev.message_id)
            raise
        shared.counts.published += 1
        return True

    async def _on_deleted(self, tc: TeleClient, peer_id: int | None, ids: Iterable[int]) -> None:
        sub = self._shared.joined(peer_id)
        if sub is None:
            return
        for msg_id in ids:
            ev = make_event(
                "message.deleted",
                event_peer(sub["peer"]),
                account=tc.name,
                message={"id": msg_id, "peer_id": peer_id},
                clock=self._shared.clock,
            )
            await self.publish_once(ev)

    async def _on_group_deleted(self, tc: TeleClient, ids: Iterable[int]) -> None:
        """updateDeleteMessages: the account's own ids, of basic groups and private chats."""
        by_chat: dict[int, list[int]] = {}
        for own_id in ids:
            found = self._shared.group_ids.find(tc.name, own_id)
            if found is not None:
                by_chat.setdefault(found[0], []).append(found[1])
        for peer_id, event_ids in by_chat.items():
            await self._on_deleted(tc, peer_id, event_ids)

    async def _on_channel(self, tc: TeleClient, update: types.UpdateChannel) -> None:
        """updateChannel: something about the channel changed for this account; it may
        have been removed (kicked or banned: ChannelForbidden, or left=True)."""
        peer_id = parser.marked_id(types.PeerChannel(update.channel_id))
        if peer_id is None:
            return
        joinmap = self._shared.joinmap
        member = next((m for m in joinmap.memberships(peer_id) if m["account"] == tc.name), None)
        if (
            member is None
            or member["state"] != State.JOINED
            or self._joins.leaving(peer_id, tc.name)
        ):
            return
        entity = update_entities(update).get(peer_id)
        if entity is None:
            try:
                entity = await tc.get_entity(PeerRef.from_marked_id(peer_id))
            except TgcError as e:
                log.info("account %s lost %s (%s)", tc.name, peer_id, e.code)
                entity = None
        gone = (
            entity is None
            or isinstance(entity, types.ChannelForbidden)
            or bool(getattr(entity, "left", False))
        )
        if isinstance(entity, types.Channel):
            peer = peer_of(entity)
            joinmap.update_peer(peer_id, title=peer.get("title"), username=peer.get("username"))
        if gone:
            log.warning("account %s was removed from %s", tc.name, peer_id)
            await self._joins.change(peer_id, tc.name, State.KICKED)


def _content_key(peer_id: int, msg: Any, event: str) -> str:
    """What a basic-group message is, the same for every account that sees it (its id is
    not): chat, date, sender, text, service action, the media's id (album items share the
    rest), and for an edit its date (a new message read after an edit keeps its key)."""
    media = getattr(msg, "media", None)
    item = getattr(media, "photo", None) or getattr(media, "document", None)
    action = getattr(msg, "action", None)
    # Whom a service message is about: two removals by one admin within a second differ.
    about = getattr(action, "user_id", None) or getattr(action, "users", None)
    edited = getattr(msg, "edit_date", None) if event != "message.new" else None
    what = (
        f"{peer_id}:{msg.date}:{parser.marked_id(msg.from_id)}:{event}:{edited}:"
        f"{type(action).__name__}:{about}:{getattr(item, 'id', None)}:"
    )
    text = (getattr(msg, "message", "") or "").encode()
    return "group:" + hashlib.blake2b(what.encode() + text, digest_size=16).hexdigest()


def _message_time(msg: Any, event: str, clock: Callable[[], float]) -> Any:
    if event == "message.edited" and getattr(msg, "edit_date", None) is not None:
        return msg.edit_date
    if event == "message.new" and getattr(msg, "date", None) is not None:
        return msg.date
    return clock()
