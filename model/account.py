"""One account's public name and how it fares: labels, `AccountState`, `AccountStatus`.

An account's `name` is its public label, never a phone number: `start.py login` names the
session file after the phone (sessions/15550001001.session), so a stem that looks like one
is masked (+15*******01, see `account_labels`). The label is what answers, /status, events,
the join map and media records carry; the stem (`session_name`) stays local.

`AccountStatus` is the state the pool reads to choose an account: usable or out for good
(banned, logged out), disconnected until a reconnect succeeds, and flood waits, kept per
request kind (model.tgerrors.request_kind): a wait on resolutions or on downloads (getFile)
leaves reads alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from enum import StrEnum

from common.utils import mask_phone
from model.tgerrors import OTHER

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# A session file named by a phone number (what `start.py login` writes): 7 to 15 digits.
_PHONE_STEM = re.compile(r"\+?[0-9]{7,15}")


class AccountState(StrEnum):
    OK = "ok"
    FLOOD_WAIT = "flood_wait"
    BANNED = "banned"
    UNAUTHORIZED = "unauthorized"
    DISCONNECTED = "disconnected"


def account_label(stem: str) -> str:
    """The public name of the account of session file `stem`, before any collision suffix:
    a stem that looks like a phone number is masked (15550001001 → +15*******01), any
    other stem is its own label."""
    return mask_phone(stem) if _PHONE_STEM.fullmatch(stem) else stem


def account_labels(stems: Iterable[str]) -> dict[str, str]:
    """Each session stem's label, unique in the pool.

    Two numbers can mask alike (same first two and last two digits). Those are told apart
    by the order of their stems (not of the files in the folder): the lowest keeps the plain
    mask, the next get `#2`, `#3`… A label depends only on its stem unless such a
    collision exists; it changes only when a colliding session file is added or removed.
    """
    bases = {stem: account_label(stem) for stem in sorted(set(stems))}
    own = set(bases.values())
    labels: dict[str, str] = {}
    taken: set[str] = set()
    for stem, base in bases.items():
        label, n = base, 1
        while label in taken or (label != base and label in own):
            n += 1
            label = f"{base}#{n}"
        taken.add(label)
        labels[stem] = label
    return labels


class AccountStatus:
    """How one account fares, on the injected monotonic `clock`.

    `name` is the account's label (the pool may change it once, see `account_labels`);
    `reason` says why it is banned, unauthorized or disconnected. `flood_waits` and
    `flood_wait_seconds` count the flood waits met since the start.
    """

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.reason: str | None = None
        self.flood_waits = 0
        self.flood_wait_seconds = 0
        self._clock = clock
        self._state = AccountState.OK  # never FLOOD_WAIT: that one is computed, see `state`
        self._flood_until: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<AccountStatus {self.name} {self._state}>"

    @property
    def state(self) -> AccountState:
        """ok, flood_wait (while a wait runs), banned, unauthorized or disconnected."""
        if self._state is AccountState.OK and self.flood_until is not None:
            return AccountState.FLOOD_WAIT
        return self._state

    @property
    def usable(self) -> bool:
        """False for good when banned or logged out: the pool never asks it again."""
        return self._state not in (AccountState.BANNED, AccountState.UNAUTHORIZED)

    @property
    def connected(self) -> bool:
        """Usable and not disconnected (a flood wait may still run)."""
        return self._state is AccountState.OK

    @property
    def disconnected(self) -> bool:
        return self._state is AccountState.DISCONNECTED

    @property
    def flood_until(self) -> float | None:
        """The latest end (on the clock) of a flood wait still running, if any."""
        now = self._clock()
        live = [t for t in self._flood_until.values() if t > now]
        return max(live) if live else None

    def flood_ready_in(self, kind: str = OTHER) -> float:
        """Seconds until the flood wait on requests of `kind` ends (0: none runs)."""
        return max(0.0, self._flood_until.get(kind, 0.0) - self._clock())

    def flood(self, kind: str, seconds: int) -> None:
        """Telegram asked to wait `seconds` before the next request of `kind`."""
        self.flood_waits += 1
        self.flood_wait_seconds += seconds
        until = max(self._flood_until.get(kind, 0.0), self._clock() + seconds)
        self._flood_until[kind] = until
        log.warning("account %s: flood wait of %d s on %s requests", self.name, seconds, kind)

    def set_unusable(self, state: AccountState, reason: str) -> None:
        """Out of rotation for good: banned or unauthorized."""
        if self._state is not state:
            log.error("account %s is %s (%s): out of rotation", self.name, state, reason)
        self._state, self.reason = state, reason

    def set_disconnected(self, reason: str) -> None:
        """Disconnected until a reconnect succeeds (an unusable account stays unusable).
        Logged when it happens, and again when a failed reconnect finds another reason
        (the proxy's password fixed, the data centre still down)."""
        if self.usable:
            if self._state is not AccountState.DISCONNECTED:
                log.warning("account %s disconnected: %s", self.name, reason)
            elif reason != self.reason:
                log.warning("account %s still disconnected: %s", self.name, reason)
            self._state, self.reason = AccountState.DISCONNECTED, reason

    def set_connected(self) -> None:
        """A connect succeeded: a disconnected account is ok again."""
        if self._state is AccountState.DISCONNECTED:
            self._state, self.reason = AccountState.OK, None
            log.info("account %s reconnected", self.name)
