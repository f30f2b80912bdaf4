"""Live accounts: `Fleet.reload()` rereads sessions/ and the sidecars and brings the pool in
line with them, while the server runs (SIGHUP, `./startup.sh reload`).

- A new session file (enabled, or without a sidecar) is opened, connected and joins the
  pool; the subscription flow lets its updates flow, and its next account check makes the
  orphaned chats due (the takeover may join them with it).
- A removed session file, or one whose sidecar says `enabled=false`, leaves gracefully:
  out of the pool first (no call picks it from then on), its chats recorded as an
  unusable account's and handed to the takeover (as after a ban: service/subscription/
  takeover.py), then the calls it has in flight and the downloads bound to it end on it
  (the pool's `get` still finds it meanwhile), bounded by `drain_timeout`; then its
  updates are held (the update state saved up to what was published) and it disconnects.
  Downloads still queued then meet the media pipeline's rebind (the same file through
  another account that reaches the chat by id, service/mediasource.py; one that none
  reaches fails with the reason). A channel's watermark stays, so the poll of its new
  account brings what came in between.
- An account whose proxy changed (its sidecar's, or telegram.proxy for one without) leaves
  as above and comes back on the new proxy; a changed `label` is only shown from then on.
- A file that can't be taken now (a login holds it, a bad sidecar, a sealed file without
  its key) is refused with the reason and retried at the next reload; a running account
  whose sidecar turned bad keeps running as it was.
- A sessions folder that is gone fails the reload and changes nothing (it is a mistake,
  not every account removed).

Reloads run one at a time; what each did is returned (and logged) as a `Reloaded`, and the
last one is kept (`last`, `describe()`) for /status and /metrics: an operator who sent
SIGHUP at 3 a.m. sees there whether it ran and which files it refused, and why. Files are
named by their account's label, never by a stem that is a phone number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.const import Proxy
from common.errors import ConfigError
from common.sidecar import AccountSettings, read_sidecar
from model.account import account_label
from model.pool import TeleClients
from model.teleclient import TeleClient

log = logging.getLogger(__name__)

# (session path, its sidecar's settings) → the account, built but not started.
AccountMaker = Callable[[Path, AccountSettings], TeleClient]
DRAIN_TIMEOUT = 30.0  # s a leaving account's calls and downloads may take to end


class AccountFlow(Protocol):
    """What joining and leaving the pool involve besides the pool: the subscription flow's
    part (service.subscriber.Subscriber.adopt / retire)."""

    def adopt(self, account: TeleClient) -> None: ...

    async def retire(self, account: str) -> None: ...


class _NoFlow:
    def adopt(self, account: TeleClient) -> None:
        pass

    async def retire(self, account: str) -> None:
        pass


@dataclass
class Reloaded:
    """What one reload did: the labels of the accounts added, removed and reconnected, and
    the files refused ({label: reason})."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reconnected: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [
            f"{len(self.added)} added", f"{len(self.removed)} removed",
            f"{len(self.reconnected)} reconnected", f"{len(self.refused)} refused",
        ]  # fmt: skip
        return ", ".join(parts)


@dataclass(frozen=True)
class LastReload:
    """The last reload: when it ended (wall clock), what it did, or why it failed."""

    at: float
    done: Reloaded | None = None
    error: str | None = None


class Fleet:
    """The pool kept in line with sessions/ and the sidecars (see the module docstring)."""

    def __init__(
        self,
        pool: TeleClients,
        sessions_dir: Path,
        make_account: AccountMaker,
        *,
        default_proxy: Proxy | None,
        flow: AccountFlow | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._dir = sessions_dir
        self._make = make_account
        self._default_proxy = default_proxy
        self._flow: AccountFlow = flow or _NoFlow()
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._wall = wall
        self._lock = asyncio.Lock()
        self.reloads = 0  # reloads done
        self.failures = 0  # reloads that raised
        self.last: LastReload | None = None

    async def reload(self) -> Reloaded:
        """Brings the pool in line with sessions/ and the sidecars; one reload at a time."""
        async with self._lock:
            try:
                done = await self._reload()
            except Exception as e:
                self.failures += 1
                self.last = LastReload(self._wall(), error=f"{type(e).__name__}: {e}")
                raise
            self.last = LastReload(self._wall(), done)
            return done

    def describe(self) -> dict[str, Any]:
        """The reloads so far and the last one, as plain values (/status, /metrics)."""
        last = self.last
        done = last.done if last is not None else None
        return {
            "reloads": self.reloads,
            "failures": self.failures,
            "last_at": last.at if last is not None else None,
            "last": str(done) if done is not None else None,
            "last_error": last.error if last is not None else None,
            "refused": dict(done.refused) if done is not None else {},
        }

    async def _reload(self) -> Reloaded:
        done = Reloaded()
        wanted, bad = self._scan(done)
        running = {tc.session_name: tc for tc in self._pool}
        for stem, tc in running.items():
            if stem in wanted:
                tc.label = wanted[stem][1].label  # the operator's name: shown only
        leaving = [tc for stem, tc in running.items() if stem not in wanted and stem not in bad]
        moving = [
            tc for stem, tc in running.items()
            if stem in wanted and wanted[stem][1].proxy_or(self._default_proxy) != tc.proxy
        ]  # fmt: skip
        # New accounts first: the pool never runs dry while the old ones leave, and the
        # takeover of the leavers' chats can use them.
        new = [spec for stem, spec in wanted.items() if stem not in running]
        for account in await asyncio.gather(*(self._add(*spec, done) for spec in new)):
            if account is not None:
                done.added.append(account.name)
        done.removed = [tc.name for tc in leaving]
        await asyncio.gather(*(self._retire(tc) for tc in leaving + moving))
        back = [wanted[tc.session_name] for tc in moving]
        for account in await asyncio.gather(*(self._add(*spec, done) for spec in back)):
            if account is not None:
                done.reconnected.append(account.name)
        self.reloads += 1
        log.info("reload: %s; %d accounts in the pool", done, len(self._pool))
        return done

    def _scan(self, done: Reloaded) -> tuple[dict[str, tuple[Path, AccountSettings]], set[str]]:
        """({stem: (path, settings)} of the enabled sessions, the stems whose sidecar is bad)."""
        wanted: dict[str, tuple[Path, AccountSettings]] = {}
        bad: set[str] = set()
        if not self._dir.is_dir():
            # A folder gone (moved, an unmounted volume) is a mistake to report, not every
            # account removed at once: the reload fails and the pool stays as it is.
            raise FileNotFoundError(f"the sessions folder {self._dir} is missing")
        for path in sorted(self._dir.glob("*.session")):
            try:
                settings = read_sidecar(path)
            except ConfigError as e:
                log.error("reload: %s (the account stays as it was)", e)
                done.refused[account_label(path.stem)] = str(e)
                bad.add(path.stem)
                continue
            if settings.enabled:
                wanted[path.stem] = (path, settings)
        return wanted, bad

    async def _add(self, path: Path, settings: AccountSettings, done: Reloaded) -> TeleClient | None:
        label = account_label(path.stem)
        try:
            account = self._make(path, settings)
        except ConfigError as e:  # a sealed file without its key, with a wrong one...
            log.error("reload: account %s not added: %s", label, e)
            done.refused[label] = str(e)
            return None
        try:
            await account.start()
        except Exception as e:  # ConfigError: held by another process (a login under way?)
            await account.stop()
            log.warning("reload: account %s not added: %s", label, e)
            done.refused[label] = str(e)
            return None
        self._pool.add(account)
        self._flow.adopt(account)
        return account

    async def _retire(self, account: TeleClient) -> None:
        """Out of the pool, its chats handed over, its calls and downloads drained (bounded),
        its updates held, disconnected."""
        self._pool.remove(account.name)
        try:
            await self._flow.retire(account.name)
            await self._drained(account)
            if account.updates is not None:
                await account.updates.hold()
        except Exception:
            # It is out of the pool whatever failed here: it must still disconnect.
            log.exception("reload: account %s did not leave cleanly", account.name)
        try:
            await account.stop()
        except Exception:
            log.exception("reload: account %s did not disconnect cleanly", account.name)
        self._pool.forget(account)

    async def _drained(self, account: TeleClient, every: float = 0.05) -> None:
        deadline = self._clock() + self._drain_timeout
        while account.in_flight or account.pending_downloads:
            if self._clock() >= deadline:
                log.warning(
                    "reload: account %s still had %d calls and %d downloads after %.0f s; "
                    "disconnecting (the downloads continue from their parts elsewhere)",
                    account.name, account.in_flight, account.pending_downloads,
                    self._drain_timeout,
                )  # fmt: skip
                return
            await asyncio.sleep(every)
