"""One account's connection to Telegram: connect, reconnect, and send every request.

`Connection.invoke` is the one way a request leaves an account. Telethon's errors become
the service's (`model.tgerrors.domain_error`) and the account's `AccountStatus` follows
them: a flood wait per request kind, banned or logged out for good, disconnected until the
background reconnect succeeds. Errors met outside it (the downloader's own senders) are
classified the same way by `note_error`.

Requests go out through `model.telethon_internals.call_once`: Telethon's handling of an
answer, without its retries of Telegram's transient failures (a 500, a -503) on the same
connection, nor a wait on a connection that dropped under the call. Both become
TransientTelegramError at once, and the pool moves the call to another account.

Telethon reconnects by itself for a short while; when it gives up, `Connection` reconnects
with a capped exponential backoff for as long as the account runs, and calls `on_connect`
(the account reading who it is) after each connect that succeeds. A connect that fails
through `telegram.proxy` is explained by asking the proxy (`model.proxycheck.diagnose`):
the account's reason says whether the proxy was unreachable, refused the credentials,
refused the tunnel or timed out, naming its host and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from telethon import errors

from common.const import Proxy
from common.errors import AccountUnusable, FloodWait, TelegramError, TgcError
from model.account import AccountState, AccountStatus
from model.proxycheck import diagnose
from model.telethon_internals import Link, call_once
from model.tgerrors import (
    CONNECTION_LOST,
    ConnectionLost,
    domain_error,
    error_label,
    lost_connection_error,
    request_kind,
    request_name,
    telethon_cause,
)

# (method, error name or None, seconds): told of every request sent (for /metrics).
CallObserver = Callable[[str, str | None, float], None]

# A call whose connection dropped waits this long for Telethon to reconnect before it is
# given up (TransientTelegramError CONNECTION_LOST) and moved to another account: a
# reconnect to a live DC takes a round trip or two, after which Telethon sends the call
# again; a longer outage (the DC or the proxy gone) would hold it until telegram.timeout.
CONNECTION_GRACE = 0.5
# How long `diagnose` waits for each step of the proxy's answer.
PROXY_CHECK_TIMEOUT = 10.0


class Connection:
    """The Telethon `client` of one account, its reconnects, and its requests.

    `call_observer` (set through the pool) is told of every request sent and of every
    refused one `note_error` hears of.
    """

    def __init__(
        self,
        client: Any,
        status: AccountStatus,
        *,
        on_connect: Callable[[], Awaitable[None]],
        timeout: float = 30.0,
        reconnect_delay: float = 1.0,
        reconnect_max_delay: float = 60.0,
        proxy: Proxy | None = None,
        connection_grace: float = CONNECTION_GRACE,
    ) -> None:
        self.client = client
        self.call_observer: CallObserver | None = None
        self.in_flight = 0  # requests sent and not answered yet (a retiring account waits)
        self._status = status
        self._on_connect = on_connect
        self._timeout = timeout
        self._reconnect_delay = reconnect_delay
        self._reconnect_max_delay = reconnect_max_delay
        self._proxy = proxy
        self._link = Link(lost_after=connection_grace, poll=min(0.1, connection_grace / 2))
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    # --- life ---

    async def open(self) -> None:
        """Connects and runs `on_connect`, then watches the connection in the background.

        Nothing here is fatal: an account that can't connect is disconnected and keeps
        trying in the background; one that is banned or logged out is left alone."""
        self._stopping = False
        loop: Coroutine[Any, Any, None]
        if await self._connect():
            await self._on_connect()
            loop = self._watch()
        else:
            loop = self._reconnect_loop()
        self._watcher = asyncio.create_task(loop, name=f"tgc-{self._status.name}")

    async def stop_watching(self) -> None:
        """Ends the background watch and reconnects (before the client disconnects)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):  # not wait_for: see invoke
                await self.client.connect()
        except Exception as e:  # OSError, a timeout, or Telethon's own view of a bad key
            self._status.set_disconnected(f"connect failed: {await self._why(e)}")
            return False
        self._status.set_connected()
        return True

    async def _why(self, error: Exception) -> str:
        """What stopped a connect: the proxy's part when there is a proxy and it failed,
        else the error (a bare timeout said nothing: "TimeoutError:")."""
        if isinstance(error, TimeoutError) and not str(error):
            said = f"no connection to Telegram in {self._timeout:g} s"
        else:
            said = f"{error.__class__.__name__}: {error}"
        if self._proxy is None:
            return said
        session = self.client.session
        address = getattr(session, "server_address", None)
        target = (address, session.port) if address else None
        timeout = min(self._timeout, PROXY_CHECK_TIMEOUT)
        found = await diagnose(self._proxy, target, timeout)
        if found is not None:
            return found
        proxy = f"{self._proxy.scheme} proxy {self._proxy.host}:{self._proxy.port}"
        return f"{said} (through the {proxy}, which lets the connection through)"

    async def _watch(self) -> None:
        """Waits for Telethon to give up reconnecting (its own retries are short), then
        reconnects with a capped exponential backoff, for as long as the account runs."""
        while not self._stopping and self._status.usable:
            with contextlib.suppress(Exception):
                await self.client.disconnected
            if self._stopping or not self._status.usable:
                return
            self._status.set_disconnected("the connection was lost")
            await self._reconnect_loop(watch=False)

    async def _reconnect_loop(self, watch: bool = True) -> None:
        delay = self._reconnect_delay
        while not self._stopping and self._status.disconnected:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_delay)
            if await self._connect():
                await self._on_connect()
        if watch:
            await self._watch()

    # --- requests ---

    async def invoke(
        self, request: Any, *, peer: str = "", blame: Mapping[str, str] | None = None
    ) -> Any:
        """Sends one request; Telethon's errors become the service's, the status follows.

        `peer` names the peer the request is about (for PeerNotFound and PeerPrivate);
        `blame` maps the RPC errors that mean one of the caller's arguments is bad to that
        argument: they become InvalidArgument instead of TelegramError."""
        status = self._status
        if not status.usable:
            raise AccountUnusable(status.name, status.state, status.reason or "out of rotation")
        self.in_flight += 1
        try:
            return await self._invoke(request, peer, blame)
        finally:
            self.in_flight -= 1

    async def _invoke(self, request: Any, peer: str, blame: Mapping[str, str] | None) -> Any:
        status = self._status
        t0 = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # meets the answer (bpo-42130), and a stopping service then never stops.
            async with asyncio.timeout(self._timeout):
                result = await call_once(self.client, request, self._link)
        except errors.RPCError as e:
            self._observe(request, error_label(e), t0)
            raise self._account_error(e, peer, blame) from None
        except ConnectionLost:
            # Telethon is reconnecting (the account stays ok; its watch sees if it gives up).
            self._observe(request, CONNECTION_LOST, t0)
            raise lost_connection_error(status.name, self._link.lost_after) from None
        except TimeoutError:  # before OSError, of which it is a subclass
            # Not moved to another account: this call had its telegram.timeout already.
            self._observe(request, "TIMEOUT", t0)
            message = f"Telegram did not answer in {self._timeout:.0f} s"
            raise TelegramError("TIMEOUT", message) from None
        except OSError as e:
            # ConnectionError, or the OSError (ENETUNREACH, ...) of the last connect attempt
            # that Telethon hands to the requests in flight when it gives up reconnecting.
            self._observe(request, "CONNECTION", t0)
            status.set_disconnected(str(e))
            raise AccountUnusable(status.name, AccountState.DISCONNECTED, str(e)) from None
        self._observe(request, None, t0)
        return result

    def note_error(self, error: BaseException) -> BaseException:
        """Keeps the account's status for a Telegram error met outside `invoke`.

        The Telethon error in `error` (or the one it was raised from) is classified as
        `invoke` classifies it: a flood wait sets the flood wait and its counters, a ban
        or a logout takes the account out of rotation with the reason. The call observer
        is told of the refused request (its duration is not known here: 0).

        Returns the service's error for it (FloodWait, AccountUnusable), or `error` itself
        when it says nothing about the account."""
        rpc = telethon_cause(error)
        if rpc is None:
            return error
        if self.call_observer is not None and rpc.request is not None:
            self.call_observer(request_name(rpc.request), error_label(rpc), 0.0)
        service = self._account_error(rpc, "", None)
        return service if isinstance(service, (FloodWait, AccountUnusable)) else error

    def _observe(self, request: Any, error: str | None, t0: float) -> None:
        if self.call_observer is not None:
            self.call_observer(request_name(request), error, time.perf_counter() - t0)

    def _account_error(
        self, e: errors.RPCError, peer: str, blame: Mapping[str, str] | None
    ) -> TgcError:
        """The service's error for `e`, the account's status updated from it."""
        error = domain_error(e, self._status.name, peer=peer, blame=blame)
        if isinstance(error, FloodWait):
            self._status.flood(request_kind(e.request), error.retry_after)
        elif isinstance(error, AccountUnusable):
            self._status.set_unusable(AccountState(error.state), error.reason)
        return error
