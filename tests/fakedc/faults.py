"""The emulator's fault knobs, latency knob and counters: the part of the dispatcher a
test turns at run time (TelegramRpc inherits it; see rpc.py's docstring for the list).

Every knob takes effect on the next request; `clear_faults()` undoes them all (not the
latency table, not expired file references, not counters).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fakedc.api import DropConnection, RpcError
from tests.fakedc.world import World


@dataclass
class _Flood:
    method: str
    seconds: int
    every: int | None
    times: int | None
    user_id: int | None
    calls: int = 0


@dataclass
class _Slow:
    method: str
    seconds: float
    times: int


@dataclass
class _RateLimit:
    method: str
    calls: int
    per: float
    wait: int
    escalate: float
    # Per account: recent call times, strikes so far, and the end of the current wait.
    seen: dict[int | None, list[float]] = field(default_factory=dict)
    strikes: Counter[int | None] = field(default_factory=Counter)
    until: dict[int | None, float] = field(default_factory=dict)


@dataclass
class _Fail:
    method: str
    code: int
    message: str
    times: int
    user_id: int | None


@dataclass
class _Drop:
    file_id: int | None
    nth: int
    user_id: int | None
    calls: int = 0


class FaultKnobs:
    """Knob state and the checks the dispatcher runs before answering."""

    world: World
    _clock: Callable[[], float]

    def _init_faults(self) -> None:
        self._counts: Counter[tuple[str, int | None]] = Counter()
        self.unknown: list[str] = []
        self.latency: dict[str, float] = {"*": 0.0}
        self._slow: list[_Slow] = []
        self._floods: list[_Flood] = []
        self._unoccupied: set[str] = set()
        self._private: set[int] = set()
        # Account fates: user id → (code, message) every call of that account fails with.
        self._fates: dict[int, tuple[int, str]] = {}
        self._fails: list[_Fail] = []
        self._rate_limits: list[_RateLimit] = []
        self._drops: list[_Drop] = []
        self._drop_posts: Counter[int] = Counter()

    # === knobs ============================================================================

    def set_latency(self, latency: dict[str, float]) -> None:
        """Seconds added before answering, per method name; "*" is every other method.
        E.g. {"upload.getFile": 0.05, "*": 0.0}. Replaces the previous table."""
        self.latency = {"*": 0.0, **latency}

    def slow(self, method: str, seconds: float, times: int = 1) -> None:
        """The next `times` calls of `method` ("*": any) wait `seconds` more before answering."""
        self._slow.append(_Slow(method, seconds, times))

    def flood_wait(
        self,
        method: str,
        seconds: int,
        *,
        every: int | None = None,
        times: int | None = 1,
        user_id: int | None = None,
    ) -> None:
        """Answers 420 FLOOD_WAIT_<seconds> to `method` (optionally only for one account):
        the next `times` calls (None: every call until clear_faults), or, with `every=n`,
        every n-th call counted from now."""
        self._floods.append(_Flood(method, seconds, every, times, user_id))

    def rate_limit(
        self, method: str, calls: int, per: float, wait: int, escalate: float = 2.0
    ) -> None:
        """Telegram's escalating flood control, per account: more than `calls` calls of
        `method` within `per` seconds answer FLOOD_WAIT_<wait>, and each further strike
        multiplies the wait by `escalate`; calls during a wait get FLOOD_WAIT_<remaining>.
        E.g. rate_limit("contacts.resolveUsername", calls=5, per=60, wait=30)."""
        self._rate_limits.append(_RateLimit(method, calls, per, wait, escalate))

    def username_not_occupied(self, username: str) -> None:
        """contacts.resolveUsername of this username answers USERNAME_NOT_OCCUPIED."""
        self._unoccupied.add(username.lower())

    def channel_private(self, channel_id: int) -> None:
        """The channel becomes CHANNEL_PRIVATE (ChannelForbidden in lists) to every account."""
        self._private.add(channel_id)

    def auth_key_unregistered(self, user_id: int) -> None:
        """Every call of this account answers 401 AUTH_KEY_UNREGISTERED (logged out)."""
        self._fates[user_id] = (401, "AUTH_KEY_UNREGISTERED")

    def deactivated_ban(self, user_id: int) -> None:
        """Every call of this account answers 401 USER_DEACTIVATED_BAN (banned)."""
        self._fates[user_id] = (401, "USER_DEACTIVATED_BAN")

    def session_revoked(self, user_id: int) -> None:
        """Every call of this account answers 401 SESSION_REVOKED."""
        self._fates[user_id] = (401, "SESSION_REVOKED")

    def auth_key_duplicated(self, user_id: int) -> None:
        """Every call of this account answers 406 AUTH_KEY_DUPLICATED (unusable for good)."""
        self._fates[user_id] = (406, "AUTH_KEY_DUPLICATED")

    def fail(
        self, method: str, code: int, message: str, *, times: int = 1, user_id: int | None = None
    ) -> None:
        """The next `times` calls of `method` ("*": any) answer rpc_error code/message, e.g.
        fail("channels.getMessages", 500, "INTERNAL") or (400, "CHANNEL_INVALID")."""
        self._fails.append(_Fail(method, code, message, times, user_id))

    def expire_file_references(self) -> None:
        """Every file reference issued so far answers FILE_REFERENCE_EXPIRED; fetching the
        message again gives a fresh one."""
        self.world.expire_file_references()

    def drop_connection_in_file(
        self, file_id: int | None = None, nth: int = 2, user_id: int | None = None
    ) -> None:
        """The nth upload.getFile (counted from now) of that photo/document id (None: any
        file) closes the connection without answering (api.DropConnection), once."""
        self._drops.append(_Drop(file_id, nth, user_id))

    def drop_next_posts(self, chat_id: int, n: int) -> None:
        """The next n post_message() of the chat are stored but not pushed (a lost update:
        the next push shows a pts gap; getChannelDifference, or getDifference for a basic
        group, reveals them)."""
        self._drop_posts[chat_id] += n

    def _take_dropped_post(self, chat_id: int) -> bool:
        if self._drop_posts[chat_id] > 0:
            self._drop_posts[chat_id] -= 1
            return True
        return False

    def clear_faults(self) -> None:
        """Undoes every fault knob (not latency, not expired references)."""
        self._slow.clear()
        self._floods.clear()
        self._unoccupied.clear()
        self._private.clear()
        self._fates.clear()
        self._fails.clear()
        self._rate_limits.clear()
        self._drops.clear()
        self._drop_posts.clear()

    # === counters =========================================================================

    def count(self, method: str | None = None, user_id: int | None = None) -> int:
        """Requests served, optionally of one method and/or of one account."""
        return sum(
            n
            for (m, u), n in self._counts.items()
            if (method is None or m == method) and (user_id is None or u == user_id)
        )

    def reset_counts(self) -> None:
        self._counts.clear()

    # === fault plumbing ===================================================================

    async def _delay(self, method: str) -> None:
        delay = self.latency.get(method, self.latency.get("*", 0.0))
        for rule in self._slow:
            if rule.times > 0 and rule.method in (method, "*"):
                rule.times -= 1
                delay += rule.seconds
        self._slow = [r for r in self._slow if r.times > 0]
        if delay > 0:
            await asyncio.sleep(delay)

    def _check_fate(self, user_id: int) -> None:
        if user_id in self._fates:
            raise RpcError(*self._fates[user_id])

    def _check_rate(self, method: str, user_id: int | None) -> None:
        now = self._clock()
        for rule in self._rate_limits:
            if rule.method != method:
                continue
            until = rule.until.get(user_id, 0.0)
            if now < until:
                raise RpcError(420, f"FLOOD_WAIT_{max(1, round(until - now))}")
            recent = [t for t in rule.seen.get(user_id, []) if now - t < rule.per]
            recent.append(now)
            rule.seen[user_id] = recent
            if len(recent) > rule.calls:
                wait = round(rule.wait * rule.escalate ** rule.strikes[user_id])
                rule.strikes[user_id] += 1
                rule.until[user_id] = now + wait
                rule.seen[user_id] = []
                raise RpcError(420, f"FLOOD_WAIT_{wait}")

    def _check_fail(self, method: str, user_id: int | None) -> None:
        for rule in self._fails:
            if rule.method in (method, "*") and rule.user_id in (None, user_id):
                rule.times -= 1
                if rule.times <= 0:
                    self._fails.remove(rule)
                raise RpcError(rule.code, rule.message)

    def _check_flood(self, method: str, user_id: int | None) -> None:
        for rule in self._floods:
            if rule.method != method or (rule.user_id is not None and rule.user_id != user_id):
                continue
            rule.calls += 1
            if rule.every is not None:
                fire = rule.calls % rule.every == 0
            else:
                fire = rule.times is None or rule.times > 0
                if rule.times is not None and fire:
                    rule.times -= 1
            if fire:
                raise RpcError(420, f"FLOOD_WAIT_{rule.seconds}")

    def _check_drop(self, file_id: int, user_id: int | None) -> None:
        for rule in self._drops:
            if rule.file_id not in (None, file_id):
                continue
            if rule.user_id not in (None, user_id):
                continue
            rule.calls += 1
            if rule.calls == rule.nth:
                self._drops.remove(rule)
                raise DropConnection()
