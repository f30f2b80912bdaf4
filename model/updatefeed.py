"""An account's updates, caught up after a stop: held until its consumer listens, and the
update state saved only up to what the consumer was handed.

Telegram keeps what an account missed for `updates.getDifference` (and
`getChannelDifference` per channel) from the state the account last saw: its pts, qts
and date, and each channel's pts (core.telegram.org/api/updates). Telethon does the rest
when built with `catch_up=True`: at connect it loads the state saved in the session, asks
for the difference, and dispatches what comes back like pushed updates (its MessageBox,
given the `KeepingMessageBox` fix of model/telethon_internals.py, so the edits and
deletions of a difference reach the handlers). What this adds, so that a stop, a crash
or a SIGKILL loses nothing:

- Held until listened to. The pool connects its accounts before the subscription flow
  registers its callbacks, and Telethon drops an update no handler takes. The feed's own
  handler, the first of the client's, holds every update until `open()`; `hold()` stops
  them again (the consumer is stopping: what it won't handle must come again next start).
- Saved only up to what was handed over. Telethon's MessageBox moves its state when it
  applies an update, before any handler ran, and Telethon writes that state each minute
  and at disconnect (after cancelling the handlers still running); EntitySession ignores
  those writes. The feed writes the state instead, every `save_every` s: it notes the
  state and the dispatch tasks under way (each update the state covers is in one of them
  or was handled: Telethon creates them as it applies the updates, without yielding) and
  writes the state once those tasks have ended. A held update's task does not end, so
  nothing past it is written. The saver sleeps until something may have moved the state
  (an update, a channel followed, the start): an idle account costs no wake-up at all
  (with 1,000 accounts, a wake-up each per second was most of an idle server's CPU). After a SIGKILL the next start replays at most the last
  `save_every` s of updates (the consumer drops what it already published).
- A joined channel is tracked from its join (`follow`): Telethon starts tracking a channel
  at its first update, and a quiet channel's edits while down would not be asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from telethon import events, functions, types, utils

from common.errors import TgcError
from model.session import EntitySession
from model.telethon_internals import (
    dispatch_tasks,
    follow_channel,
    follows_channel,
    install_message_box,
    update_state,
)

log = logging.getLogger(__name__)

SAVE_EVERY = 1.0  # seconds between writes of the update state (when it moved)
Invoke = Callable[[Any], Awaitable[Any]]  # the account's way to send a request


class UpdateFeed:
    """The updates of one account's Telethon `client` (built with catch_up=True, not yet
    connected) and the update state in its `session`. See the module docstring."""

    def __init__(self, client: Any, session: EntitySession, *, save_every: float = SAVE_EVERY):
        self._client = client
        self._session = session
        self._save_every = save_every
        self._open = asyncio.Event()
        self._at_gate: set[asyncio.Task[Any]] = set()
        self._saver: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()  # the state may have moved since the last write
        self._moved.set()  # the first write after the start, updates or not
        install_message_box(client)
        client.add_event_handler(self._gate, events.Raw)

    @property
    def is_open(self) -> bool:
        """Whether updates go on to the other handlers."""
        return self._open.is_set()

    @property
    def saver_idle(self) -> bool:
        """Whether the saver waits for something to move the state (nothing to write)."""
        return self._saver is not None and not self._moved.is_set()

    @property
    def held(self) -> int:
        """How many updates wait for `open()` now."""
        return len(self._at_gate)

    def open(self) -> None:
        """Lets the updates (those held, and every one after) on to the other handlers."""
        self._open.set()

    async def hold(self, within: float = 2.0) -> None:
        """Holds every update from now on, and saves the state as of now once the updates
        already let on are handled (if they are within `within` s)."""
        self._open.clear()
        await self._save_when_handled(within)

    def start(self) -> None:
        """Starts saving the state every `save_every` s (once connected)."""
        if self._saver is None:
            self._saver = asyncio.create_task(self._save_loop(), name="tgc-update-state")

    async def stop(self) -> None:
        """Stops saving; saves a last time if updates flow and those under way end soon."""
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        if self.is_open:
            await self._save_when_handled(within=2.0)

    def follows(self, channel_id: int) -> bool:
        """Whether the channel's updates are tracked (a catch-up asks for them)."""
        return follows_channel(self._client, channel_id)

    async def follow(self, entity: Any, invoke: Invoke) -> None:
        """Tracks a channel the account joined (a Channel; other entities are left alone)
        from its pts now (channels.getFullChannel through `invoke`), unless it is tracked
        already. A failure is only logged: the channel's first update starts it too."""
        if not isinstance(entity, types.Channel) or self.follows(entity.id):
            return
        request = functions.channels.GetFullChannelRequest(utils.get_input_channel(entity))
        try:
            full = await invoke(request)
        except TgcError as e:
            log.info("channel %s not tracked from its join: %s", entity.id, e.code)
            return
        follow_channel(self._client, entity, full.full_chat.pts)
        self._moved.set()

    # --- the gate -----------------------------------------------------------------------

    async def _gate(self, update: Any) -> None:
        self._moved.set()
        if self._open.is_set():
            return
        task = asyncio.current_task()
        if task is None:
            return
        self._at_gate.add(task)
        try:
            await self._open.wait()
        finally:
            self._at_gate.discard(task)

    # --- saving -------------------------------------------------------------------------

    async def _save_loop(self) -> None:
        while True:
            await self._moved.wait()
            await asyncio.sleep(self._save_every)
            self._moved.clear()  # what moves it from here on is for the next write
            saved = False
            try:
                saved = await self._save_when_handled(within=None)
            except Exception:  # a full disk must not end the saving for good
                log.exception("could not save the update state")
            if not saved:
                self._moved.set()  # not written (held, not handled yet): try again

    async def _save_when_handled(self, within: float | None) -> bool:
        """Notes the state and the updates under way; writes the state once those are
        handled. False when it did not (no state yet, or some not handled in time)."""
        state = update_state(self._client)
        if state is None:
            return False
        pending = dispatch_tasks(self._client) - {asyncio.current_task()}
        if not self._open.is_set() and pending & self._at_gate:
            return False  # held: they won't be handled before the next open
        if pending:
            _, late = await asyncio.wait(pending, timeout=within)
            if late:
                return False
        self._session.save_update_state(state)
        return True
