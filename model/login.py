"""Logging an account in: the Telegram side of `start.py login`.

`login_session(path, options)` opens the session file a login writes (locked, like a running
account's, so a login can't race the server on it), builds its Telethon client with the same
`ClientFactory` the accounts use, and connects. Inside, `Login` asks Telegram for the code,
signs in with it, and checks the 2FA password when Telegram asks for one; the prompts are
the caller's. A login that did not succeed leaves no session file behind (one that existed
before is kept as it was).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from telethon import errors

from common.errors import TelegramError
from model.clientfactory import ClientFactory, ClientOptions, build_client
from model.session import EntitySession, SessionLock, SessionSeal
from model.tgerrors import rpc_error_name

# A login is interactive: sleeping through a short flood wait (Telethon's own default
# threshold and retries) beats failing it, unlike a running account's calls.
LOGIN_FLOOD_SLEEP = 60
LOGIN_RETRIES = 5


# What SQLite keeps beside a session file while it is open (model/session.py: WAL).
_BESIDE = ("-journal", "-wal", "-shm")


class SignIn(StrEnum):
    """What Telegram answered a code."""

    DONE = "done"
    WRONG_CODE = "wrong_code"
    CODE_EXPIRED = "code_expired"
    PASSWORD_NEEDED = "password_needed"  # 2FA: `Login.check_password` next


@dataclass(frozen=True)
class Me:
    """Who the session logged in as."""

    user_id: int
    display_name: str  # first and last name, or the id when there is neither


class Login:
    """The steps of one login on a connected client (see `login_session`)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._phone = ""
        self._code_hash = ""
        self.succeeded = False  # the session is logged in: keep its file

    async def authorized(self) -> bool:
        """Whether the session file is logged in already."""
        self.succeeded = bool(await self._client.is_user_authorized())
        return self.succeeded

    async def send_code(self, phone: str) -> None:
        """Asks Telegram to send a login code to `phone` (+ and digits); TelegramError
        (with Telegram's own wording) when it sends none: an unknown or banned number."""
        try:
            sent = await self._client.send_code_request(phone)
        except errors.RPCError as e:
            raise TelegramError(rpc_error_name(e), str(e)) from None
        self._phone, self._code_hash = phone, sent.phone_code_hash

    async def sign_in(self, code: str) -> SignIn:
        """Signs in with the code Telegram sent (after `send_code`)."""
        try:
            await self._client.sign_in(self._phone, code, phone_code_hash=self._code_hash)
        except errors.PhoneCodeInvalidError:
            return SignIn.WRONG_CODE
        except errors.PhoneCodeExpiredError:
            return SignIn.CODE_EXPIRED
        except errors.SessionPasswordNeededError:
            return SignIn.PASSWORD_NEEDED
        self.succeeded = True
        return SignIn.DONE

    async def check_password(self, password: str) -> bool:
        """The 2FA password, after SignIn.PASSWORD_NEEDED; False when it is wrong."""
        try:
            await self._client.sign_in(password=password)
        except errors.PasswordHashInvalidError:
            return False
        self.succeeded = True
        return True

    async def me(self) -> Me:
        """The account the session is logged in as."""
        me = await self._client.get_me()
        name = " ".join(x for x in (me.first_name, me.last_name) if x) or str(me.id)
        return Me(me.id, name)


def login_options(options: ClientOptions) -> ClientOptions:
    """The options of an account's client, as a login uses them: no updates, and short
    flood waits slept through (LOGIN_FLOOD_SLEEP, LOGIN_RETRIES)."""
    return ClientOptions(
        options.api_id,
        options.api_hash,
        proxy=options.proxy,
        flood_sleep_threshold=LOGIN_FLOOD_SLEEP,
        request_retries=LOGIN_RETRIES,
        receive_updates=False,
        device_model=options.device_model,
        app_version=options.app_version,
        system_version=options.system_version,
        lang_code=options.lang_code,
    )


@contextlib.asynccontextmanager
async def login_session(
    path: Path,
    options: ClientOptions,
    *,
    dc: tuple[int, str, int] | None = None,
    seal: SessionSeal | None = None,
    client_factory: ClientFactory = build_client,
) -> AsyncIterator[Login]:
    """A `Login` on the session file `path`, connected; disconnected and unlocked after.

    `options` are taken as a login's (`login_options`). `dc` = (dc_id, host, port) points
    a new session at another data centre than Telethon's default (the emulator, in tests).
    With a `seal` the auth key is written sealed (model/session.py).
    Raises ConfigError when another process holds the session file, or when its key does
    not open with `seal` (or is sealed and there is no seal)."""
    file = _LoginFile(path)
    client = None
    login: Login | None = None
    try:
        client = client_factory(EntitySession(str(path), seal=seal), login_options(options))
        if dc is not None and not file.existed:
            client.session.set_dc(*dc)
        await client.connect()
        login = Login(client)
        yield login
    finally:
        if client is not None:
            await client.disconnect()
        file.release(keep=login is not None and login.succeeded)


class _LoginFile:
    """The session file a login writes, locked from here on (ConfigError when another
    process holds it). Released, a file the login made is removed unless it succeeded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.existed = path.exists()
        self._lock = SessionLock(path)
        self._lock.acquire()

    def release(self, *, keep: bool) -> None:
        self._lock.release()
        if keep or self.existed:
            return
        for leftover in (self.path, *(self.path.with_name(self.path.name + s) for s in _BESIDE)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
