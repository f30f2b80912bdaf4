"""The account check: what the subscription flow does when an account's state changes.

Every `interval` s (and once at start, for the orphans of a former run) each account's state
is compared with the one seen last: after a reconnect its chats are polled (updates may have
been lost meanwhile); a banned or logged-out account's chats move (the takeover); when an
account turns ok the orphaned chats are due at once. Each check then starts a takeover
batch, unless one runs.
"""

from __future__ import annotations

import asyncio
import logging

from model.account import AccountState
from service.subscription.state import Shared
from service.subscription.takeover import Takeover

log = logging.getLogger("service.subscriber")  # the flow's one logger (see joins.py)

_BACK = (AccountState.OK, AccountState.FLOOD_WAIT)  # connected again
_GONE = (AccountState.BANNED, AccountState.UNAUTHORIZED)  # never usable again


class AccountWatch:
    """Follows each account's state (see the module's docstring)."""

    def __init__(self, shared: Shared, takeover: Takeover, *, interval: float = 5.0) -> None:
        self._shared = shared
        self._takeover = takeover
        self._interval = interval
        self._states: dict[str, AccountState] = {}

    def start(self) -> None:
        """Takes the accounts' states now as the ones seen last."""
        self._states = {tc.name: tc.state for tc in self._shared.pool}

    def forget(self, account: str) -> None:
        """The account left the pool: a later one of the same name is seen afresh."""
        self._states.pop(account, None)

    async def run(self) -> None:
        """The check every `interval` s, the first at once, until cancelled."""
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("account check failed")  # the next one may do better
            await asyncio.sleep(self._interval)

    async def check(self) -> None:
        """Compares each account's state with the one seen last and acts on each change
        (`changed`); then starts a takeover batch, which returns at once (it runs in a task
        of its own)."""
        for tc in list(self._shared.pool):
            before, now = self._states.get(tc.name), tc.state
            self._states[tc.name] = now
            if now != before:
                await self.changed(tc.name, before, now)
        self._takeover.start_batch()

    async def changed(self, account: str, before: AccountState | None, now: AccountState) -> None:
        """Acts on one account's change of state from `before` (None: not seen yet)."""
        if now == AccountState.OK:
            self._takeover.all_due()  # an account can join now: don't wait for the backoff
        if before == AccountState.DISCONNECTED and now in _BACK:
            for sub in self._shared.joinmap.by_account(account):
                self._shared.polls.soon(sub["peer"]["id"])
        if now in _GONE:
            await self._takeover.move_away(account)
