"""Joins and leaves: what POST and DELETE /api/v1/subscriptions do, and the join map kept true.

A join is the pool's pick among the accounts that can join. An account at its channel limit
(model.joinmap.CHANNELS_PER_ACCOUNT) is skipped, and so is one that Telegram answered
CHANNELS_TOO_MUCH (it may be in chats the join map doesn't know: joined by hand, or its limit
is lower) until it leaves a chat through the API or FULL_RECHECK s pass; the join moves to the
next account, and only when none can join is the answer 503 NO_ACCOUNT_AVAILABLE. A chat that
admits members only with an admin's approval (INVITE_REQUEST_SENT) gets one join request,
from one account, and the answer 403 PEER_PRIVATE saying so; a later POST of the chat is
joined by that same account (so the admins see one request), which works once they approved
it. The takeover joins through here too (`join`), by the same rules.

Each change of a membership is recorded in the join map and said (subscription.changed). The
watermark of a new join starts at the chat's newest message: history is not news.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.errors import (
    AccountUnusable,
    AlreadySubscribed,
    JoinRequestSent,
    NoAccountAvailable,
    NotSubscribed,
    TelegramError,
    TgcError,
)
from common.utils import PeerRef, is_basic_group
from model.joinmap import CHANNELS_PER_ACCOUNT, State
from model.teleclient import TeleClient
from service.events import make_event
from service.subscription.state import Shared, event_peer, peer_of

# The flow's one logger, named as before it was split in parts: log filters name it.
log = logging.getLogger("service.subscriber")

# An account Telegram answered CHANNELS_TOO_MUCH is not asked to join again for this long
# (unless it leaves a chat through the API first): its owner may have freed room by hand,
# and one wasted join an hour per full account costs nothing.
FULL_RECHECK = 3600.0
JOIN_REQUESTS_MAX = 10_000  # chats whose pending join request is remembered (the oldest go)


class Joins:
    """Joins and leaves chats for the API (and for the takeover), recording each in the join
    map and publishing subscription.changed."""

    def __init__(self, shared: Shared, *, channel_limit: int = CHANNELS_PER_ACCOUNT) -> None:
        self._shared = shared
        self._channel_limit = channel_limit
        self._leaving: set[tuple[int, str]] = set()
        # Accounts Telegram found full (CHANNELS_TOO_MUCH): name → when, on the clock.
        self._full: dict[str, float] = {}
        # Chats with a join request pending: the ref's key → the account that filed it.
        self._requests: dict[str, str] = {}

    # --- the API's joins ----------------------------------------------------------------

    async def subscribe(self, ref: PeerRef) -> dict[str, Any]:
        """Joins the chat with one account (the pool's pick among those below the channel
        limit), records it, publishes subscription.changed. AlreadySubscribed (409) when an
        account is in it already."""
        # One join or leave at a time. They are rare, and a flood wait answers at once (the
        # pool doesn't sleep on it).
        async with self._shared.api_lock:
            return await self._subscribe(ref)

    async def _subscribe(self, ref: PeerRef) -> dict[str, Any]:
        known = self._known(ref)
        if known is not None and known["state"] == State.JOINED:
            raise AlreadySubscribed(str(ref), known)
        try:
            entity, account = await self.join(ref)
        except NoAccountAvailable:
            pool = self._shared.pool
            full = sorted(tc.name for tc in pool if tc.usable and self._is_full(tc.name))
            if not full:
                raise
            raise NoAccountAvailable(
                f"no account can join {ref}: at the channel limit: {', '.join(full)}"
            ) from None
        peer = peer_of(entity)
        existing = self._shared.joinmap.get(peer["id"])
        start = await self.newest_id(account, peer["id"])
        # The invite is kept: it is how another account gets in when this one is banned.
        sub = await self.record_join(peer, account.name, start, invite=ref.invite)
        if existing is not None and existing["state"] == State.JOINED:
            # Known under another name (an invite link of a chat joined by username): one
            # subscription per chat; this account's membership is recorded all the same.
            raise AlreadySubscribed(str(ref), existing)
        return sub

    async def join(self, ref: PeerRef) -> tuple[Any, TeleClient]:
        """Joins the chat with the pool's pick among the accounts that can join it now (not
        full, not beside another account's pending join request); returns (the chat's
        entity, the account). Nothing is recorded: the caller does (`record_join`)."""
        return await self._shared.pool.run(self._joiner(ref), ref)

    def _joiner(self, ref: PeerRef) -> Callable[[TeleClient], Awaitable[Any]]:
        key = _ref_key(ref)

        async def join(tc: TeleClient) -> Any:
            # AccountUnusable: the pool moves on to the next account (not broken, just not
            # this one).
            if self._is_full(tc.name):
                raise AccountUnusable(tc.name, "full", "at its channel limit")
            asked = self._requests.get(key)
            if asked is not None and asked != tc.name and self._asker_usable(asked):
                raise AccountUnusable(tc.name, "skipped", f"{asked}'s join request is pending")
            try:
                entity = await tc.join(ref)
            except JoinRequestSent:
                self._remember_request(key, tc.name)
                raise
            except TelegramError as e:
                if e.rpc_error != "CHANNELS_TOO_MUCH":
                    raise
                self._mark_full(tc.name)
                raise AccountUnusable(
                    tc.name, "full", "Telegram answered CHANNELS_TOO_MUCH"
                ) from None
            self._requests.pop(key, None)
            return entity

        return join

    def _remember_request(self, key: str, account: str) -> None:
        self._requests.pop(key, None)
        self._requests[key] = account
        while len(self._requests) > JOIN_REQUESTS_MAX:
            del self._requests[next(iter(self._requests))]

    def _mark_full(self, account: str) -> None:
        self._full[account] = self._shared.clock()
        log.warning(
            "account %s is full (CHANNELS_TOO_MUCH, %d chats in the join map): no"
            " joins for it for %.0f s or until it leaves a chat through the API",
            account,
            self._shared.joinmap.count(account),
            FULL_RECHECK,
        )

    def _is_full(self, account: str) -> bool:
        """At the channel limit by the join map's count, or found full by Telegram less
        than FULL_RECHECK ago and not left a chat through the API since."""
        if self._shared.joinmap.count(account) >= self._channel_limit:
            return True
        at = self._full.get(account)
        if at is None:
            return False
        if self._shared.clock() - at >= FULL_RECHECK:
            del self._full[account]
            return False
        return True

    def _asker_usable(self, account: str) -> bool:
        try:
            return self._shared.pool.get(account).usable and not self._is_full(account)
        except NoAccountAvailable:
            return False  # not in the pool any more

    # --- the API's leaves ---------------------------------------------------------------

    async def unsubscribe(self, ref: PeerRef) -> dict[str, Any]:
        """Every account in the chat leaves it; NotSubscribed (409) if none is in it. An
        orphaned chat (its account banned) is ended: nothing is taken over after that."""
        async with self._shared.api_lock:
            return await self._unsubscribe(ref)

    async def _unsubscribe(self, ref: PeerRef) -> dict[str, Any]:
        known = self._known(ref)
        if known is not None and known["state"] == State.BANNED_ACCOUNT:
            return await self._drop_orphan(known)  # nobody to leave: just stop taking it over
        if known is None or known["state"] != State.JOINED:
            raise NotSubscribed(str(ref))
        peer_id = known["peer"]["id"]
        target = PeerRef.from_marked_id(peer_id)
        last = known
        for member in self._shared.joinmap.memberships(peer_id):
            if member["state"] != State.JOINED:
                continue
            tc = self._shared.pool.get(member["account"])
            # Telegram's updateChannel for our own leave is not a kick.
            self._leaving.add((peer_id, tc.name))
            try:
                await tc.leave(target)
            except AccountUnusable:
                if tc.usable:
                    raise  # disconnected: still in the chat; the caller may try again
                # banned or logged out: out of the chat for our purposes
            finally:
                self._leaving.discard((peer_id, tc.name))
            self._full.pop(tc.name, None)  # a chat less: room for a join again
            last = await self.change(peer_id, member["account"], State.LEFT) or last
        return last

    async def _drop_orphan(self, sub: dict[str, Any]) -> dict[str, Any]:
        """DELETE of an orphaned chat: its memberships of banned or logged-out accounts
        become left (through the API), so it is no longer orphaned nor taken over (the
        takeover's backoff of it goes with its next batch)."""
        peer_id, last = sub["peer"]["id"], sub
        for member in self._shared.joinmap.memberships(peer_id):
            if member["state"] == State.BANNED_ACCOUNT:
                last = await self.change(peer_id, member["account"], State.LEFT) or last
        return last

    def leaving(self, peer_id: int, account: str) -> bool:
        """Whether the account is leaving the chat through the API right now (Telegram's
        updateChannel about it is then no kick)."""
        return (peer_id, account) in self._leaving

    def _known(self, ref: PeerRef) -> dict[str, Any] | None:
        joinmap = self._shared.joinmap
        if ref.username is not None:
            return joinmap.find_username(ref.username)
        for marked in ref.marked_ids():
            sub = joinmap.get(marked)
            if sub is not None:
                return sub
        return None

    # --- recording ----------------------------------------------------------------------

    async def newest_id(self, tc: TeleClient, peer_id: int) -> int:
        """The chat's newest message id now (0 if unknown), in `tc`'s own ids for a basic
        group: what was posted before a join is history, not news, so the watermark (a basic
        group's: this account's cursor) starts there."""
        try:
            _, newest = await tc.get_history(PeerRef.from_marked_id(peer_id), limit=1)
        except TgcError as e:
            log.info("newest message of %s unknown (%s): the poll starts it", peer_id, e.code)
            return 0
        return int(newest[0].id) if newest else 0

    async def record_join(
        self, peer: dict[str, Any], account: str, start: int = 0, invite: str | None = None
    ) -> dict[str, Any]:
        """Records the account's join (its watermark at `start`, the invite link it came
        by) and publishes subscription.changed; returns the subscription."""
        sub = self._shared.joinmap.record_join(
            peer["id"],
            account,
            type=peer["type"],
            title=peer.get("title") or "",
            username=peer.get("username"),
            invite=invite,
        )
        if start and self._start_watermark(peer["id"], account, start):
            sub["last_message_id"] = start
        await self.publish_changed(sub)
        return sub

    def _start_watermark(self, peer_id: int, account: str, start: int) -> bool:
        joinmap = self._shared.joinmap
        if is_basic_group(peer_id):
            return joinmap.set_member_last_message_id(peer_id, account, start)
        return joinmap.set_last_message_id(peer_id, start)

    async def change(self, peer_id: int, account: str, state: State) -> dict[str, Any] | None:
        """Records a membership's new state and says so; None for a membership the join
        map doesn't know."""
        sub = self._shared.joinmap.set_state(peer_id, account, state)
        if sub is not None:
            await self.publish_changed(sub)
        return sub

    async def publish_changed(self, sub: dict[str, Any]) -> None:
        """Publishes subscription.changed for the subscription as it is now."""
        now = self._shared.clock()
        event = make_event(
            "subscription.changed",
            event_peer(sub["peer"]),
            account=sub["account"],
            at=now,
            extra={"state": sub["state"], "subscription": sub},
            id_suffix=f"{sub['account']}:{sub['state']}:{int(now * 1000)}",
        )
        await self._shared.publisher.publish_event(event)
        self._shared.counts.published += 1


def _ref_key(ref: PeerRef) -> str:
    """One key for the spellings of one reference (@Name, t.me/name; an invite; an id)."""
    if ref.username is not None:
        return f"@{ref.username}"
    if ref.invite is not None:
        return f"+{ref.invite}"
    return f"{ref.kind}:{ref.id}"
