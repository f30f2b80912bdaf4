"""Telegram accounts: `TeleClient` (one session file) and `TeleClients` (the pool).

A `TeleClient` wraps one Telethon client and makes the few calls the service needs. Every
call goes through `_invoke`, which turns Telethon's errors into the service's own
(`common.errors`) and keeps the account's state: flood waits per request kind, banned or
logged out for good, disconnected until the background reconnect succeeds.

Peers are found the cheap way first. An id is looked up only in the session's entity cache
(the SQLite `entities` table Telethon fills from every answer); a username is looked up
there too, and only when that misses is `contacts.resolveUsername` sent, paid from the
account's resolution budget. Bursts of resolutions are what get accounts flood-waited for
hours, so `TeleClients.run` prefers accounts that already hold the peer's access hash: a
peer is resolved at most once per account, and the session file keeps it across restarts.

Telethon sleeps through flood waits shorter than `flood_sleep_threshold` inside the call
(and ignores a per-call threshold in 1.45), so the threshold is 0 by default on each client
(telegram.flood_sleep_threshold) and the pool answers `FloodWaitError` by moving the call
to another account.

An account's `name` is its public label, never a phone number: `start.py login` names the
session file after the phone (sessions/15550001001.session), so a stem that looks like one
is masked (+15*******01, see `account_labels`). The label is what API answers, /status,
events, the join map and media records carry; the stem (`session_name`) stays local.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from telethon import TelegramClient, errors, events, functions, types, utils

from common.const import Proxy
from common.errors import (
    AccountUnusable,
    ConfigError,
    FloodWait,
    InvalidParam,
    NoAccountAvailable,
    PeerNotFound,
    PeerPrivate,
    RateLimited,
    TelegramError,
    TgcError,
)
from common.utils import PeerRef, mask_phone
from model.budgetstore import UNKNOWN as UNKNOWN_SPENT
from model.budgetstore import ResolveBudgetStore, SpentBudget
from model.downloader import MediaConnections
from model.session import EntitySession
from model.tgerrors import account_fate, rpc_error_name

log = logging.getLogger(__name__)

T = TypeVar("T")
# A session file named by a phone number (what `start.py login` writes): 7 to 15 digits.
_PHONE_STEM = re.compile(r"\+?[0-9]{7,15}")
Entity = Any  # types.User | types.Chat | types.Channel (Telethon ships no type stubs)
Clock = Callable[[], float]
UpdateCallback = Callable[["TeleClient", Any], Awaitable[None]]
# (method, error name or None, seconds): told of every request `_invoke` sends (for /metrics).
CallObserver = Callable[[str, str | None, float], None]

# Flood waits are kept per request kind: a wait on contacts.resolveUsername (the sensitive
# one, hours long after bursts) must not stop the account from reading peers it knows.
RESOLVE = "resolve"
OTHER = "other"

_NOT_FOUND = frozenset(
    {
        "USERNAME_NOT_OCCUPIED",
        "USERNAME_INVALID",
        "PEER_ID_INVALID",
        "CHANNEL_INVALID",
        "CHAT_ID_INVALID",
        "USER_ID_INVALID",
        "INVITE_HASH_EXPIRED",
        "INVITE_HASH_INVALID",
        "INVITE_HASH_EMPTY",
    }
)
_PRIVATE = frozenset(
    {
        "CHANNEL_PRIVATE",
        "CHAT_FORBIDDEN",
        "CHAT_ADMIN_REQUIRED",
        "USER_BANNED_IN_CHANNEL",
        "CHANNEL_PUBLIC_GROUP_NA",
    }
)


# Errors that mean a parameter the caller chose is bad (400 INVALID_PARAM naming it), per
# call: Telegram name -> API parameter. Any other error is Telegram's (502 TELEGRAM_ERROR).
_SEARCH_BLAME = {"QUERY_TOO_SHORT": "q", "SEARCH_QUERY_EMPTY": "q", "LIMIT_INVALID": "limit"}
_IDS_BLAME = {"MSG_ID_INVALID": "ids", "MESSAGE_IDS_EMPTY": "ids"}
_PARTICIPANTS_BLAME = {"LIMIT_INVALID": "limit", "OFFSET_INVALID": "offset"}


# The pool's negative cache: a username Telegram says nobody holds (USERNAME_NOT_OCCUPIED,
# USERNAME_INVALID) is answered 404 from memory for UNKNOWN_USERNAME_TTL seconds instead of
# a contacts.resolveUsername (and a budget token) per ask. A crawler that retries a dead
# @name from a post would otherwise spend every account's budget (5 a minute) in a minute
# and real resolutions would get 429. Five minutes turns a retry loop's ~75 resolutions into
# one while a name registered meanwhile is 404 for at most five minutes; it must expire
# because usernames are registered (and freed) all the time. At most UNKNOWN_USERNAMES_MAX
# names are kept (the oldest forgotten first): ~1 MB, whatever a crawler sends.
UNKNOWN_USERNAME_TTL = 300.0
UNKNOWN_USERNAMES_MAX = 10_000


class AccountState(StrEnum):
    OK = "ok"
    FLOOD_WAIT = "flood_wait"
    BANNED = "banned"
    UNAUTHORIZED = "unauthorized"
    DISCONNECTED = "disconnected"


# --- small pieces: account labels, the session lock, the resolution budget, error names ---


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


class SessionLock:
    """An exclusive `flock` on `<session>.lock`: one process owns a session file.

    Two processes on one session would share its auth key, which Telegram answers with
    AUTH_KEY_DUPLICATED and kills the key for good; refusing to start is far cheaper.
    """

    def __init__(self, session_path: Path) -> None:
        self.path = session_path.with_name(session_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                "telegram.sessions_dir",
                str(self.path.with_suffix("")),
                "the session file is in use by another process (lock held on "
                f"{self.path}); a session file can serve one process only",
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class TokenBucket:
    """`capacity` tokens, refilled continuously over `period` seconds."""

    def __init__(self, capacity: float, period: float, clock: Clock) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self._clock = clock
        self._tokens = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def ready_in(self) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        self._refill()
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1

    def spent(self) -> float:
        """Tokens missing now (0: full)."""
        self._refill()
        return self.capacity - self._tokens

    def restore(self, spent: float, elapsed: float) -> None:
        """Sets the bucket to `spent` tokens missing `elapsed` seconds ago (at most all of
        them: a spend recorded under a higher capacity leaves it empty, not in debt)."""
        tokens = self.capacity - min(max(spent, 0.0), self.capacity)
        self._tokens = min(self.capacity, tokens + max(elapsed, 0.0) * self.rate)
        self._at = self._clock()


class ResolveBudget:
    """How many `contacts.resolveUsername` one account may send: per minute and per day.

    The per-minute bucket is what keeps bursts away, the daily one caps a busy day. With a
    `store` (model.budgetstore, under data.dir) both survive a restart: what `account` had
    spent is read back here and every `take` records it; without one they live in memory
    and a restart refills them.
    """

    def __init__(
        self,
        per_minute: float,
        per_day: float,
        clock: Clock = time.monotonic,
        *,
        store: ResolveBudgetStore | None = None,
        account: str = "",
    ) -> None:
        self._minute = TokenBucket(per_minute, 60, clock)
        self._day = TokenBucket(per_day, 86400, clock)
        self._buckets = [self._minute, self._day]
        self._store = store
        self._account = account
        if store is not None:
            self._restore(store)

    def _restore(self, store: ResolveBudgetStore) -> None:
        saved = store.load(self._account)
        if saved is None:
            return  # never spent anything: full
        elapsed = 0.0 if saved.at is None else store.clock() - saved.at
        self._minute.restore(saved.minute, elapsed)
        self._day.restore(saved.day, elapsed)
        if saved is UNKNOWN_SPENT:
            self._save()  # the empty start, so the next start does not come back full

    def _save(self) -> None:
        if self._store is not None:
            spent = SpentBudget(self._minute.spent(), self._day.spent(), None)
            self._store.save(self._account, spent)

    def ready_in(self) -> float:
        return max(b.ready_in() for b in self._buckets)

    def take(self) -> None:
        for bucket in self._buckets:
            bucket.take()
        self._save()


def _request_kind(request: Any) -> str:
    while hasattr(request, "query"):  # invokeWithLayer & co wrap the real request
        request = request.query
    return RESOLVE if isinstance(request, functions.contacts.ResolveUsernameRequest) else OTHER


def request_name(request: Any) -> str:
    """`channels.GetFullChannelRequest(...)` → "channels.GetFullChannel" (a bounded label)."""
    while hasattr(request, "query"):
        request = request.query
    module = type(request).__module__.rpartition(".")[2]
    return f"{module}.{type(request).__name__.removesuffix('Request')}"


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class UnknownUsername(PeerNotFound):
    """contacts.resolveUsername answered that nobody holds `username` (404 PEER_NOT_FOUND);
    the pool remembers it for a while (UNKNOWN_USERNAME_TTL)."""

    def __init__(self, username: str, peer: str, message: str = "") -> None:
        super().__init__(peer, message)
        self.username = username


class JoinRequestSent(PeerPrivate):
    """A join met INVITE_REQUEST_SENT: the chat admits members only with an admin's
    approval, and Telegram has filed the account's request (403 PEER_PRIVATE). Not tried on
    another account (each would file one more request)."""

    def __init__(self, peer: str, account: str) -> None:
        super().__init__(
            peer,
            f"{peer} needs an admin's approval to join: account {account} sent a join request;"
            " subscribe again once an admin has approved it",
        )
        self.account = account


@dataclass(frozen=True)
class _Cached:
    """A peer as one account's session holds it."""

    marked_id: int
    input_peer: Any


# --- one account ---------------------------------------------------------------------------


class TeleClient:
    """One Telegram account: one Telethon session file.

    `pending_downloads` is kept by the media processor (incremented when it queues a
    download bound to this account, decremented when it ends); the pool gives busy accounts
    less new work. `flood_waits` and `flood_wait_seconds` count the flood waits met, and
    `call_observer` (set by `TeleClients.observe_calls`) is told of every request sent.
    """

    call_observer: CallObserver | None = None

    def __init__(
        self,
        session_path: str | os.PathLike[str],
        api_id: int,
        api_hash: str,
        *,
        proxy: Proxy | None = None,
        resolve_per_minute: float = 5,
        resolve_per_day: float = 200,
        flood_sleep_threshold: int = 0,
        request_retries: int = 2,
        request_timeout: float = 30.0,
        reconnect_delay: float = 1.0,
        reconnect_max_delay: float = 60.0,
        receive_updates: bool = True,
        device_model: str | None = None,
        app_version: str | None = None,
        system_version: str | None = None,
        lang_code: str = "en",
        clock: Clock = time.monotonic,
        resolve_store: ResolveBudgetStore | None = None,
    ) -> None:
        path = Path(session_path)
        if path.suffix != ".session":
            path = path.with_name(path.name + ".session")
        # The stem may be a phone number: it stays in this process (the lock, the file).
        self.session_name = path.stem
        # The public label (API answers, events, stored rows); the pool may add a suffix.
        self.name = account_label(path.stem)
        self.session_path = path
        self._state = AccountState.OK  # never FLOOD_WAIT: that one is computed, see `state`
        self.pending_downloads = 0
        self.flood_waits = 0
        self.flood_wait_seconds = 0
        self.user_id: int | None = None
        self.phone: str | None = None
        self.display_name: str | None = None
        self.reason: str | None = None  # why the account is banned/unauthorized/disconnected
        self._clock = clock
        self._flood_until: dict[str, float] = {}
        # Keyed by the stem: a label can move to another account (see model.budgetstore).
        self._budget = ResolveBudget(
            resolve_per_minute, resolve_per_day, clock, store=resolve_store, account=path.stem
        )
        self._resolving: dict[str, asyncio.Future[tuple[_Cached, Entity]]] = {}
        self._timeout = request_timeout
        self._reconnect_delay = reconnect_delay
        self._reconnect_max_delay = reconnect_max_delay
        self._lock = SessionLock(path)
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = False
        self.client = TelegramClient(
            EntitySession(str(path)),
            api_id,
            api_hash,
            proxy=proxy.to_telethon() if proxy is not None else None,
            flood_sleep_threshold=flood_sleep_threshold,
            request_retries=request_retries,
            # After its retries on Telegram's 500s, Telethon raises a bare ValueError unless
            # told to raise the last error, which keeps Telegram's name for TelegramError.
            raise_last_call_error=True,
            auto_reconnect=True,
            receive_updates=receive_updates,
            lang_code=lang_code,
            system_lang_code=lang_code,
            # Telethon fills what is None from this machine (platform, its own version).
            device_model=device_model,
            app_version=app_version,
            system_version=system_version,
        )
        # The connections its downloads use besides Telethon's (model/downloader.py).
        self.media_connections = MediaConnections(self.client)

    def __repr__(self) -> str:
        return f"<TeleClient {self.name} {self._state}>"

    # --- life ---

    async def start(self) -> None:
        """Locks the session file, connects and checks the account.

        Raises ConfigError when another process holds the session. Nothing else is fatal:
        an account that can't connect is disconnected and reconnects in the background,
        one that is banned or logged out is reported and left alone.
        """
        self._lock.acquire()
        self._stopping = False
        self._started = True
        if await self._connect():
            await self._check_account()
            loop = self._watch()
        else:
            loop = self._reconnect_loop()
        self._watcher = asyncio.create_task(loop, name=f"tgc-{self.name}")

    async def stop(self) -> None:
        """Disconnects (Telethon saves the session's entities then) and frees the lock.
        Stopping twice is harmless (a second Telethon disconnect would stall 5 s)."""
        if not self._started:
            self.client.session.close()  # never connected (e.g. the lock was held)
            return
        self._started = False
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        try:
            await self.client.disconnect()
            # Its home-DC media connection (model/downloader.py) is not Telethon's to close.
            await self.media_connections.close()
        finally:
            self._lock.release()

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):  # not wait_for: see _invoke
                await self.client.connect()
        except Exception as e:  # OSError, a timeout, or Telethon's own view of a bad key
            self._set_disconnected(f"connect failed: {e.__class__.__name__}: {e}")
            return False
        if self._state is AccountState.DISCONNECTED:
            self._state, self.reason = AccountState.OK, None
            log.info("account %s reconnected", self.name)
        return True

    async def _check_account(self) -> None:
        # users.getUsers(self) rather than Telethon's is_user_authorized(), which turns every
        # error into False: a ban (USER_DEACTIVATED_BAN) must not pass for a logout.
        try:
            users = await self._invoke(functions.users.GetUsersRequest([types.InputUserSelf()]))
        except AccountUnusable:
            return  # reported by _invoke; the pool leaves it out
        except TgcError as e:  # a flood wait or a hiccup: the account may still serve
            log.warning("account %s: could not read its user (%s)", self.name, e)
            return
        me = users[0]
        self.user_id = me.id
        self.phone = me.phone
        self.display_name = utils.get_display_name(me) or None
        log.info("account %s ready (user %s)", self.name, self.user_id)

    async def _watch(self) -> None:
        """Waits for Telethon to give up reconnecting (its own retries are short), then
        reconnects with a capped exponential backoff, for as long as the service runs."""
        while not self._stopping and self.usable:
            with contextlib.suppress(Exception):
                await self.client.disconnected
            if self._stopping or not self.usable:
                return
            self._set_disconnected("the connection was lost")
            await self._reconnect_loop(watch=False)

    async def _reconnect_loop(self, watch: bool = True) -> None:
        delay = self._reconnect_delay
        while not self._stopping and self._state is AccountState.DISCONNECTED:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_delay)
            if await self._connect():
                await self._check_account()
        if watch:
            await self._watch()

    # --- state ---

    @property
    def usable(self) -> bool:
        """False for good when banned or logged out: the pool never asks it again."""
        return self._state not in (AccountState.BANNED, AccountState.UNAUTHORIZED)

    @property
    def flood_until(self) -> float | None:
        """The latest end (on the injected clock) of a flood wait still running, if any."""
        now = self._clock()
        live = [t for t in self._flood_until.values() if t > now]
        return max(live) if live else None

    def flood_ready_in(self, kind: str) -> float:
        return max(0.0, self._flood_until.get(kind, 0.0) - self._clock())

    @property
    def state(self) -> AccountState:
        """ok, flood_wait (while a wait runs), banned, unauthorized or disconnected."""
        if self._state is AccountState.OK and self.flood_until is not None:
            return AccountState.FLOOD_WAIT
        return self._state

    def _set_unusable(self, state: AccountState, reason: str) -> None:
        if self._state is not state:
            log.error("account %s is %s (%s): out of rotation", self.name, state, reason)
        self._state, self.reason = state, reason

    def _set_disconnected(self, reason: str) -> None:
        if self.usable:
            if self._state is not AccountState.DISCONNECTED:
                log.warning("account %s disconnected: %s", self.name, reason)
            self._state, self.reason = AccountState.DISCONNECTED, reason

    def ready_in(self, peer: PeerRef | None) -> float | None:
        """Seconds until this account can take a call about `peer` (0: now); None: it can't
        (unusable, disconnected, or an id it does not know)."""
        if self._state is not AccountState.OK:
            return None
        wait = self.flood_ready_in(OTHER)
        if peer is None or peer.invite is not None or self.knows(peer):
            return wait
        if peer.username is None:
            return None  # an id is only ever found in the cache
        return max(wait, self.flood_ready_in(RESOLVE), self._budget.ready_in())

    def resolve_blocked_by_budget(self) -> bool:
        return self._budget.ready_in() > self.flood_ready_in(RESOLVE)

    # --- the entity cache ---

    def knows(self, peer: PeerRef) -> bool:
        """Whether the session holds the peer's access hash (or is resolving it right now)."""
        if peer.username is not None and peer.username in self._resolving:
            return True
        return self._cached(peer) is not None

    def _cached(self, peer: PeerRef) -> _Cached | None:
        session = self.client.session
        if peer.username is not None:
            row = session.get_entity_rows_by_username(peer.username)
            return self._from_row(row) if row else None
        for marked in peer.marked_ids():
            row = session.get_entity_rows_by_id(marked, exact=True)
            if row:
                return self._from_row(row)
        return None

    @staticmethod
    def _from_row(row: tuple[int, int]) -> _Cached:
        marked_id, access_hash = row
        bare, kind = utils.resolve_id(marked_id)
        if kind is types.PeerUser:
            return _Cached(marked_id, types.InputPeerUser(bare, access_hash))
        if kind is types.PeerChat:
            return _Cached(marked_id, types.InputPeerChat(bare))
        return _Cached(marked_id, types.InputPeerChannel(bare, access_hash))

    async def _input_peer(self, peer: PeerRef) -> tuple[_Cached, Entity | None]:
        """The peer's input form, from the cache if possible; the entity when it came free."""
        if peer.invite is not None:
            entity = await self._entity_from_invite(peer)
            return _Cached(utils.get_peer_id(entity), utils.get_input_peer(entity)), entity
        cached = self._cached(peer)
        if cached is not None:
            return cached, None
        if peer.username is None:
            raise PeerNotFound(str(peer), _unknown_id_message(peer))
        return await self._resolve_once(peer.username, str(peer))

    async def _resolve_once(self, username: str, raw: str) -> tuple[_Cached, Entity]:
        """One `contacts.resolveUsername` per username at a time on this account."""
        while (pending := self._resolving.get(username)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled, not the resolution it waited on
        future: asyncio.Future[tuple[_Cached, Entity]] = asyncio.get_running_loop().create_future()
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

    async def _resolve(self, username: str, raw: str) -> tuple[_Cached, Entity]:
        wait = self._budget.ready_in()
        if wait > 0:
            raise RateLimited(wait, f"account {self.name} spent its username resolutions")
        self._budget.take()
        log.info("account %s resolves a username", self.name)
        try:
            found = await self._invoke(
                functions.contacts.ResolveUsernameRequest(username), peer=raw
            )
        except PeerNotFound as e:  # USERNAME_NOT_OCCUPIED, USERNAME_INVALID
            raise UnknownUsername(username, raw, e.message) from None
        # Telethon writes entities to SQLite at once but commits only every minute or at
        # disconnect; commit now, so a crash can't make the account pay for this again.
        self.client.session.save()
        marked = utils.get_peer_id(found.peer)
        entity = next(
            (e for e in [*found.chats, *found.users] if utils.get_peer_id(e) == marked), None
        )
        if entity is None:
            raise PeerNotFound(raw)
        return _Cached(marked, utils.get_input_peer(entity)), entity

    async def _entity_from_invite(self, peer: PeerRef) -> Entity:
        invite = await self._invoke(
            functions.messages.CheckChatInviteRequest(peer.invite), peer=str(peer)
        )
        chat = getattr(invite, "chat", None)  # ChatInviteAlready, ChatInvitePeek
        if chat is None:
            raise PeerPrivate(str(peer), f"{peer} is private: join it first")
        return chat

    # --- the calls ---

    async def get_entity(self, ref: PeerRef) -> Entity:
        """The peer's User, Chat or Channel: cache by id first, username resolution last."""
        cached, entity = await self._input_peer(ref)
        if entity is not None:
            return entity
        return await self._fetch_entity(cached, str(ref))

    async def _fetch_entity(self, cached: _Cached, raw: str) -> Entity:
        p = cached.input_peer
        if isinstance(p, types.InputPeerChannel):
            got = await self._invoke(
                functions.channels.GetChannelsRequest([types.InputChannel(p.channel_id, p.access_hash)]),
                peer=raw,
            )
            found = got.chats
        elif isinstance(p, types.InputPeerChat):
            found = (await self._invoke(functions.messages.GetChatsRequest([p.chat_id]), peer=raw)).chats
        else:
            found = await self._invoke(
                functions.users.GetUsersRequest([types.InputUser(p.user_id, p.access_hash)]), peer=raw
            )
        return _pick_entity(found, cached.marked_id, raw)

    async def get_full(self, ref: PeerRef) -> tuple[Entity, Any]:
        """(entity, ChannelFull | ChatFull | UserFull)."""
        cached, _ = await self._input_peer(ref)
        p, raw = cached.input_peer, str(ref)
        if isinstance(p, types.InputPeerChannel):
            res = await self._invoke(
                functions.channels.GetFullChannelRequest(types.InputChannel(p.channel_id, p.access_hash)),
                peer=raw,
            )
            return _pick_entity(res.chats, cached.marked_id, raw), res.full_chat
        if isinstance(p, types.InputPeerChat):
            res = await self._invoke(functions.messages.GetFullChatRequest(p.chat_id), peer=raw)
            return _pick_entity(res.chats, cached.marked_id, raw), res.full_chat
        res = await self._invoke(
            functions.users.GetFullUserRequest(types.InputUser(p.user_id, p.access_hash)), peer=raw
        )
        return _pick_entity(res.users, cached.marked_id, raw), res.full_user

    async def get_history(
        self,
        ref: PeerRef,
        limit: int = 20,
        offset_id: int = 0,
        min_id: int = 0,
        max_id: int = 0,
    ) -> tuple[Entity, list[Any]]:
        """messages.getHistory: newest first; offset_id, min_id, max_id exclusive (0: none)."""
        cached, entity = await self._input_peer(ref)
        # Telegram takes `limit` messages from offset_id (0: the newest) and only then drops
        # those outside min_id..max_id: a max_id far below the newest would give an empty
        # page. Start the window at the lower of offset_id and max_id instead, as Telethon's
        # iter_messages does.
        top = min(i for i in (offset_id, max_id) if i) if offset_id or max_id else 0
        res = await self._invoke(
            functions.messages.GetHistoryRequest(
                peer=cached.input_peer,
                offset_id=top,
                offset_date=None,
                add_offset=0,
                limit=limit,
                max_id=max_id,
                min_id=min_id,
                hash=0,
            ),
            peer=str(ref),
            blame=_history_blame(offset_id=offset_id, max_id=max_id, min_id=min_id),
        )
        return await self._messages_result(res, cached, entity, str(ref))

    async def get_messages(self, ref: PeerRef, ids: list[int]) -> tuple[Entity, list[Any | None]]:
        """Messages by id, in the order asked; None where a message does not exist."""
        cached, entity = await self._input_peer(ref)
        p, raw = cached.input_peer, str(ref)
        wanted = [types.InputMessageID(i) for i in ids]
        if isinstance(p, types.InputPeerChannel):
            channel = types.InputChannel(p.channel_id, p.access_hash)
            request: Any = functions.channels.GetMessagesRequest(channel, wanted)
        else:
            request = functions.messages.GetMessagesRequest(wanted)
        res = await self._invoke(request, peer=raw, blame=_IDS_BLAME)
        entity, messages = await self._messages_result(res, cached, entity, raw)
        # messages.getMessages is not scoped to a chat: keep only this peer's messages.
        by_id = {m.id: m for m in messages if utils.get_peer_id(m.peer_id) == cached.marked_id}
        return entity, [by_id.get(i) for i in ids]

    async def _messages_result(
        self, res: Any, cached: _Cached, entity: Entity | None, raw: str
    ) -> tuple[Entity, list[Any]]:
        chats_users = [*getattr(res, "chats", []), *getattr(res, "users", [])]
        if entity is None:
            try:
                entity = _pick_entity(chats_users, cached.marked_id, raw)
            except PeerNotFound:
                # Telegram lists only the peers its messages mention: an empty page of a
                # private chat or a basic group names none. Ask for the peer itself.
                entity = await self._fetch_entity(cached, raw)
        # Telethon's own get_messages also runs each message's _finish_init (sender and
        # chat objects, the client reference): ~0.45 ms a page of 100, a seventh of an API
        # answer's CPU, for attributes nobody here reads (the parser and the subscriber
        # read the TL fields). The messages are Telethon's custom Message all the same.
        messages = [m for m in getattr(res, "messages", []) if not isinstance(m, types.MessageEmpty)]
        return entity, messages

    async def get_participants(
        self, ref: PeerRef, limit: int = 100, offset: int = 0
    ) -> tuple[Entity, list[Any], int]:
        """(entity, users, total). Megagroups list recent members (at most 200 per call);
        a broadcast channel's members need admin rights (PeerPrivate); basic groups come
        whole from messages.getFullChat and are sliced here."""
        cached, entity = await self._input_peer(ref)
        p, raw = cached.input_peer, str(ref)
        if isinstance(p, types.InputPeerChannel):
            res = await self._invoke(
                functions.channels.GetParticipantsRequest(
                    types.InputChannel(p.channel_id, p.access_hash),
                    types.ChannelParticipantsRecent(),
                    offset,
                    min(limit, 200),
                    hash=0,
                ),
                peer=raw,
                blame=_PARTICIPANTS_BLAME,
            )
            # res.chats holds chats that are members, not the channel itself.
            entity = entity or await self._fetch_entity(cached, raw)
            users = {u.id: u for u in res.users}
            ids = [_participant_user_id(x) for x in res.participants]
            return entity, [users[i] for i in ids if i in users], res.count
        if isinstance(p, types.InputPeerChat):
            res = await self._invoke(functions.messages.GetFullChatRequest(p.chat_id), peer=raw)
            entity = _pick_entity(res.chats, cached.marked_id, raw)
            members = getattr(res.full_chat.participants, "participants", None)
            if members is None:  # ChatParticipantsForbidden
                raise PeerPrivate(raw, f"{raw}: its members are hidden from this account")
            users = {u.id: u for u in res.users}
            listed = [users[m.user_id] for m in members if m.user_id in users]
            return entity, listed[offset : offset + limit], len(listed)
        raise InvalidParam("peer", f"{raw} is a user: users have no participants")

    async def search(self, q: str, limit: int = 20) -> list[Entity]:
        """contacts.search: the public channels and groups found, at most `limit`.

        Telegram answers `results` (global) and `my_results` (what this account is in or
        has as contacts, private chats included): both are read, global ones first, each
        chat once, and only a public one is kept: a channel or megagroup with a username
        (its own or an active collectible one). A basic group has none, and a private
        chat the account is in must not show through the API (it would leak the pool's
        memberships); users and bots are not chats. Each list is capped by Telegram
        separately, so the merged one is cut to `limit` here.

        How short a query may be is Telegram's call (its limit is undocumented and spares
        short usernames), so a query it finds too short is 400 INVALID_PARAM on `q`."""
        res = await self._invoke(functions.contacts.SearchRequest(q, limit), blame=_SEARCH_BLAME)

        def public(chat: Any) -> bool:
            if not isinstance(chat, types.Channel):  # Chat, ChatForbidden, ChannelForbidden
                return False
            return bool(chat.username) or any(u.active for u in chat.usernames or ())

        chats = {utils.get_peer_id(c): c for c in res.chats if public(c)}
        order = [utils.get_peer_id(p) for p in [*res.results, *res.my_results]]
        seen: set[int] = set()
        out = []
        for marked in order:
            if marked in chats and marked not in seen:
                seen.add(marked)
                out.append(chats[marked])
        return out[:limit]

    async def join(self, ref: PeerRef) -> Entity:
        """Joins a channel or megagroup (by username or id) or any chat by invite link.

        A chat that needs an admin's approval raises JoinRequestSent (the request is filed;
        joining again after the approval succeeds); CHANNELS_TOO_MUCH stays TelegramError
        (the subscriber marks the account full and the pool tries another)."""
        raw = str(ref)
        if ref.invite is not None:
            return await self._join_invite(ref)
        cached, entity = await self._input_peer(ref)
        p = cached.input_peer
        if not isinstance(p, types.InputPeerChannel):
            raise InvalidParam("peer", f"{raw} is not a channel: basic groups join by invite link")
        channel = types.InputChannel(p.channel_id, p.access_hash)
        try:
            updates = await self._invoke(functions.channels.JoinChannelRequest(channel), peer=raw)
        except TelegramError as e:
            if e.rpc_error == "INVITE_REQUEST_SENT":
                raise JoinRequestSent(raw, self.name) from None
            if e.rpc_error != "USER_ALREADY_PARTICIPANT":
                raise
            return entity or await self._fetch_entity(cached, raw)
        found = getattr(updates, "chats", [])
        if any(utils.get_peer_id(c) == cached.marked_id for c in found):
            return _pick_entity(found, cached.marked_id, raw)
        return entity or await self._fetch_entity(cached, raw)

    async def _join_invite(self, ref: PeerRef) -> Entity:
        raw = str(ref)
        try:
            updates = await self._invoke(
                functions.messages.ImportChatInviteRequest(ref.invite), peer=raw
            )
        except TelegramError as e:
            if e.rpc_error == "INVITE_REQUEST_SENT":
                raise JoinRequestSent(raw, self.name) from None
            if e.rpc_error != "USER_ALREADY_PARTICIPANT":
                raise
            return await self._entity_from_invite(ref)
        chats = getattr(updates, "chats", [])
        if not chats:
            raise TelegramError("EMPTY_ANSWER", f"joining {raw} returned no chat")
        self.client.session.save()
        return chats[0]

    async def leave(self, ref: PeerRef) -> Entity:
        """Leaves a channel, megagroup or basic group; leaving twice is not an error."""
        cached, entity = await self._input_peer(ref)
        p, raw = cached.input_peer, str(ref)
        entity = entity or await self._fetch_entity(cached, raw)
        if isinstance(p, types.InputPeerChannel):
            request: Any = functions.channels.LeaveChannelRequest(
                types.InputChannel(p.channel_id, p.access_hash)
            )
        elif isinstance(p, types.InputPeerChat):
            request = functions.messages.DeleteChatUserRequest(p.chat_id, types.InputUserSelf())
        else:
            raise InvalidParam("peer", f"{raw} is a user: there is nothing to leave")
        try:
            await self._invoke(request, peer=raw)
        except TelegramError as e:
            if e.rpc_error != "USER_NOT_PARTICIPANT":
                raise
        return entity

    # --- every request goes through here ---

    async def _invoke(
        self, request: Any, *, peer: str = "", blame: Mapping[str, str] | None = None
    ) -> Any:
        """Sends one request; Telethon's errors become the service's, the state follows.

        `blame` maps the RPC errors that mean a caller's parameter is bad to that
        parameter: they become InvalidParam (400) instead of TelegramError (502)."""
        if not self.usable:
            raise AccountUnusable(self.name, self._state, self.reason or "out of rotation")
        t0 = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # meets the answer (bpo-42130), and a stopping service then never stops.
            async with asyncio.timeout(self._timeout):
                result = await self.client(request)
        except (errors.FloodWaitError, errors.FloodPremiumWaitError) as e:
            self._observe(request, "FLOOD_WAIT", t0)
            raise self._flood(e) from None
        except errors.RPCError as e:
            self._observe(request, rpc_error_name(e), t0)
            raise self._rpc_error(e, peer, blame or {}) from None
        except TimeoutError:  # before OSError, of which it is a subclass
            self._observe(request, "TIMEOUT", t0)
            raise TelegramError("TIMEOUT", f"Telegram did not answer in {self._timeout:.0f} s") from None
        except OSError as e:
            # ConnectionError, or the OSError (ENETUNREACH, ...) of the last connect attempt
            # that Telethon hands to the requests in flight when it gives up reconnecting.
            self._observe(request, "CONNECTION", t0)
            self._set_disconnected(str(e))
            raise AccountUnusable(self.name, AccountState.DISCONNECTED, str(e)) from None
        self._observe(request, None, t0)
        return result

    def _observe(self, request: Any, error: str | None, t0: float) -> None:
        if self.call_observer is not None:
            self.call_observer(request_name(request), error, time.perf_counter() - t0)

    def note_error(self, error: BaseException) -> BaseException:
        """Keeps the account's state for a Telegram error met outside `_invoke`.

        The downloader (model/downloader.py) sends `upload.getFile` over senders of its own, so
        its errors never pass `_invoke`. The Telethon error in `error` (or the one it was
        raised from) is classified here as `_invoke` classifies it: a flood wait sets
        `flood_until` and the flood counters (the pool skips the account until it ends), a
        ban or a logout takes the account out of rotation with the reason. The call
        observer is told of the refused request (its duration is not known here: 0).

        Returns the service's error for it (FloodWait, AccountUnusable), or `error` itself
        when it says nothing about the account."""
        rpc = _telethon_cause(error)
        if rpc is None:
            return error
        flood = isinstance(rpc, (errors.FloodWaitError, errors.FloodPremiumWaitError))
        name = "FLOOD_WAIT" if flood else rpc_error_name(rpc)
        if self.call_observer is not None and rpc.request is not None:
            self.call_observer(request_name(rpc.request), name, 0.0)
        if flood:
            return self._flood(rpc)
        service = self._rpc_error(rpc, "", {})
        return service if isinstance(service, AccountUnusable) else error

    def _flood(self, e: errors.FloodWaitError) -> FloodWait:
        kind = _request_kind(e.request)
        seconds = max(1, e.seconds)
        self.flood_waits += 1
        self.flood_wait_seconds += seconds
        self._flood_until[kind] = max(self._flood_until.get(kind, 0.0), self._clock() + seconds)
        log.warning("account %s: flood wait of %d s on %s requests", self.name, seconds, kind)
        return FloodWait(seconds, self.name)

    def _rpc_error(self, e: errors.RPCError, peer: str, blame: Mapping[str, str]) -> Exception:
        name = rpc_error_name(e)
        if name in blame:
            return InvalidParam(blame[name], f"Telegram refused it ({name})")
        fate = account_fate(e)
        if fate is not None:
            state = AccountState(fate)
            self._set_unusable(state, name)
            return AccountUnusable(self.name, state, name)
        if name in _NOT_FOUND and peer:
            return PeerNotFound(peer, f"{peer} not found ({name})")
        if name in _PRIVATE and peer:
            return PeerPrivate(peer, f"{peer} is not visible to the service ({name})")
        return TelegramError(name)

    def describe(self, wall_clock: Clock = time.time) -> dict[str, Any]:
        """This account as GET /api/v1/accounts shows it."""
        until = self.flood_until
        wall = None if until is None else wall_clock() + (until - self._clock())
        return {
            "name": self.name,
            "phone": mask_phone(self.phone) if self.phone else None,
            "user_id": self.user_id,
            "state": str(self.state),
            "flood_wait_until": _iso(wall),
            "pending_downloads": self.pending_downloads,
        }


def _telethon_cause(error: BaseException | None) -> errors.RPCError | None:
    """The Telethon RPC error `error` is, or was raised from (`raise ... from e`)."""
    for _ in range(5):  # a short chain: the downloader wraps once
        if error is None or isinstance(error, errors.RPCError):
            return error
        error = error.__cause__
    return None


def _pick_entity(found: Iterable[Any], marked_id: int, raw: str) -> Entity:
    for entity in found:
        if utils.get_peer_id(entity) == marked_id:
            if isinstance(entity, (types.UserEmpty, types.ChatEmpty)):
                break
            return entity
    raise PeerNotFound(raw)


def _history_blame(**ids: int) -> dict[str, str]:
    """A bad message id in messages.getHistory is the first one the caller gave."""
    given = [name for name, value in ids.items() if value]
    return {"LIMIT_INVALID": "limit"} | ({"MSG_ID_INVALID": given[0]} if given else {})


def _participant_user_id(participant: Any) -> int:
    if hasattr(participant, "peer"):  # channelParticipantBanned / Left name a peer
        return int(utils.get_peer_id(participant.peer, add_mark=False))
    return int(participant.user_id)


def _unknown_id_message(peer: PeerRef) -> str:
    return (
        f"no account knows the id {peer}: ask once by @username (or t.me link) so an "
        "account learns its access hash; ids work after that"
    )


# --- the pool ------------------------------------------------------------------------------


class TeleClients:
    """The pool of accounts.

    `run(op, peer)` picks an account and runs `op` on it. Accounts that already hold the
    peer's access hash come first; among them (or among all, when none does) the choice is
    weighted by pending downloads: the least busy account wins, ties go to the account
    picked least recently. A call that meets FLOOD_WAIT, or an
    account that turns out banned or disconnected, moves to the next account; when none
    is left the caller gets FloodWait or RateLimited with the earliest time one is ready.
    A username Telegram says nobody holds is answered 404 from memory for a while after
    (the negative cache, UNKNOWN_USERNAME_TTL): no resolution, no budget spent.
    """

    def __init__(
        self,
        clients: Iterable[TeleClient],
        clock: Clock = time.monotonic,
        *,
        unknown_username_ttl: float = UNKNOWN_USERNAME_TTL,
        unknown_usernames_max: int = UNKNOWN_USERNAMES_MAX,
    ) -> None:
        clients = list(clients)
        labels = account_labels(c.session_name for c in clients)
        for c in clients:
            c.name = labels[c.session_name]
        self._clients: dict[str, TeleClient] = {c.name: c for c in clients}
        # Rows written before labels existed name the account by its stem: still found.
        self._by_session: dict[str, TeleClient] = {c.session_name: c for c in clients}
        self._clock = clock
        self._last_pick: dict[str, int] = dict.fromkeys(self._clients, 0)
        self._seq = 0
        self._callbacks: list[UpdateCallback] = []
        # username -> (until when on `clock`, the 404's message): see UNKNOWN_USERNAME_TTL.
        self._unknown: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._unknown_ttl = unknown_username_ttl
        self._unknown_max = unknown_usernames_max

    @classmethod
    def from_sessions_dir(
        cls, sessions_dir: str | os.PathLike[str], api_id: int, api_hash: str, **options: Any
    ) -> TeleClients:
        """One TeleClient per `*.session` file in the folder (options go to TeleClient)."""
        paths = sorted(Path(sessions_dir).glob("*.session"))
        return cls([TeleClient(p, api_id, api_hash, **options) for p in paths])

    # --- life ---

    async def start(self) -> None:
        """Starts every account; a session held by another process stops the start."""
        results = await asyncio.gather(
            *(c.start() for c in self._clients.values()), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]
        log.info("%d accounts, %d usable", len(self._clients), sum(c.usable for c in self))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self._clients.values()), return_exceptions=True)

    def __iter__(self) -> Iterator[TeleClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    def get(self, name: str) -> TeleClient:
        """The account of that label, or of that session stem (media are bound to the
        account that fetched them; rows from before labels hold stems)."""
        found = self._clients.get(name) or self._by_session.get(name)
        if found is None:
            raise NoAccountAvailable(f"no account named {account_label(name)}")
        return found

    def relabeled(self) -> dict[str, str]:
        """{session stem: label} of the accounts whose label is not their stem (to move rows
        that name an account by its stem over to its label)."""
        return {c.session_name: c.name for c in self if c.session_name != c.name}

    def accounts(self) -> list[dict[str, Any]]:
        """Every account as GET /api/v1/accounts lists it."""
        return [c.describe() for c in self._clients.values()]

    def usable(self) -> bool:
        """Whether any account could serve a call now or after a flood wait (for /healthz)."""
        return any(c.ready_in(None) is not None for c in self._clients.values())

    def observe_calls(self, observer: CallObserver | None) -> None:
        """Tells `observer(method, error, seconds)` of every request any account sends."""
        for c in self._clients.values():
            c.call_observer = observer

    # --- updates ---

    def on_update(self, callback: UpdateCallback) -> None:
        """Calls `callback(teleclient, update)` for every raw update of every account."""
        if not self._callbacks:
            for c in self._clients.values():
                c.client.add_event_handler(self._dispatcher(c), events.Raw)
        self._callbacks.append(callback)

    def _dispatcher(self, account: TeleClient) -> Callable[[Any], Awaitable[None]]:
        async def dispatch(update: Any) -> None:
            for callback in list(self._callbacks):
                try:
                    await callback(account, update)
                except Exception:
                    log.exception("update callback failed on account %s", account.name)

        return dispatch

    # --- running calls ---

    async def run(
        self, op: Callable[[TeleClient], Awaitable[T]], peer: PeerRef | None = None
    ) -> tuple[T, TeleClient]:
        """Runs `op(account)` on the best account for `peer`; returns (result, account)."""
        if peer is not None and (gone := self._known_unknown(peer)) is not None:
            raise gone
        tried: set[str] = set()
        only_knowers = False
        private: PeerPrivate | None = None
        while True:
            account = self._pick(peer, tried, only_knowers)
            if account is None:
                if private is not None:
                    raise private
                raise self._nobody(peer, tried)
            tried.add(account.name)
            try:
                return await op(account), account
            except UnknownUsername as e:
                self._remember_unknown(e)
                raise
            except JoinRequestSent:
                raise  # a PeerPrivate, but one request to the admins is enough
            except (FloodWait, AccountUnusable) as e:
                log.info("account %s can't serve now (%s); trying another", account.name, e)
            except RateLimited:
                pass  # its budget ran out between the pick and the call
            except PeerPrivate as e:
                # Maybe only this account is banned from the peer: ask the others that know
                # it (asking costs no resolution), then give up.
                private, only_knowers = e, True

    def _known_unknown(self, peer: PeerRef) -> PeerNotFound | None:
        """The 404 of a username the negative cache holds, unless it expired or an account
        has met the name since (its entity came in an update or another answer)."""
        if peer.username is None or (entry := self._unknown.get(peer.username)) is None:
            return None
        until, message = entry
        if until <= self._clock() or any(c.knows(peer) for c in self._clients.values()):
            del self._unknown[peer.username]
            return None
        return PeerNotFound(str(peer), message)

    def _remember_unknown(self, e: UnknownUsername) -> None:
        self._unknown.pop(e.username, None)  # re-inserted last: the newest is kept longest
        self._unknown[e.username] = (self._clock() + self._unknown_ttl, e.message)
        while len(self._unknown) > self._unknown_max:
            self._unknown.popitem(last=False)

    def _pick(
        self, peer: PeerRef | None, tried: set[str], only_knowers: bool
    ) -> TeleClient | None:
        ready = [
            c for c in self._clients.values() if c.name not in tried and c.ready_in(peer) == 0
        ]
        if peer is not None and (peer.username or peer.id):
            knowers = [c for c in ready if c.knows(peer)]
            if knowers or only_knowers:
                ready = knowers
        elif only_knowers:
            ready = []
        if not ready:
            return None
        # The owner's note asked for a weighted choice kept in a heap. A heap kept across
        # calls would go stale: the weights (pending downloads) and who is ready (flood
        # waits, the peer's knowers, the accounts already tried) change between calls and
        # outside the pool. Rebuilt per call, a heap only serves its minimum, which min()
        # over this short list (one entry per account) finds in the same O(n), always fresh.
        best = min(ready, key=lambda c: (c.pending_downloads, self._last_pick[c.name]))
        self._seq += 1
        self._last_pick[best.name] = self._seq
        return best

    def _nobody(self, peer: PeerRef | None, tried: set[str]) -> Exception:
        """The error when no account can take the call: the soonest any becomes ready."""
        waits = [
            (wait, c)
            for c in self._clients.values()
            if (wait := c.ready_in(peer)) is not None and wait > 0
        ]
        if waits:
            wait, account = min(waits, key=lambda x: x[0])
            budget = (
                peer is not None
                and peer.username is not None
                and not account.knows(peer)
                and account.resolve_blocked_by_budget()
            )
            if budget:
                return RateLimited(wait, "every account spent its username resolutions")
            return FloodWait(wait, account.name, f"every account able to serve waits {wait:.0f} s")
        # "Nobody knows this id" only means something when an account could have known it;
        # with none usable, the answer is that nothing can be served (503), not 404.
        usable = [c for c in self._clients.values() if c.usable]
        if peer is not None and peer.id is not None and usable:
            if not any(c.knows(peer) for c in usable):
                return PeerNotFound(str(peer), _unknown_id_message(peer))
        return NoAccountAvailable("no account can serve this call now")


__all__ = [
    "AccountState",
    "JoinRequestSent",
    "ResolveBudget",
    "SessionLock",
    "TeleClient",
    "TeleClients",
    "UnknownUsername",
    "account_label",
    "account_labels",
]
