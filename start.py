"""tgc: the server and its command line.

    python start.py [serve] [--config PATH]          run the server in the foreground
    python start.py login --phone +NUMBER            create sessions/NUMBER.session
        [--dc HOST:PORT --dc-rsa-key PEM]            (through the loopback emulator, in tests)
    python start.py accounts                          list the session files and their state
    python start.py sessions seal|unseal              convert the session files' auth keys
                                                      (telegram.session_key; server stopped)
    python start.py call METHOD URI [--body JSON]    a signed request; prints the answer
    python start.py demo [--once]                     the server against the Telegram emulator
    python start.py paths                             (for startup.sh) where the pid/url/log files are

Exit codes: 0 done, 1 failed, 2 bad usage or a bad config (the message names the key and
the file), 130 (SIGINT) or 1 (SIGTERM) when a second signal forced the stop. `serve` also
writes its exit code, as `PID CODE`, to data.dir/run/tgc.exit as its last act (after it
released the pid file), where `startup.sh stop` reads it.

`Server` builds every long-lived service from the settings inside the running loop, serves,
and owns the lifecycle: SIGTERM/SIGINT start a graceful stop (stop accepting, let in-flight
requests finish within server.shutdown_timeout, stop the workers at a safe point, persist,
disconnect the accounts), a second signal forces the exit. SIGHUP rereads sessions/ and the
sidecars (service/fleet.py): accounts join and leave the pool while it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import getpass
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import orjson
import tornado.web
import uvloop
from tornado import httputil
from tornado.httpserver import HTTPServer

from common.const import (
    CLIENT_REQUIRED,
    SERVE_REQUIRED,
    TELEGRAM_REQUIRED,
    Proxy,
    Settings,
    load_settings,
)
from common.errors import ConfigError
from common.logger import setup_logging
from common.private import describe, make_private_dir, open_to_others, private_files

if TYPE_CHECKING:
    # The services' types, for the annotations only: each command imports what it runs
    # when it runs it (`paths` and `call` start without Telethon, the services, SQLite).
    from prometheus_client import CollectorRegistry

    from common.sidecar import AccountSettings
    from model.clientfactory import ClientOptions
    from model.joinmap import JoinMap
    from model.login import Login
    from model.pool import TeleClients
    from model.teleclient import TeleClient
    from service.fleet import Reloaded
    from service.handler import Route
    from service.listener import AcceptGuard
    from service.mediaprocessor import MediaProcessor
    from service.noncestore import JournalNonceStore
    from service.outbox import Outbox
    from service.publisher import Publisher
    from service.status import ErrorLog
    from service.storage import Storage
    from service.subscriber import Subscriber

log = logging.getLogger("tgc.start")

AppFactory = Callable[["Server"], tornado.web.Application]


class UsageError(Exception):
    """A bad command line: printed with the usage hint, exit code 2."""


class LoginFailed(Exception):
    """Telegram refused the login (an unknown number, a banned one...): exit code 1."""


# --- one server per data.dir: the pid file is also the lock ------------------------------


class PidFile:
    """`data.dir/run/tgc.pid`, held with an exclusive flock while the server runs.

    The lock, not the pid in the file, says whether a server runs: the kernel drops it when
    the process dies, even by SIGKILL, so a stale file never blocks a start and a reused
    pid never fakes a running server. startup.sh tests the same lock with flock(1).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, source: Path) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            reason = f"{self.path.parent} can't be created: {e.strerror or e}"
            raise ConfigError("data.dir", str(source), reason) from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ConfigError(
                    "data.dir",
                    str(source),
                    f"already in use by another tgc server (pid {other}, lock {self.path}); "
                    "stop it first (./startup.sh stop), or give this one its own data.dir",
                ) from None
            # The holder we raced with may have unlinked the file between our open and our
            # lock: then we hold a lock on a file nobody else will ever open. Retry.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so nobody locks a file that is going away.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


# --- in-flight requests, for the graceful stop ---------------------------------------------


class InFlight(httputil.HTTPServerConnectionDelegate):
    """Wraps the Application to count requests from the end of their body to the end of
    their answer (`active`), and those still sending their body (`receiving`).

    Tornado's `close_all_connections` closes connections whatever they are doing; the stop
    instead waits for `active` to reach zero (bounded by server.shutdown_timeout). A
    request still sending its body is not waited for: a client that sends part of one and
    goes quiet must not hold the stop (it would only get 503 SHUTTING_DOWN once its body
    came); its connection is closed with the others after the wait.
    """

    def __init__(self, app: httputil.HTTPServerConnectionDelegate) -> None:
        self.app = app
        self.active = 0
        self.receiving = 0
        self.served = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Counted(self, self.app.start_request(server_conn, request_conn), request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def begin(self) -> None:
        self.active += 1
        self._idle.clear()

    def end(self) -> None:
        self.active -= 1
        self.served += 1
        if self.active == 0:
            self._idle.set()

    async def wait_idle(self, limit: float) -> bool:
        """True when every request got its answer within `limit` seconds."""
        try:
            async with asyncio.timeout(limit):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class _Counted(httputil.HTTPMessageDelegate):
    """One request's passage: headers → (receiving its body) → active → answered, or
    closed at any point."""

    def __init__(
        self,
        tracker: InFlight,
        inner: httputil.HTTPMessageDelegate,
        conn: httputil.HTTPConnection,
    ) -> None:
        self._tracker = tracker
        self._inner = inner
        self._conn = conn
        self._state = "new"  # → receiving → active → done

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._state = "receiving"
        self._tracker.receiving += 1
        # The answer is complete when the handler finishes it on the connection (which it
        # may do before the body came: a 413 or 429 refuses a body unread).
        finish = self._conn.finish

        def finished() -> None:
            try:
                finish()
            finally:
                self._done()

        self._conn.finish = finished  # type: ignore[method-assign]
        return self._inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self._inner.data_received(chunk)

    def finish(self) -> None:
        # The whole request is in (Tornado calls this before the handler runs its verb).
        if self._state == "receiving":
            self._state = "active"
            self._tracker.receiving -= 1
            self._tracker.begin()
        self._inner.finish()

    def on_connection_close(self) -> None:
        try:
            self._inner.on_connection_close()
        finally:
            self._done()

    def _done(self) -> None:
        if self._state == "receiving":
            self._tracker.receiving -= 1
        elif self._state == "active":
            self._tracker.end()
        self._state = "done"


# --- stop signals --------------------------------------------------------------------------


def _reload_done(task: asyncio.Task[Any]) -> None:
    """Consumes a reload task's outcome (logged by the reload itself)."""
    if not task.cancelled():
        task.exception()


class StopSignals:
    """SIGTERM and SIGINT on the running loop: the first sets `stop` (the graceful stop
    begins), a second calls `force(code)` at once: 130 for SIGINT, 1 for SIGTERM."""

    def __init__(self, stop: asyncio.Event, force: Callable[[int], None]) -> None:
        self._stop = stop
        self._force = force
        self._installed: list[int] = []

    def install(self) -> None:
        """Handles both signals on the running loop until `remove()`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._installed.append(sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self._stop.is_set():
            log.info("%s: stopping gracefully (send it again to force)", name)
            self._stop.set()
            return
        code = 130 if sig == signal.SIGINT else 1
        log.warning("%s again: forced exit (%d) without finishing the stop", name, code)
        self._force(code)


# --- the server ----------------------------------------------------------------------------


def _default_app(server: Server) -> tornado.web.Application:
    """The service's Tornado application (service/handler.py) on the server's services."""
    from service.cryptor import Cipher, Signer
    from service.files import ContentUrls, FileServing
    from service.handler import make_app

    s = server.settings
    files = FileServing(
        ContentUrls(s.api.token, s.api.content_url_ttl),
        _media_dir(s),
        # A /files reader that takes nothing for as long as an idle connection may last.
        stall_timeout=s.server.idle_timeout,
    )
    return make_app(
        pool=server.pool,
        processor=server.processor,
        joinmap=server.joinmap,
        subscriptions=server.subscriber,
        signer=Signer(s.api.token, s.api.signature_window, nonces=server.nonces),
        cipher=Cipher.create(s.api.cipher, s.api.aes_key),
        metrics=server.registry,
        max_body_bytes=s.server.max_body_bytes,
        body_timeout=s.server.body_timeout,
        unverified_body_bytes=s.server.unverified_body_bytes,
        unverified_bodies=s.server.unverified_bodies,
        lifecycle=server.lifecycle,
        status_allow=s.server.status_allowed,
        extra_handlers=server.extra_handlers,
        publisher=server.publisher,
        error_log=server.error_log,
        files=files,
        fleet=server.fleet,
    )


def _media_dir(settings: Settings) -> Path:
    """The local storage's folder (storage.url empty), which GET /files serves from."""
    return settings.data.dir / "media"


class TeleClientOptions(TypedDict):
    """The keyword arguments of `model.teleclient.TeleClient` that come from telegram.*
    (mypy checks them against TeleClient's signature where they are unpacked)."""

    proxy: Proxy | None
    resolve_per_minute: int
    resolve_per_day: int
    flood_sleep_threshold: int
    request_retries: int
    request_timeout: float
    reconnect_max_delay: float
    device_model: str | None
    app_version: str | None
    system_version: str | None
    lang_code: str
    session_key: bytes | None


def teleclient_options(settings: Settings) -> TeleClientOptions:
    """The telegram.* settings as `model.teleclient.TeleClient` keyword arguments."""
    t = settings.telegram
    return TeleClientOptions(
        proxy=t.proxy,
        resolve_per_minute=t.resolve_per_minute,
        resolve_per_day=t.resolve_per_day,
        flood_sleep_threshold=t.flood_sleep_threshold,
        request_retries=t.request_retries,
        request_timeout=t.timeout,
        reconnect_max_delay=t.reconnect_max_delay,
        device_model=t.device_model,
        app_version=t.app_version,
        system_version=t.system_version,
        lang_code=t.lang_code,
        session_key=bytes.fromhex(t.session_key) if t.session_key else None,
    )


class Server:
    """Builds every service from the settings inside the running loop, serves, stops.

        server = Server(load_settings(path))
        exit_code = await server.serve()      # until SIGTERM/SIGINT

    Services are attributes once `start()` built them (reading one before raises
    AttributeError): `error_log`, `registry` (the Prometheus registry every metric goes to),
    `joinmap`, `nonces` (the Signer's `JournalNonceStore`), `outbox`, `publisher`, `pool`,
    `storage`, `processor`, `subscriber`, then `app`. `lifecycle` is the app's draining
    flag, set at stop (handlers answer 503 SHUTTING_DOWN to new work then); `stopping` is
    true from the first stop signal on.

    Each piece registers its own stop when it is built, so a start that fails half-way
    stops what it had started, and `stop()` closes everything in the reverse order of the
    build: HTTP first (drain), then subscriber, processor, storage, accounts, publisher,
    the SQLite files, the pid file.
    """

    # Built by start(), in this order; each registers its own stop as it is built.
    error_log: ErrorLog  # WARNING+ records of this server's life, for /status
    registry: CollectorRegistry
    joinmap: JoinMap
    nonces: JournalNonceStore  # the signed requests' nonces of the window, journaled
    outbox: Outbox
    publisher: Publisher
    pool: TeleClients
    storage: Storage  # owned by the processor once that is built
    processor: MediaProcessor
    subscriber: Subscriber

    def __init__(self, settings: Settings, *, app_factory: AppFactory = _default_app) -> None:
        from service.basehandler import Lifecycle

        self.settings = settings
        self.app_factory = app_factory
        self.pidfile = PidFile(settings.run_dir / "tgc.pid")
        self.url_file = settings.run_dir / "tgc.url"
        # The exit code, written as the process's last act (record_exit): startup.sh stop
        # reports it rather than taking the lock's release for a graceful stop.
        self.exit_file = settings.run_dir / "tgc.exit"
        self._held_pidfile = False
        self.stopping = False
        self.started_at: float | None = None
        self.port: int | None = None
        self.app: tornado.web.Application | None = None
        self.lifecycle = Lifecycle()  # draining → 503 SHUTTING_DOWN (the default app's)
        self.extra_handlers: list[Route] = []  # more routes for make_app
        self.inflight: InFlight | None = None
        self._http: HTTPServer | None = None
        self._sockets: list[socket.socket] = []  # bound at the start, served at its end
        self.accept_guard: AcceptGuard | None = None  # pauses accepting without descriptors
        self._stack = contextlib.AsyncExitStack()
        self._stop_requested = asyncio.Event()
        self._signals = StopSignals(self._stop_requested, self._force_exit)
        self._reloads: set[asyncio.Task[Reloaded]] = set()
        self.reloaded_file = settings.run_dir / "tgc.reloaded"
        self._stopped = False

    # --- life ---

    @property
    def url(self) -> str:
        """Where the server answers (loopback when it listens on every address)."""
        if self.port is None:
            raise RuntimeError("the server is not listening yet")
        return local_url(self.settings.server.host, self.port)

    async def serve(self, ready: Callable[[Server], Awaitable[None]] | None = None) -> int:
        """Starts, calls `ready(self)` if given, serves until SIGTERM/SIGINT (or
        `request_stop()`), stops gracefully. Returns the exit code (0)."""
        self._signals.install()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
            if ready is not None and not self._stop_requested.is_set():
                await ready(self)
            await self._stop_requested.wait()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await self.stop()
            self._signals.remove()
        return 0

    def request_stop(self) -> None:
        """Begins the graceful stop, as a first SIGTERM would."""
        self._stop_requested.set()

    def record_exit(self, code: int) -> None:
        """Writes `PID CODE` to data.dir/run/tgc.exit, for startup.sh stop: only by a server
        that held the pid file (one refused for a running server's data.dir writes nothing
        there). Called last, after the stop; the forced exit calls it before os._exit."""
        if not self._held_pidfile:
            return
        try:
            partial = self.exit_file.with_suffix(".exit-tmp")
            partial.write_text(f"{os.getpid()} {code}\n")
            partial.replace(self.exit_file)
        except OSError as e:
            log.warning("can't write the exit code to %s: %s", self.exit_file, e)
        log.info("exit code %d", code)

    async def start(self) -> None:
        s = self.settings
        t0 = time.monotonic()
        self.pidfile.acquire(s.source)
        self._held_pidfile = True
        self._stack.callback(self.pidfile.release)
        with contextlib.suppress(FileNotFoundError):
            self.exit_file.unlink()  # the previous server's
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()  # a killed server's: startup.sh waits for a fresh one
        make_private_dir(s.data.dir, "data.dir", s.source)
        self._bind()  # a bad host or a busy port stops the start before any account connects
        log.info("starting: config %s, data %s, pid %d", s.source, s.data.dir, os.getpid())

        self._watch_errors()
        self._build_registry()
        self._build_joinmap()
        await self._start_nonces()
        self._build_publisher()
        await self._start_publisher()
        await self._start_pool()
        await self._start_processor()
        await self._start_subscriber()
        self._build_fleet()
        self._listen()

        self.started_at = time.time()
        # Written whole, then renamed: whoever sees the file (startup.sh) reads a complete URL.
        partial = self.url_file.with_suffix(".tmp")
        partial.write_text(self.url + "\n")
        partial.replace(self.url_file)
        self._stack.callback(self._remove_url_file)
        log.info(
            "serving on %s with %d accounts (%.1f s to start)",
            self.url,
            len(self.pool),
            time.monotonic() - t0,
        )

    async def stop(self) -> None:
        """The graceful stop: idempotent, and safe after a start that failed half-way."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping = True
        self._stop_requested.set()
        t0 = time.monotonic()
        await self._stack.aclose()
        log.info("stopped in %.1f s", time.monotonic() - t0)

    def _force_exit(self, code: int) -> None:
        self.record_exit(code)
        logging.shutdown()
        os._exit(code)

    # --- the pieces, in build order; each registers its own stop ---

    def _watch_errors(self) -> None:
        from service.status import ErrorLog

        # The status page's "recent errors": every WARNING+ record of this server's life.
        self.error_log = ErrorLog()
        root = logging.getLogger()
        root.addHandler(self.error_log)
        self._stack.callback(root.removeHandler, self.error_log)

    def _build_registry(self) -> None:
        from prometheus_client import CollectorRegistry

        # One registry per server, not the process-global one: tests build several servers.
        self.registry = CollectorRegistry()

    def _build_joinmap(self) -> None:
        from model.joinmap import JoinMap

        self.joinmap = JoinMap(self.settings.data.dir / "joinmap.sqlite3")
        self._stack.callback(self.joinmap.close)

    async def _start_nonces(self) -> None:
        from service.noncestore import JournalNonceStore

        # Replays stay refused across a restart or a SIGKILL (issue 11): the Signer records
        # every accepted nonce here (written to data.dir/nonces/) before its request runs.
        self.nonces = JournalNonceStore(
            self.settings.data.dir / "nonces", window=self.settings.api.signature_window
        )
        self._stack.push_async_callback(self.nonces.stop)  # after the HTTP drain
        await self.nonces.start()

    def _build_publisher(self) -> None:
        from service.outbox import Outbox
        from service.publisher import Publisher

        r = self.settings.rabbitmq
        self.outbox = Outbox(self.settings.data.dir / "outbox.sqlite3", r.outbox_max_events)
        self._stack.callback(self.outbox.close)
        self.publisher = Publisher(
            self.outbox,
            r.url,
            r.exchange,
            r.queue,
            max_in_flight=r.max_in_flight,
            reconnect_max_delay=r.reconnect_max_delay,
            registry=self.registry,
        )

    async def _start_publisher(self) -> None:
        await self.publisher.start()
        self._stack.push_async_callback(self.publisher.stop)

    async def _start_pool(self) -> None:
        from model.budgetstore import ResolveBudgetStore
        from model.pool import TeleClients

        t = self.settings.telegram
        make_private_dir(t.sessions_dir, "telegram.sessions_dir", self.settings.source)
        # What each account spent of its resolutions survives a restart (never fails: an
        # unreadable file is logged and the accounts start with their budget spent).
        budgets = ResolveBudgetStore(self.settings.data.dir / "resolve_budget.sqlite3")
        self._budgets = budgets  # the accounts a reload adds spend from it too
        self._stack.callback(budgets.close)  # after pool.stop (registered below)
        self.pool = TeleClients.from_sessions_dir(
            t.sessions_dir,
            t.api_id,
            t.api_hash,
            resolve_store=budgets,
            **teleclient_options(self.settings),
        )
        # Memberships recorded before account labels name accounts by their session stems.
        for stem, label in self.pool.relabeled().items():
            self.joinmap.rename_account(stem, label)
        if not len(self.pool):
            log.warning(
                "no session files in %s: /healthz answers 503 until an account is added "
                "(python start.py login --phone +NUMBER, then restart)",
                t.sessions_dir,
            )
        # Registered before start: a start that fails on one locked session stops the rest.
        self._stack.push_async_callback(self.pool.stop)
        await self.pool.start()

    async def _start_processor(self) -> None:
        from service.mediaprocessor import MediaProcessor
        from service.mediasource import rebind_through
        from service.storage import HttpStorage, LocalStorage

        m, st, d = self.settings.media, self.settings.storage, self.settings.data.dir
        if st.url:
            self.storage = HttpStorage(st.url, st.timeout, max_clients=m.upload_workers)
        else:
            self.storage = LocalStorage(_media_dir(self.settings))
        try:
            self.processor = MediaProcessor(
                d / "media.sqlite3",
                d / "spool",
                self.storage,
                self.pool,
                download_workers=m.download_workers,
                upload_workers=m.upload_workers,
                per_account=m.per_account_downloads,
                parts_in_flight=m.parts_in_flight,
                part_size=m.part_size,
                spool_max_bytes=m.spool_max_bytes,
                max_file_bytes=m.max_file_bytes,
                # false: answers and events describe files, nothing is queued (state null).
                auto_download=m.auto_download,
                on_stored=self._publish_media_stored,
                # A banned account's files continue with another account that sees them.
                rebind=rebind_through(self.pool),
                retry_max=st.retry_max_delay,
            )
        except BaseException:
            await self.storage.close()
            raise
        # The processor owns the storage from here on: its stop() closes it.
        self._stack.push_async_callback(self.processor.stop)
        await self.processor.start()

    async def _publish_media_stored(self, record: dict[str, Any]) -> None:
        from service.events import media_stored_event

        await self.publisher.publish_event(media_stored_event(record))

    async def _start_subscriber(self) -> None:
        from service.metrics import SubscriberCollector
        from service.subscriber import Subscriber

        self.subscriber = Subscriber(
            self.pool,
            self.joinmap,
            self.publisher,
            poll_interval=self.settings.subscriptions.poll_interval,
            channel_limit=self.settings.telegram.join_limit,
            # Always the processor: with media.auto_download=false it queues nothing and the
            # events' descriptors say so (state null), rather than a "pending" that never moves.
            media_queue=self.processor,
        )
        # Like the publisher's: its plain counters, read from the registry at scrape time.
        self.registry.register(SubscriberCollector(self.subscriber, self.joinmap))
        self._stack.push_async_callback(self.subscriber.stop)
        await self.subscriber.start()

    def _build_fleet(self) -> None:
        from service.fleet import Fleet
        from service.metrics import FleetCollector

        t = self.settings.telegram
        self.fleet = Fleet(
            self.pool,
            t.sessions_dir,
            self._make_account,
            default_proxy=t.proxy,
            flow=self.subscriber,
            drain_timeout=self.settings.server.shutdown_timeout,
        )
        self.registry.register(FleetCollector(self.fleet))
        # Before the subscriber and the pool stop (the stack runs backwards): a reload under
        # way is cancelled first.
        self._stack.push_async_callback(self._cancel_reloads)

    def _make_account(self, path: Path, sidecar: AccountSettings) -> TeleClient:
        """An account as the start builds them (its sidecar's proxy and label): a reload's."""
        from model.pool import account_from

        t = self.settings.telegram
        return account_from(
            path, sidecar, t.api_id, t.api_hash, resolve_store=self._budgets,
            **teleclient_options(self.settings),
        )  # fmt: skip

    def request_reload(self) -> None:
        """SIGHUP (`./startup.sh reload`): rereads sessions/ and the sidecars in a task."""
        if not hasattr(self, "fleet") or self.stopping:
            log.warning("reload asked before the start finished or during the stop: ignored")
            return
        log.info("reload asked: rereading %s", self.settings.telegram.sessions_dir)
        task = asyncio.create_task(self.reload(), name="tgc-reload")
        self._reloads.add(task)
        task.add_done_callback(_reload_done)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> Reloaded:
        """One reload (service/fleet.py); what it did is also written to
        data.dir/run/tgc.reloaded (`PID N summary`, N counting reloads), for startup.sh."""
        try:
            done = await self.fleet.reload()
        except Exception:
            log.exception("reload failed")  # the pool is as the reload left it
            raise
        partial = self.reloaded_file.with_suffix(".tmp")
        partial.write_text(f"{os.getpid()} {self.fleet.reloads} {done}\n")
        partial.replace(self.reloaded_file)
        return done

    async def _cancel_reloads(self) -> None:
        for task in list(self._reloads):
            task.cancel()
        await asyncio.gather(*self._reloads, return_exceptions=True)

    def _bind(self) -> None:
        from service.listener import AcceptGuard, bind

        s = self.settings
        self.accept_guard = AcceptGuard()
        # Guarded: out of descriptors, accepting pauses instead of spinning (service/listener.py).
        self._sockets = [
            self.accept_guard.guard(sock) for sock in bind(s.server.host, s.server.port, s.source)
        ]
        self._stack.callback(_close_all, self._sockets)  # until the HTTP server owns them

    def _listen(self) -> None:
        from service.handler import make_server

        s = self.settings.server
        self.app = self.app_factory(self)
        self.inflight = InFlight(self.app)
        # make_server sets Tornado's own limits the way the handlers expect them; it is given
        # the counting wrapper, which Tornado takes like the Application it wraps.
        self._http = make_server(
            self.inflight,
            s.max_body_bytes,
            body_timeout=s.body_timeout,
            idle_timeout=s.idle_timeout,
        )
        self.port = self._sockets[0].getsockname()[1]
        self._http.add_sockets(self._sockets)
        self._stack.push_async_callback(self._drain_http)

    async def _drain_http(self) -> None:
        assert self._http is not None and self.inflight is not None
        self.lifecycle.draining = True  # new /api/v1 requests: 503 SHUTTING_DOWN
        self._http.stop()  # no new connections
        timeout = self.settings.server.shutdown_timeout
        if self.inflight.active:
            log.info("waiting up to %.0f s for %d requests", timeout, self.inflight.active)
        if not await self.inflight.wait_idle(timeout):
            log.warning("%d requests still running after %.0f s: cut", self.inflight.active, timeout)
        if self.inflight.receiving:
            # Not waited for (see InFlight): closed with every idle connection.
            log.info("closing %d requests still sending their body", self.inflight.receiving)
        await self._http.close_all_connections()

    def _remove_url_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()  # a no-op for one the HTTP server closed already


# --- commands ------------------------------------------------------------------------------


def start_logging(settings: Settings, *, console: bool = False) -> None:
    """`setup_logging`, with a log.dir that can't be written reported like any bad value:
    the key and the file, exit code 2 (not a traceback from a half-set-up logging)."""
    try:
        setup_logging(settings.log, console=console)
    except OSError as e:
        reason = f"can't write the log file there: {e.strerror or e}"
        raise ConfigError("log.dir", str(settings.source), reason) from None


def prepare_process(settings: Settings) -> None:
    """For a serving process, once logging is up: the descriptor limit raised (logged), and
    a warning naming what other users can read of the sessions, data and logs (the umask
    keeps new files private; existing ones keep the mode ops gave them)."""
    from service.listener import raise_descriptor_limit

    raise_descriptor_limit()
    folders = (settings.telegram.sessions_dir, settings.data.dir, settings.log.dir)
    found = open_to_others(folders)
    if found:
        opened = " ".join(shlex.quote(str(path)) for path, _ in found if path in folders)
        log.warning(
            "readable by other users of this machine (session files hold the accounts' auth "
            "keys): %s; new files are private, these keep their mode: chmod -R go-rwx %s",
            describe(found),
            opened,
        )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, require=SERVE_REQUIRED)
    with private_files():  # sessions, SQLite files, logs: 0600 in 0700 folders
        start_logging(settings, console=not args.no_console)
        prepare_process(settings)
        server = Server(settings)
        code = 1  # an exception out of serve(): main() exits 1
        try:
            code = run_loop(server.serve())
        except ConfigError as e:  # a held session, a bad sidecar...: main() exits 2
            code = 2
            log.error("config error: %s", e)
            raise
        except KeyboardInterrupt:
            code = 130
            raise
        finally:
            server.record_exit(code)
        return code


def cmd_paths(args: argparse.Namespace) -> int:
    """Shell assignments for startup.sh (validates the whole config on the way; the
    secrets and the accounts' sidecars too unless --no-secrets: stop and status run where
    they may not be set, and must stop a server whose sidecar was broken since)."""
    s = load_settings(args.config, require=() if args.no_secrets else SERVE_REQUIRED)
    if not args.no_secrets:  # startup.sh start: the accounts' sidecars too, before launching
        from common.sidecar import read_sidecars

        read_sidecars(sorted(s.telegram.sessions_dir.glob("*.session")))
    values = {
        "PID_FILE": s.run_dir / "tgc.pid",
        "URL_FILE": s.run_dir / "tgc.url",
        "EXIT_FILE": s.run_dir / "tgc.exit",
        "RELOADED_FILE": s.run_dir / "tgc.reloaded",
        "LOG_FILE": s.log.file,
        "OUT_FILE": s.log.dir / "tgc.out",
        # The server's own bound on in-flight requests, plus time to persist and disconnect.
        "STOP_TIMEOUT": int(s.server.shutdown_timeout) + 30,
    }
    for name, value in values.items():
        print(f"{name}={shlex.quote(str(value))}")
    return 0


_PHONE = re.compile(r"^\+?[0-9]{5,15}$")


def phone_digits(phone: str) -> str:
    """'+1 555 123 4567' → '15551234567' (the session file's name); UsageError otherwise."""
    compact = re.sub(r"[\s-]", "", phone)
    if not _PHONE.match(compact):
        raise UsageError(f"--phone must be an international number like +15551234567, not {phone!r}")
    return compact.lstrip("+")


async def login(
    settings: Settings,
    phone: str,
    *,
    ask: Callable[[str], str] | None = None,
    ask_secret: Callable[[str], str] | None = None,
    say: Callable[[str], None] = print,
    dc: tuple[int, str, int] | None = None,
    attempts: int = 3,
) -> Path | None:
    """Logs an account in and writes `sessions_dir/DIGITS.session`: the code Telegram sends,
    then the 2FA password when Telegram asks. Returns the session path, or None when the
    login failed (the half-made session file is removed then).

    `dc` = (dc_id, host, port) points a new session at another data centre than Telethon's
    default (the emulator, in tests). The Telegram side is model.login's; here are the
    prompts.
    """
    from common.errors import TelegramError
    from common.sidecar import read_sidecar
    from model.login import login_session
    from model.session import SessionSeal

    digits = phone_digits(phone)
    ask = ask or _ask
    ask_secret = ask_secret or _ask_secret
    sessions_dir = settings.telegram.sessions_dir
    make_private_dir(sessions_dir, "telegram.sessions_dir", settings.source)
    path = sessions_dir / f"{digits}.session"
    # A sidecar written before the login (sessions/DIGITS.properties) gives the account's
    # own proxy: Telegram sees the account from that address from its first connection.
    options = _client_options(settings, read_sidecar(path).proxy_or(settings.telegram.proxy))
    seal = SessionSeal.from_hex(settings.telegram.session_key)
    async with login_session(path, options, dc=dc, seal=seal) as session:
        if await session.authorized():
            say(f"{path} is already logged in")
            return path
        try:
            await session.send_code("+" + digits)
        except TelegramError as e:
            raise LoginFailed(f"Telegram sends no code to +{digits}: {e.message}") from None
        if not await _enter_code(session, ask, ask_secret, say, attempts):
            return None
        me = await session.me()
        say(f"logged in as {me.display_name} (id {me.user_id}); session saved to {path}")
        return path


async def _enter_code(
    session: Login,
    ask: Callable[[str], str],
    ask_secret: Callable[[str], str],
    say: Callable[[str], None],
    attempts: int,
) -> bool:
    from model.login import SignIn

    for _ in range(attempts):
        answer = await session.sign_in(ask("Code Telegram sent: ").strip())
        if answer is SignIn.DONE:
            return True
        if answer is SignIn.PASSWORD_NEEDED:
            return await _enter_password(session, ask_secret, say, attempts)
        if answer is SignIn.CODE_EXPIRED:
            say("the code expired: run login again")
            return False
        say("wrong code")
    say(f"{attempts} wrong codes: giving up")
    return False


async def _enter_password(
    session: Login, ask_secret: Callable[[str], str], say: Callable[[str], None], attempts: int
) -> bool:
    for _ in range(attempts):
        if await session.check_password(ask_secret("2FA password: ")):
            return True
        say("wrong password")
    say(f"{attempts} wrong passwords: giving up")
    return False


def _ask(prompt: str) -> str:
    print(prompt, end="", flush=True)
    line = sys.stdin.readline()
    if not line:
        raise UsageError("no input (stdin closed)")
    return line.rstrip("\n")


def _ask_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return _ask(prompt)  # piped in (scripts, tests): nothing to hide from


def _client_options(settings: Settings, proxy: Proxy | None) -> ClientOptions:
    """The telegram.* settings a Telethon client is built with (model.clientfactory), with
    the account's proxy."""
    from model.clientfactory import ClientOptions

    t = settings.telegram
    return ClientOptions(
        t.api_id,
        t.api_hash,
        proxy=proxy,
        device_model=t.device_model,
        app_version=t.app_version,
        system_version=t.system_version,
        lang_code=t.lang_code,
    )


def cmd_login(args: argparse.Namespace) -> int:
    phone_digits(args.phone)  # a usage error before anything else
    dc = login_dc(args.dc, args.dc_rsa_key)
    settings = load_settings(args.config, require=TELEGRAM_REQUIRED)
    with private_files():  # the session file holds the account's auth key
        start_logging(settings)
        path = asyncio.run(login(settings, args.phone, dc=dc))
    return 0 if path is not None else 1


def login_dc(address: str | None, rsa_key: Path | None) -> tuple[int, str, int] | None:
    """`login --dc HOST:PORT [--dc-rsa-key PEM]` → login()'s `dc` (as DC 1).

    For the loopback Telegram emulator (tests, the demo): Telethon only runs the DH handshake
    with a server whose RSA key it knows, so the emulator's public key (PKCS#1 PEM) joins
    Telethon's list for this process. Real logins need neither option.
    """
    if address is None:
        if rsa_key is not None:
            raise UsageError("--dc-rsa-key goes with --dc")
        return None
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--dc must be HOST:PORT (e.g. 127.0.0.1:4430), not {address!r}")
    if rsa_key is not None:
        from telethon.crypto import rsa

        try:
            rsa.add_key(rsa_key.read_bytes(), old=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"--dc-rsa-key {rsa_key}: not a readable PKCS#1 public key ({e})") from None
    return 1, host, int(port)


async def list_accounts(settings: Settings) -> list[dict[str, Any]]:
    """Every session file with its state. A session the running server holds is not
    touched (two connections on one auth key get it revoked): it shows as `in use`.
    `name` is the account's label as the server shows it, `session` the file's stem."""
    from common.sidecar import read_sidecars
    from model.account import account_labels
    from model.pool import account_from

    t = settings.telegram
    rows: list[dict[str, Any]] = []
    paths = sorted(t.sessions_dir.glob("*.session"))
    labels = account_labels(p.stem for p in paths)
    for path, own in read_sidecars(paths).items():
        ours = {"name": labels[path.stem], "session": path.stem}
        if not own.enabled:
            rows.append({**ours, "label": own.label, "state": "disabled by its sidecar"})
            continue
        client = account_from(
            path, own, t.api_id, t.api_hash, **teleclient_options(settings), receive_updates=False
        )
        try:
            await client.start()
        except ConfigError:
            rows.append({**ours, "state": "in use by a running server"})
            continue
        try:
            rows.append({**client.describe(), **ours})
        finally:
            await client.stop()
    return rows


def cmd_accounts(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, require=TELEGRAM_REQUIRED)
    with private_files():  # the log, and the journals SQLite writes beside the sessions
        start_logging(settings)
        rows = asyncio.run(list_accounts(settings))
    if not rows:
        print(f"no session files in {settings.telegram.sessions_dir}; add one with "
              "python start.py login --phone +NUMBER")
        return 0
    # The session files' names are shown here (this terminal is local), beside the label
    # the server's answers and events use.
    print(f"{'session':<24} {'name':<20} {'state':<28} {'phone':<16} {'user id':<12} label")
    for row in rows:
        print(
            f"{row['session']:<24} {row['name']:<20} {row['state']:<28} "
            f"{row.get('phone') or '-':<16} {row.get('user_id') or '-'!s:<12} "
            f"{row.get('label') or '-'}"
        )
    if any("user_id" not in row for row in rows):
        print("(the running server's view: python start.py call GET /api/v1/accounts)")
    return 0


def convert_sessions(settings: Settings, to: str, say: Callable[[str], None] = print) -> int:
    """`sessions seal|unseal`: every session file's auth key sealed with (or opened from)
    telegram.session_key, one file at a time, each atomically (model.session.convert_session).
    A file a running server holds is refused (ConfigError naming it): stop the server first.
    Returns how many files changed."""
    from model.session import SessionLock, SessionSeal, convert_session

    t = settings.telegram
    seal = SessionSeal.from_hex(t.session_key)
    if seal is None:
        raise ConfigError(
            "telegram.session_key", str(settings.source),
            f"{to} needs the key (TGC_TELEGRAM_SESSION_KEY: 64 hex characters)",
        )
    changed = 0
    for path in sorted(t.sessions_dir.glob("*.session")):
        lock = SessionLock(path)
        lock.acquire()  # ConfigError while a server (or a login) has the file
        try:
            done = convert_session(path, seal, "seal" if to == "seal" else "unseal")
        finally:
            lock.release()
        changed += done
        say(f"{path}: {to}ed" if done else f"{path}: already {to}ed")
    return changed


def cmd_sessions(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, require=())
    with private_files():  # the converted copies hold auth keys
        convert_sessions(settings, args.action)
    return 0


async def call(
    settings: Settings,
    method: str,
    uri: str,
    body: dict[str, Any] | None = None,
    base_url: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """The reference client: signs, sends, decrypts. Returns (exit code, what to print).

    Paths outside /api/ (/healthz, /metrics) are neither signed nor encrypted: they are
    fetched as they are and their body shown as is."""
    from service.apiclient import ApiClient, ApiError

    url = base_url or _server_url(settings)
    if not uri.startswith("/api/"):
        return await _plain(method, url + uri)
    async with ApiClient(url, settings.api.token, settings.api.aes_key, settings.api.cipher) as api:
        try:
            answer = await api.request(method, uri, body)
        except OSError as e:
            return 1, {"error": f"can't reach the server at {url}: {e}"}
        except ApiError as e:
            return 1, {"error": str(e)}
    shown: dict[str, Any] = {"status": answer.status, "ok": answer.ok}
    if answer.ok:
        shown["data"] = answer.data
    else:
        shown["error"] = answer.error
    return (0 if answer.ok else 1), shown


async def _plain(method: str, url: str) -> tuple[int, dict[str, Any]]:
    from tornado.httpclient import AsyncHTTPClient

    http = AsyncHTTPClient(force_instance=True)
    try:
        response = await http.fetch(url, method=method, raise_error=False)
    except OSError as e:
        return 1, {"error": f"can't reach the server at {url}: {e}"}
    finally:
        http.close()
    if response.code == 599:
        return 1, {"error": f"can't reach the server at {url}: {response.error}"}
    text = (response.body or b"").decode("utf-8", errors="replace")
    try:
        shown_body: Any = json.loads(text)
    except json.JSONDecodeError:
        shown_body = text
    return (0 if response.code < 400 else 1), {"status": response.code, "body": shown_body}


def _server_url(settings: Settings) -> str:
    """The running server's own URL file (right even with server.port=0), else the config's."""
    with contextlib.suppress(OSError):
        written = (settings.run_dir / "tgc.url").read_text().strip()
        if written:
            return written
    return local_url(settings.server.host, settings.server.port)


def local_url(host: str, port: int) -> str:
    """The URL of a server listening on host:port as seen from this machine: a wildcard
    address (every interface) is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def cmd_call(args: argparse.Namespace) -> int:
    method = args.method.upper()
    if method not in ("GET", "POST", "DELETE"):  # the only methods the API serves
        raise UsageError(f"METHOD must be GET, POST or DELETE, not {args.method!r}")
    if not args.uri.startswith("/"):
        raise UsageError(f"URI must start with / (e.g. '/api/v1/peer?peer=@durov'), not {args.uri!r}")
    body = None
    if args.body is not None:
        try:
            body = json.loads(args.body)
        except json.JSONDecodeError as e:
            raise UsageError(f"--body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise UsageError("--body must be a JSON object, e.g. '{\"peer\": \"@durov\"}'")
    settings = load_settings(args.config, require=CLIENT_REQUIRED)
    code, shown = asyncio.run(call(settings, method, args.uri, body, args.url))
    try:
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode(), flush=True)
    except BrokenPipeError:
        _drop_stdout()  # the reader went away (`| head`): the call's own outcome still counts
    return code


# --- demo ----------------------------------------------------------------------------------

# The requests the demo suggests after its first answer, one per line under DEMO_MORE, each
# `METHOD URI` as `start.py call` takes them (shell-quoted). Every one answers 200 against the
# demo world: tests/test_start_demo.py runs each line the demo prints.
DEMO_MORE = "more requests, each sent the same way (call --config ... METHOD URI):"
DEMO_REQUESTS: tuple[str, ...] = (
    "GET '/api/v1/messages?peer=@tgc_news&limit=5'",
    "GET /api/v1/accounts",
    # contacts.search wants 4 characters at least (QUERY_TOO_SHORT, like Telegram's).
    "GET '/api/v1/search?q=news'",
    # A basic group by its marked id alone: no username, no access hash.
    "GET '/api/v1/messages?peer=-2201&limit=5'",
    # A date range of the news channel, a search in it.
    "GET '/api/v1/messages?peer=@tgc_news&since=2023-11-14T23:00:00Z&until=2023-11-15'",
    "GET '/api/v1/messages/search?peer=@tgc_news&q=bold&limit=5'",
    # A channel post's comments (held in its discussion group).
    "GET '/api/v1/replies?peer=@open_talk&msg_id=2&limit=5'",
)


async def demo(*, once: bool = False, say: Callable[[str], None] = print) -> int:
    """The server against the in-process Telegram emulator and its demo world.

    Imports from tests/ on purpose, and only here: the emulator is test code that the demo
    borrows so that a newcomer sees real answers without a Telegram account.
    """
    # Product code reaching into tests/: the one place, by design. The demo runs the real
    # server against the emulator (tests/fakedc), which is test code and stays there. The
    # imports are local to this function so that `serve` and every other command never
    # load tests/ (tests/test_start.py checks that `serve` doesn't).
    from tests.fakedc import demo_world as dw
    from tests.fakedc.cluster import FakeTelegram
    from tests.fakedc.rpc import TelegramRpc

    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="tgc-demo-"))
    rpc = TelegramRpc(dw.demo_world())
    tg = FakeTelegram(rpc, dc_ids=(1, 2))
    rpc.set_pusher(tg.pusher)
    await tg.start()
    try:
        for user_id in (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C):
            phone = rpc.world.users[user_id].phone
            tg.make_session(root / "sessions" / str(phone or user_id), user_id)
        config = _write_demo_config(root)
        settings = load_settings(config, env={}, require=SERVE_REQUIRED)
        start_logging(settings)
        prepare_process(settings)
        server = Server(settings)

        async def ready(server: Server) -> None:
            await _demo_first_answer(server, config, t0, say)
            if once:
                server.request_stop()

        return await server.serve(ready)
    finally:
        await tg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _write_demo_config(root: Path) -> Path:
    with socket.socket() as probe:  # a free port, so that the printed command is complete
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = root / "config.properties"
    config.write_text(
        "# written by `python start.py demo`; deleted when the demo stops\n"
        f"server.port={port}\n"
        f"api.token={secrets.token_urlsafe(32)}\n"
        f"api.aes_key={secrets.token_hex(32)}\n"
        "telegram.api_id=12345\n"
        f"telegram.api_hash={secrets.token_hex(16)}\n"
        "telegram.sessions_dir=sessions\n"
        "data.dir=data\n"
        "log.dir=logs\n"
    )
    return config


async def _demo_first_answer(
    server: Server, config: Path, t0: float, say: Callable[[str], None]
) -> None:
    """Sends the first signed request and prints it with its answer. The time to first
    answer runs from the demo's start (`t0`, monotonic) until the decrypted answer is in
    hand: the emulator, the accounts, the server, and this round trip."""
    uri = "/api/v1/peer?peer=@tgc_news"
    code, shown = await call(server.settings, "GET", uri)
    elapsed = time.monotonic() - t0
    log.info("demo: the first answer in hand %.2f s after the demo started", elapsed)
    say(f"tgc demo: serving on {server.url} against the loopback Telegram emulator")
    say(f"  config {config}  (generated token and key)")
    say(f"  log    {server.settings.log.file}")
    say("")
    say("a signed request, ready to run from another shell:")
    say(f"  {_self_command()} call --config {shlex.quote(str(config))} GET '{uri}'")
    say("")
    say(f"its decrypted answer, in hand {elapsed:.2f} s after the demo started:")
    say(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    say("")
    say(DEMO_MORE)
    for request in (*DEMO_REQUESTS, *await _demo_media_requests(server.settings)):
        say(f"  {request}")
    say("")
    if code != 0:
        log.warning("the demo's first request failed: %s", shown)


async def _demo_media_requests(settings: Settings) -> list[str]:
    """A photo of the demo world as a media item: its state (with `content_url` once
    stored) and a POST that queues it now (or answers its state when it is queued or
    stored already); none when the world's photo post can't be read."""
    uri = "/api/v1/messages?peer=@tgc_media&ids=2"
    code, shown = await call(settings, "GET", uri)
    messages = (shown.get("data") or {}).get("messages") or [None] if code == 0 else [None]
    media = (messages[0] or {}).get("media") or {}
    key = media.get("key")
    if not isinstance(key, str):
        log.warning("the demo's photo post gave no media key: %s", shown)
        return []
    return [f"GET '{uri}'", f"GET /api/v1/media/{key}", f"POST /api/v1/media/{key}"]


def _self_command() -> str:
    """How to run this start.py again from the current directory, shortest form first."""
    here = Path(__file__).resolve()
    python = Path(sys.executable)
    script = here.name if Path.cwd() == here.parent else str(here)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())  # .venv/bin/python
    return f"{shlex.quote(str(python))} {shlex.quote(script)}"


def cmd_demo(args: argparse.Namespace) -> int:
    with private_files():
        return run_loop(demo(once=args.once))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Runs the server's `main` on uvloop (libuv): the subscription flow is many small
    callbacks a second, and uvloop runs them with less CPU than asyncio's own loop
    (bench/events.py --latency 1000: 684-762 µs an event against 784-817, push → confirm p99
    58-110 ms against 108-224; issue 14). Telethon, Tornado, aiormq and pycurl all run on
    any asyncio loop."""
    return uvloop.run(main)


# --- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="settings file (default: config.properties next to start.py)",
    )
    parser = argparse.ArgumentParser(
        prog="start.py",
        description="tgc: Telegram collection service",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the server (the default)")
    serve.add_argument("--no-console", action="store_true", help="log to the file only")
    serve.set_defaults(func=cmd_serve)

    login_p = sub.add_parser("login", parents=[common], help="log an account in: sessions/NUMBER.session")
    login_p.add_argument("--phone", required=True, help="international number, e.g. +15551234567")
    login_p.add_argument(
        "--dc", metavar="HOST:PORT", help="log in through this DC instead of Telegram's (the emulator)"
    )
    login_p.add_argument(
        "--dc-rsa-key", metavar="PEM", type=Path, help="that DC's public RSA key (PKCS#1 PEM)"
    )
    login_p.set_defaults(func=cmd_login)

    accounts = sub.add_parser("accounts", parents=[common], help="list session files and their state")
    accounts.set_defaults(func=cmd_accounts)

    sessions_p = sub.add_parser(
        "sessions", parents=[common], help="seal or unseal the session files' auth keys"
    )
    sessions_p.add_argument(
        "action", choices=("seal", "unseal"), help="with telegram.session_key (server stopped)"
    )
    sessions_p.set_defaults(func=cmd_sessions)

    call_p = sub.add_parser("call", parents=[common], help="send a signed request, print the answer")
    call_p.add_argument("method", metavar="METHOD", help="GET, POST or DELETE")
    call_p.add_argument("uri", metavar="URI", help="path and query, e.g. '/api/v1/peer?peer=@durov'")
    call_p.add_argument("--body", metavar="JSON", help="JSON object body (POST)")
    call_p.add_argument("--url", metavar="URL", help="server base URL (default: the running one's)")
    call_p.set_defaults(func=cmd_call)

    demo_p = sub.add_parser("demo", help="the server against the loopback Telegram emulator")
    demo_p.add_argument("--once", action="store_true", help="print the first answer and stop")
    demo_p.set_defaults(func=cmd_demo)

    paths = sub.add_parser("paths", parents=[common], help="(for startup.sh) pid, url, log files")
    paths.add_argument(
        "--no-secrets", action="store_true", help="don't require the secrets (stop, status)"
    )
    paths.set_defaults(func=cmd_paths)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with argparse's message on a bad command line
    if args.command is None:
        args.func, args.no_console = cmd_serve, False
    args.config = getattr(args, "config", None)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        # The reader went away (`start.py accounts | head`): it read all it wanted.
        _drop_stdout()
        return 0
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"start.py: error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"start.py: config error: {e}", file=sys.stderr)
        return 2
    except LoginFailed as e:
        print(f"start.py: login failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # The traceback goes to the log file when logging is up; the terminal gets one line.
        # (Without handlers, logging's last resort would print the traceback on stderr.)
        if logging.getLogger().handlers:
            log.exception("start.py %s failed", args.command or "serve")
        print(f"start.py: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1


def _drop_stdout() -> None:
    """Points stdout at /dev/null, so that the interpreter's flush at exit, finding the pipe
    closed, doesn't print a BrokenPipeError of its own (Python's docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
