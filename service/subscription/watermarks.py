"""The watermarks: per chat, "every message up to here was published".

A channel's or megagroup's watermark is the join map's `last_message_id` of the chat. A new
message at or below it is old news, also after a restart (when the recent set is empty and
Telethon replays updates). It moves only when it stays true: over the ids right after it
that are published, or past a page the poll read whole. A message beyond a gap is published
at once; if the gap is still there GAP_WAIT s later (not just an update handled out of
order), the chat is polled and the poll reads the gap from Telegram.

The watermark moves after the publisher has the event in its outbox, so a crash in between
publishes the message again (a duplicate with the same message_id), never loses it. It moves
in memory; the subscriber's flush writes it once a second.

Basic groups number their messages per account, so there the watermark is per account: the
join map's cursor of the (group, account) membership, in that account's own ids. An
account's ids are shared with its private chats and other basic groups, so an id past its
cursor may sit behind other chats' messages rather than a lost one: it waits here as above,
and after GAP_WAIT the chat is polled *as that account* (the poller asks `gapped`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from model.joinmap import JoinMap

GAP_WAIT = 1.0  # s an id published past the watermark may wait before its chat is polled


class Watermarks:
    """Moves the join map's watermarks over published ids; asks for a poll (`poll_soon`)
    when an id waits past one longer than GAP_WAIT."""

    def __init__(self, joinmap: JoinMap, poll_soon: Callable[[int], None]) -> None:
        self._joinmap = joinmap
        self._poll_soon = poll_soon
        self._ahead: dict[int, set[int]] = {}  # per chat: ids published past the watermark
        self._group_ahead: dict[tuple[int, str], set[int]] = {}  # the same, basic groups
        self._gap_timers: dict[int, asyncio.TimerHandle] = {}

    def stop(self) -> None:
        """Cancels the gap checks armed (the subscriber stops)."""
        for timer in self._gap_timers.values():
            timer.cancel()
        self._gap_timers.clear()

    # --- channels and megagroups --------------------------------------------------------

    def advance(self, peer_id: int, msg_id: int) -> None:
        """Moves the watermark over `msg_id` (just published) and the published ids right
        after it.

        Updates are handled in tasks of their own, so 7 may be done before 6: ids published
        beyond the watermark wait until the ones before them are done. One that still waits
        after GAP_WAIT s sits behind a real gap (a lost push): the chat is polled.
        """
        ahead = self._ahead.setdefault(peer_id, set())
        ahead.add(msg_id)
        last = new = self._joinmap.last_message_id(peer_id)
        while new + 1 in ahead:
            new += 1
        if new > last:
            self._joinmap.set_last_message_id(peer_id, new, persist=False)
        self._prune(peer_id, new)
        if peer_id in self._ahead:
            self._arm(peer_id, self._gap_check)

    def settle(self, peer_id: int, upto: int) -> None:
        """Moves the watermark to `upto`: a poll read everything up to it."""
        self._joinmap.set_last_message_id(peer_id, upto, persist=False)
        self._prune(peer_id, upto)

    def ahead(self, peer_id: int) -> set[int]:
        """The ids published past the chat's watermark, waiting for the ones before them."""
        return set(self._ahead.get(peer_id, ()))

    def gap_check_armed(self, peer_id: int) -> bool:
        """Whether a gap check of the chat is due (armed by an id waiting past it)."""
        return peer_id in self._gap_timers

    def _prune(self, peer_id: int, upto: int) -> None:
        ahead = self._ahead.get(peer_id)
        if ahead is None:
            return
        ahead.difference_update([i for i in ahead if i <= upto])
        if not ahead:
            del self._ahead[peer_id]

    def _gap_check(self, peer_id: int) -> None:
        self._gap_timers.pop(peer_id, None)
        if peer_id in self._ahead:
            self._poll_soon(peer_id)  # the poll reads the gap from Telegram

    def _arm(self, peer_id: int, check: Callable[[int], None]) -> None:
        if peer_id not in self._gap_timers:
            self._gap_timers[peer_id] = asyncio.get_running_loop().call_later(
                GAP_WAIT, check, peer_id
            )

    # --- basic groups: one cursor per account -------------------------------------------

    def advance_group(self, peer_id: int, account: str, msg_id: int) -> None:
        """`advance` for one account's cursor of a basic group. Its ids are shared with the
        account's other chats, so an id that can't join the cursor is no proof of a lost
        message; the poll as that account after GAP_WAIT settles it either way."""
        key = (peer_id, account)
        ahead = self._group_ahead.setdefault(key, set())
        ahead.add(msg_id)
        last = new = self._joinmap.member_last_message_id(peer_id, account)
        while new + 1 in ahead:
            new += 1
        if new > last:
            self._joinmap.set_member_last_message_id(peer_id, account, new, persist=False)
        self._prune_group(key, new)
        if key in self._group_ahead:
            self._arm(peer_id, self._group_gap_check)

    def settle_group(self, peer_id: int, account: str, upto: int, *, persist: bool = False) -> None:
        """Moves the account's cursor to `upto`: a poll as it read everything up to it."""
        self._joinmap.set_member_last_message_id(peer_id, account, upto, persist=persist)
        self._prune_group((peer_id, account), upto)

    def gapped(self, peer_id: int, account: str) -> bool:
        """Whether ids of the account wait past its cursor of the basic group."""
        return (peer_id, account) in self._group_ahead

    def _prune_group(self, key: tuple[int, str], upto: int) -> None:
        ahead = self._group_ahead.get(key)
        if ahead is None:
            return
        ahead.difference_update([i for i in ahead if i <= upto])
        if not ahead:
            del self._group_ahead[key]

    def _group_gap_check(self, peer_id: int) -> None:
        self._gap_timers.pop(peer_id, None)
        if any(key[0] == peer_id for key in self._group_ahead):
            self._poll_soon(peer_id)  # polled as each account with ids waiting
