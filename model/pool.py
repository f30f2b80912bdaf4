"""The pool of accounts: `TeleClients` picks the account for each call.

Bursts of resolutions are what get accounts flood-waited for hours, so `run` prefers
accounts that already hold the peer's access hash: a peer is resolved at most once per
account, and the session file keeps it across restarts. Each account's Telethon client
sleeps through no flood wait (telegram.flood_sleep_threshold is 0 by default): the pool
answers FloodWait by moving the call to another account. A transient failure (Telegram's
500s, a -503, the connection dropped mid-call: TransientTelegramError) moves it too, at
once: Telethon does not retry those on the same account (model/telethon_internals.py
call_once), so a call costs one round trip per account that fails it, and the crawler sees
502 only when every account able to serve failed it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from telethon import events

from common.errors import (
    AccountUnusable,
    FloodWait,
    JoinRequestSent,
    NoAccountAvailable,
    PeerNotFound,
    PeerPrivate,
    RateLimited,
    TransientTelegramError,
    UnknownUsername,
)
from common.sidecar import AccountSettings, read_sidecars
from common.utils import PeerRef
from model.account import Clock, account_label, account_labels
from model.connection import CallObserver
from model.resolver import unknown_id_message
from model.teleclient import TeleClient

log = logging.getLogger(__name__)

T = TypeVar("T")
UpdateCallback = Callable[[TeleClient, Any], Awaitable[None]]

# The pool's negative cache: a username Telegram says nobody holds (USERNAME_NOT_OCCUPIED,
# USERNAME_INVALID) is answered PeerNotFound from memory for UNKNOWN_USERNAME_TTL seconds
# instead of a contacts.resolveUsername (and a budget token) per ask. A crawler that retries
# a dead @name from a post would otherwise spend every account's budget (5 a minute) in a
# minute and real resolutions would be refused. Five minutes turns a retry loop's ~75
# resolutions into one while a name registered meanwhile is unknown for at most five
# minutes; it must expire because usernames are registered (and freed) all the time. At
# most UNKNOWN_USERNAMES_MAX names are kept (the oldest forgotten first): ~1 MB, whatever
# a crawler sends.
UNKNOWN_USERNAME_TTL = 300.0
UNKNOWN_USERNAMES_MAX = 10_000

# Which accounts know a peer, remembered so that a call need not ask every account's entity
# cache (one SQLite lookup each: with 1,000 accounts that walk was 16 ms of CPU per call,
# issue 13). A remembered list is a fast path only: it is written by a walk over every
# account, grows when another account serves the peer, and is walked again when none of
# the accounts in it can take the call or after KNOWERS_TTL seconds (an account may have
# met the peer in an update since, and should share its load). KNOWERS_MAX peers at most,
# the least recently asked forgotten first.
KNOWERS_TTL = 60.0
KNOWERS_MAX = 10_000


def account_from(
    session_path: Path, own: AccountSettings, api_id: int, api_hash: str, **options: Any
) -> TeleClient:
    """The TeleClient of one session as its sidecar `own` says: its proxy wins over
    `options["proxy"]` (telegram.proxy) for all its connections, its label is shown."""
    proxy = own.proxy_or(options.pop("proxy", None))
    return TeleClient(session_path, api_id, api_hash, proxy=proxy, label=own.label, **options)


class TeleClients:
    """The pool of accounts.

    `run(op, peer)` picks an account and runs `op` on it. Accounts that already hold the
    peer's access hash come first; among them (or among all, when none does) the choice is
    weighted by pending downloads: the least busy account wins, ties go to the account
    picked least recently. A call that meets FLOOD_WAIT or a transient failure, or an
    account that turns out banned or disconnected, moves to the next account at once; when
    none is left the caller gets the last transient failure if there was one (502), else
    FloodWait or RateLimited with the earliest time one is ready.
    A username Telegram says nobody holds is PeerNotFound from memory for a while after
    (`UnknownUsernames`, the negative cache): no resolution, no budget spent.
    """

    def __init__(
        self,
        clients: Iterable[TeleClient],
        clock: Clock = time.monotonic,
        *,
        unknown_username_ttl: float = UNKNOWN_USERNAME_TTL,
        unknown_usernames_max: int = UNKNOWN_USERNAMES_MAX,
        knowers_ttl: float = KNOWERS_TTL,
        knowers_max: int = KNOWERS_MAX,
    ) -> None:
        clients = list(clients)
        labels = account_labels(c.session_name for c in clients)
        for c in clients:
            c.name = labels[c.session_name]
        self._clients: dict[str, TeleClient] = {c.name: c for c in clients}
        # Rows written before labels existed name the account by its stem: still found.
        self._by_session: dict[str, TeleClient] = {c.session_name: c for c in clients}
        # Each account's latest pick, kept in the order of the picks (the least recently
        # picked first): a walk in this order can stop at the first idle ready account,
        # which is the one `min` over all of them would choose (see `_picked`).
        self._last_pick: dict[str, int] = dict.fromkeys(self._clients, 0)
        self._seq = 0
        self._callbacks: list[UpdateCallback] = []
        self._observer: CallObserver | None = None
        # Accounts a reload took out and has not stopped yet: no call picks them, but `get`
        # finds them (the downloads bound to them end on them; service/fleet.py).
        self._leaving: dict[str, TeleClient] = {}
        self._unknown = UnknownUsernames(clock, unknown_username_ttl, unknown_usernames_max)
        self._knowers = Knowers(clock, knowers_ttl, knowers_max)

    @classmethod
    def from_sessions_dir(
        cls, sessions_dir: str | os.PathLike[str], api_id: int, api_hash: str, **options: Any
    ) -> TeleClients:
        """One TeleClient per `*.session` file in the folder (options go to TeleClient),
        each as its sidecar says (common/sidecar.py): its own proxy over `options["proxy"]`
        (telegram.proxy), its label; an account whose sidecar says enabled=false is left
        out. Every sidecar is read first: a bad one raises ConfigError and nothing is built."""
        paths = sorted(Path(sessions_dir).glob("*.session"))
        clients = []
        for path, own in read_sidecars(paths).items():
            if not own.enabled:
                log.info("account %s left out: enabled=false in %s", account_label(path.stem), own.source)
                continue
            clients.append(account_from(path, own, api_id, api_hash, **options))
        return cls(clients)

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
        """Stops every account, those leaving too (each one's failure is its own)."""
        every = [*self._clients.values(), *self._leaving.values()]
        await asyncio.gather(*(c.stop() for c in every), return_exceptions=True)

    # --- live accounts (start.py's reload) ---

    def add(self, account: TeleClient) -> None:
        """Puts a started account into the pool: calls pick it from now on, its updates go
        to the callbacks registered, its requests to the call observer.

        Its label is the one `account_labels` gives its stem among the pool's, unless a
        live account already holds that label (a live account's label never changes: its
        rows and events carry it): then the first free `#n` after it."""
        stems = [c.session_name for c in self] + [account.session_name]
        base = label = account_labels(stems)[account.session_name]
        n = 1
        while label in self._clients:
            n += 1
            label = f"{base}#{n}"
        account.name = label
        self._clients[label] = account
        self._by_session[account.session_name] = account
        self._last_pick[label] = 0
        account.call_observer = self._observer
        if self._callbacks:
            account.client.add_event_handler(self._dispatcher(account), events.Raw)
        log.info("account %s joined the pool (%d accounts)", label, len(self._clients))

    def remove(self, name: str) -> TeleClient:
        """Takes the account of that label (or session stem) out of the pool: no call picks
        it from now on; the calls it has in flight finish on it, and `get` still finds it
        (the downloads bound to it) until `forget`. The caller stops it, then forgets it
        (`stop()` of the pool stops it too). NoAccountAvailable when there is none."""
        account = self._clients.get(name) or self._by_session.get(name)
        if account is None:
            raise NoAccountAvailable(f"no account named {account_label(name)}")
        del self._clients[account.name]
        del self._last_pick[account.name]
        self._by_session.pop(account.session_name, None)
        self._leaving[account.name] = account
        log.info("account %s left the pool (%d accounts)", account.name, len(self._clients))
        return account

    def forget(self, account: TeleClient) -> None:
        """A removed account, stopped: `get` no longer finds it."""
        if self._leaving.get(account.name) is account:
            del self._leaving[account.name]

    def __iter__(self) -> Iterator[TeleClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    def get(self, name: str) -> TeleClient:
        """The account of that label, or of that session stem (media are bound to the
        account that fetched them; rows from before labels hold stems)."""
        found = self._clients.get(name) or self._by_session.get(name) or self._leaving_one(name)
        if found is None:
            raise NoAccountAvailable(f"no account named {account_label(name)}")
        return found

    def _leaving_one(self, name: str) -> TeleClient | None:
        return self._leaving.get(name) or next(
            (c for c in self._leaving.values() if c.session_name == name), None
        )

    def relabeled(self) -> dict[str, str]:
        """{session stem: label} of the accounts whose label is not their stem (to move rows
        that name an account by its stem over to its label)."""
        return {c.session_name: c.name for c in self if c.session_name != c.name}

    def accounts(self) -> list[dict[str, Any]]:
        """Every account's public description (`TeleClient.describe`), in pool order."""
        return [c.describe() for c in self._clients.values()]

    def usable(self) -> bool:
        """Whether any account could serve a call now or after a flood wait (for /healthz)."""
        return any(c.ready_in(None) is not None for c in self._clients.values())

    def observe_calls(self, observer: CallObserver | None) -> None:
        """Tells `observer(method, error, seconds)` of every request any account sends."""
        self._observer = observer
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
        self,
        op: Callable[[TeleClient], Awaitable[T]],
        peer: PeerRef | None = None,
        *,
        prefer: str | None = None,
    ) -> tuple[T, TeleClient]:
        """Runs `op(account)` on the best account for `peer`; returns (result, account).
        `prefer` names the account to ask first when it can take the call now and knows the
        peer (the gap poll's lane: each account polls its own chats at its own pace)."""
        if peer is not None and (gone := self._unknown.answer(peer, self._known)) is not None:
            raise gone
        tried: set[str] = set()
        only_knowers = False
        # A basic group is reached by its id alone, by any member (no access hash): an
        # account that is not in it (PeerNotFound) or was kicked (PeerPrivate) passes it on.
        by_membership = is_basic_group_ref(peer)
        missing: PeerNotFound | None = None
        private: PeerPrivate | None = None
        transient: TransientTelegramError | None = None
        while True:
            account = self._preferred(prefer, peer, tried) or self._pick(peer, tried, only_knowers)
            if account is None:
                # A transient failure first: asked again, the call may well succeed, where
                # a PeerPrivate or a flood wait would send the crawler away for longer.
                if transient is not None:
                    raise transient
                if private is not None:
                    raise private
                nobody = self._nobody(peer, tried)
                if missing is not None and peer is not None:
                    if isinstance(nobody, FloodWait | RateLimited):
                        raise nobody  # a member may be among the accounts that wait
                    raise self._no_member(peer, missing)
                raise nobody
            tried.add(account.name)
            try:
                result = await op(account)
                if peer is not None:
                    self._knowers.served(peer, account.name)
                return result, account
            except UnknownUsername as e:
                self._unknown.remember(e.username, e.message)
                raise
            except JoinRequestSent:
                raise  # a PeerPrivate, but one request to the admins is enough
            except (PeerNotFound, PeerPrivate) as e:
                if not by_membership:
                    if isinstance(e, PeerNotFound):
                        raise
                    # Maybe only this account is banned from the peer: ask the others that
                    # know it (asking costs no resolution), then give up.
                    private, only_knowers = e, True
                elif isinstance(e, PeerPrivate):
                    private = e  # kicked from it (CHAT_FORBIDDEN): another may be in
                else:
                    missing = e  # not a member: another may be
            except (FloodWait, AccountUnusable) as e:
                log.info("account %s can't serve now (%s); trying another", account.name, e)
            except TransientTelegramError as e:
                log.info("account %s: %s; trying another", account.name, e)
                transient = e
            except RateLimited:
                pass  # its budget ran out between the pick and the call

    def _no_member(self, peer: PeerRef, missing: PeerNotFound) -> PeerNotFound:
        """Every account able to try a basic group said it is not in it: remembered like an
        unknown username (a crawler retrying it costs one round of the pool per TTL, not one
        per request; forgotten as soon as an account meets the chat)."""
        message = f"no account is a member of basic group {peer}"
        self._unknown.remember(str(peer.marked_ids()[0]), message)
        return PeerNotFound(str(peer), message)

    def _known(self, peer: PeerRef) -> bool:
        return any(c.knows(peer) for c in self._clients.values())

    def _preferred(
        self, prefer: str | None, peer: PeerRef | None, tried: set[str]
    ) -> TeleClient | None:
        account = self._clients.get(prefer) if prefer is not None else None
        if account is None or account.name in tried or account.ready_in(None) != 0:
            return None
        if peer is not None and (peer.username or peer.id) and not account.knows(peer):
            return None  # asking it would cost a resolution, or it can't find an id at all
        return self._picked(account)

    def _pick(self, peer: PeerRef | None, tried: set[str], only_knowers: bool) -> TeleClient | None:
        """The least busy ready account (ties: the least recently picked), among the ones
        that know `peer` when any of them is ready (or `only_knowers`)."""
        if peer is not None and (peer.username or peer.id):
            best = self._least_busy(self._ready_knowers(self._knowers.get(peer), peer, tried))
            if best is None:
                knowers = [c for c in self._in_pick_order() if c.knows(peer)]
                self._knowers.put(peer, [c.name for c in knowers])
                best = self._least_busy(self._ready_knowers(knowers, peer, tried))
            if best is not None or only_knowers:
                return self._picked(best)
        elif only_knowers:
            return None
        ready = (c for c in self._in_pick_order() if c.name not in tried and c.ready_in(peer) == 0)
        return self._picked(self._least_busy(ready))

    def _in_pick_order(self) -> Iterator[TeleClient]:
        """The accounts, the least recently picked first."""
        for name in self._last_pick:
            if (account := self._clients.get(name)) is not None:
                yield account

    def _ready_knowers(
        self, knowers: Iterable[TeleClient | str], peer: PeerRef, tried: set[str]
    ) -> Iterator[TeleClient]:
        """Those of `knowers` (accounts or their names) that still know `peer` and can take
        a call now, the least recently picked first."""
        accounts = (self._clients.get(k) if isinstance(k, str) else k for k in knowers)
        found = [c for c in accounts if c is not None and c.name not in tried]
        for c in sorted(found, key=lambda c: self._last_pick.get(c.name, 0)):
            # ready_in(None): a knower's readiness (ready_in(peer) would ask knows() again).
            if c.ready_in(None) == 0 and c.knows(peer):
                yield c

    @staticmethod
    def _least_busy(candidates: Iterable[TeleClient]) -> TeleClient | None:
        """The first candidate with the fewest pending downloads (candidates come the least
        recently picked first, so this is min by (pending, last pick)); an idle one ends the
        walk at once."""
        best: TeleClient | None = None
        for c in candidates:
            if c.pending_downloads <= 0:
                return c
            if best is None or c.pending_downloads < best.pending_downloads:
                best = c
        return best

    def _picked(self, account: TeleClient | None) -> TeleClient | None:
        # The owner's note asked for a weighted choice kept in a heap. A heap kept across
        # calls would go stale: the weights (pending downloads) and who is ready (flood
        # waits, the peer's knowers, the accounts already tried) change between calls and
        # outside the pool. The walk in pick order finds the same minimum and stops at the
        # first idle ready account, which is usually the first it looks at.
        if account is not None:
            self._seq += 1
            self._last_pick.pop(account.name, None)
            self._last_pick[account.name] = self._seq  # re-inserted: last in the order
        return account

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
        # with none usable, the answer is that nothing can be served, not PeerNotFound.
        usable = [c for c in self._clients.values() if c.usable]
        if peer is not None and peer.id is not None and usable:
            if not any(c.knows(peer) for c in usable):
                return PeerNotFound(str(peer), unknown_id_message(peer))
        return NoAccountAvailable("no account can serve this call now")


def is_basic_group_ref(peer: PeerRef | None) -> bool:
    """Whether `peer` names a basic group by its marked id (-CHAT_ID)."""
    return peer is not None and peer.kind == "chat" and peer.id is not None


def _negative_key(peer: PeerRef) -> str | None:
    """What the negative cache keeps `peer` under: a username, or a basic group's marked id
    (a username never starts with '-')."""
    if peer.username is not None:
        return peer.username
    if is_basic_group_ref(peer):
        return str(peer.marked_ids()[0])
    return None


class UnknownUsernames:
    """The negative cache: usernames nobody holds (and basic groups no account is in), each
    remembered for `ttl` seconds on `clock` (see UNKNOWN_USERNAME_TTL), at most `limit` of
    them, the oldest forgotten first."""

    def __init__(self, clock: Clock, ttl: float, limit: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        # username -> (until when on `clock`, the PeerNotFound's message)
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def remember(self, key: str, message: str) -> None:
        """Keeps what Telegram answered of `key` (a username, a basic group's marked id),
        for the TTL from now."""
        self._entries.pop(key, None)  # re-inserted last: the newest is kept longest
        self._entries[key] = (self._clock() + self._ttl, message)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def answer(self, peer: PeerRef, known: Callable[[PeerRef], bool]) -> PeerNotFound | None:
        """The PeerNotFound of a peer held here, unless it expired or an account has met
        it since (`known`: its entity came in an update or another answer)."""
        key = _negative_key(peer)
        if key is None or (entry := self._entries.get(key)) is None:
            return None
        until, message = entry
        if until <= self._clock() or known(peer):
            del self._entries[key]
            return None
        return PeerNotFound(str(peer), message)


class Knowers:
    """Which accounts know a peer (see KNOWERS_TTL): a list per peer written by a walk over
    every account (`put`), kept for `ttl` seconds on `clock`, at most `limit` peers."""

    def __init__(self, clock: Clock, ttl: float, limit: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._limit = limit
        # peer key -> (until when on `clock`, the names of the accounts that know it)
        self._entries: OrderedDict[tuple[str, ...], tuple[float, list[str]]] = OrderedDict()

    @staticmethod
    def _key(peer: PeerRef) -> tuple[str, ...]:
        if peer.username is not None:
            return ("@", peer.username.lower())
        return ("#", *map(str, peer.marked_ids()))

    def get(self, peer: PeerRef) -> list[str]:
        """The accounts last found to know `peer` ([] when none was, or it expired)."""
        key = self._key(peer)
        entry = self._entries.get(key)
        if entry is None:
            return []
        if entry[0] <= self._clock():
            del self._entries[key]
            return []
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, peer: PeerRef, names: list[str]) -> None:
        """What a walk over every account found (nothing is kept of a peer nobody knows:
        the next call walks again, and may find the account resolving it)."""
        key = self._key(peer)
        self._entries.pop(key, None)
        if names:
            self._entries[key] = (self._clock() + self._ttl, names)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def served(self, peer: PeerRef, name: str) -> None:
        """`name` served a call about `peer`: it knows it now (a remembered list only grows
        here; a peer not remembered waits for the next walk, which finds every knower)."""
        entry = self._entries.get(self._key(peer))
        if entry is not None and name not in entry[1]:
            entry[1].append(name)
