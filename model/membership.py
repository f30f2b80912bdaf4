"""Joining and leaving chats for one account: the subscriber's side of a `TeleClient`.

A channel or megagroup is joined by username or id (channels.joinChannel); a basic group has
no username and is joined by invite link (messages.importChatInvite), like any private chat.
Joining twice or leaving twice is not an error. A chat that admits members only with an
admin's approval answers INVITE_REQUEST_SENT: Telegram files the account's request, and the
caller hears JoinRequestSent.
"""

from __future__ import annotations

from typing import Any

from telethon import functions, types, utils

from common.errors import InvalidArgument, JoinRequestSent, TelegramError
from common.utils import PeerRef
from model import tlrequests as tl
from model.account import AccountStatus
from model.resolver import Entity, Invoke, PeerResolver, pick_entity


class Membership:
    """Joins and leaves for one account: `invoke` sends as the account, `peers` finds the
    chat, `session` is its Telethon session (committed after a join by invite)."""

    def __init__(
        self, invoke: Invoke, peers: PeerResolver, session: Any, status: AccountStatus
    ) -> None:
        self._invoke = invoke
        self._peers = peers
        self._session = session
        self._status = status

    async def join(self, ref: PeerRef) -> Entity:
        """Joins a channel or megagroup (by username or id) or any chat by invite link.

        A chat that needs an admin's approval raises JoinRequestSent (the request is filed;
        joining again after the approval succeeds); CHANNELS_TOO_MUCH stays TelegramError
        (the subscriber marks the account full and the pool tries another)."""
        raw = str(ref)
        if ref.invite is not None:
            return await self._join_invite(ref)
        cached, entity = await self._peers.input_peer(ref)
        p = cached.input_peer
        if not isinstance(p, types.InputPeerChannel):
            raise InvalidArgument(
                "ref", f"{raw} is not a channel: basic groups join by invite link"
            )
        request = functions.channels.JoinChannelRequest(tl.input_channel(p))
        try:
            found = getattr(await self._invoke(request, peer=raw), "chats", [])
        except TelegramError as e:
            self._member_already(e, raw)
            found = []
        if any(utils.get_peer_id(c) == cached.marked_id for c in found):
            return pick_entity(found, cached.marked_id, raw)
        return entity or await self._peers.entity(cached, raw)

    async def _join_invite(self, ref: PeerRef) -> Entity:
        raw = str(ref)
        request = functions.messages.ImportChatInviteRequest(ref.invite)
        try:
            updates = await self._invoke(request, peer=raw)
        except TelegramError as e:
            self._member_already(e, raw)
            return await self._peers.entity_from_invite(ref)
        chats = getattr(updates, "chats", [])
        if not chats:
            raise TelegramError("EMPTY_ANSWER", f"joining {raw} returned no chat")
        self._session.save()
        return chats[0]

    def _member_already(self, e: TelegramError, raw: str) -> None:
        """A join that met USER_ALREADY_PARTICIPANT succeeded; any other error is raised
        (INVITE_REQUEST_SENT as JoinRequestSent)."""
        if e.rpc_error == "INVITE_REQUEST_SENT":
            raise JoinRequestSent(raw, self._status.name) from None
        if e.rpc_error != "USER_ALREADY_PARTICIPANT":
            raise e

    async def leave(self, ref: PeerRef) -> Entity:
        """Leaves a channel, megagroup or basic group; leaving twice is not an error."""
        cached, entity = await self._peers.input_peer(ref)
        raw = str(ref)
        entity = entity or await self._peers.entity(cached, raw)
        request = tl.leave_request(cached.input_peer)
        if request is None:
            raise InvalidArgument("ref", f"{raw} is a user: there is nothing to leave")
        try:
            await self._invoke(request, peer=raw)
        except TelegramError as e:
            if e.rpc_error != "USER_NOT_PARTICIPANT":
                raise
        return entity
