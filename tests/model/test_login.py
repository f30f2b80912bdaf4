"""model/login.py with a fake Telethon client built by the same kind of factory the accounts
use: the code, the 2FA password, and what is left on disk after. tests/test_login.py runs
`start.py login` end to end against the DC emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from telethon import errors

from common.errors import ConfigError, TelegramError
from model.clientfactory import ClientOptions
from model.login import LOGIN_FLOOD_SLEEP, Me, SignIn, login_session
from model.session import EntitySession, SessionLock

CODE, PASSWORD = "12345", "secret"
OPTIONS = ClientOptions(1, "0" * 32, flood_sleep_threshold=0, lang_code="de")


class FakeLoginClient:
    """The part of telethon.TelegramClient a login uses, over a real session object."""

    def __init__(self, session: Any, options: ClientOptions, *, password: bool = False) -> None:
        self.session = session
        self.options = options
        self.password = password
        self.authorized = False
        self.connected = False
        self.codes_sent: list[str] = []

    async def connect(self) -> None:
        self.connected = True

    async def disconnect(self) -> None:
        self.connected = False
        self.session.close()

    async def is_user_authorized(self) -> bool:
        return self.authorized

    async def send_code_request(self, phone: str) -> Any:
        if phone == "+15559999999":
            raise errors.PhoneNumberInvalidError(None)
        self.codes_sent.append(phone)
        return type("SentCode", (), {"phone_code_hash": "h"})()

    async def sign_in(
        self, phone: str = "", code: str = "", *, password: str = "", phone_code_hash: str = ""
    ) -> None:
        if password:
            if password != PASSWORD:
                raise errors.PasswordHashInvalidError(None)
        elif (phone, phone_code_hash) != ("+15550001001", "h") or code != CODE:
            raise errors.PhoneCodeInvalidError(None)
        elif self.password:
            raise errors.SessionPasswordNeededError(None)
        self.session.save()  # Telethon writes the key to the file on a login
        self.authorized = True

    async def get_me(self) -> Any:
        return type("Me", (), {"id": 1001, "first_name": "Ann", "last_name": "Able"})()


class Factory:
    def __init__(self, password: bool = False) -> None:
        self.password = password
        self.clients: list[FakeLoginClient] = []

    def __call__(self, session: Any, options: ClientOptions) -> FakeLoginClient:
        client = FakeLoginClient(session, options, password=self.password)
        self.clients.append(client)
        return client


async def test_a_login_with_the_code_keeps_the_session(tmp_path: Path) -> None:
    path, factory = tmp_path / "15550001001.session", Factory()
    async with login_session(path, OPTIONS, client_factory=factory) as login:
        assert not await login.authorized()
        await login.send_code("+15550001001")
        assert await login.sign_in("00000") is SignIn.WRONG_CODE
        assert await login.sign_in(CODE) is SignIn.DONE
        assert await login.me() == Me(1001, "Ann Able")
    (client,) = factory.clients
    assert isinstance(client.session, EntitySession) and not client.connected
    # A login's client: no updates, short flood waits slept through; the rest as given.
    assert client.options.receive_updates is False
    assert client.options.flood_sleep_threshold == LOGIN_FLOOD_SLEEP
    assert client.options.lang_code == "de" and client.options.api_id == 1
    assert path.exists()
    SessionLock(path).acquire()  # the lock was freed


async def test_a_2fa_password_after_the_code(tmp_path: Path) -> None:
    path = tmp_path / "15550001001.session"
    async with login_session(path, OPTIONS, client_factory=Factory(password=True)) as login:
        await login.send_code("+15550001001")
        assert await login.sign_in(CODE) is SignIn.PASSWORD_NEEDED
        assert not await login.check_password("wrong")
        assert await login.check_password(PASSWORD)
    assert path.exists()


async def test_a_failed_login_leaves_no_session_file(tmp_path: Path) -> None:
    path = tmp_path / "15550001001.session"
    async with login_session(path, OPTIONS, client_factory=Factory()) as login:
        await login.send_code("+15550001001")
        assert await login.sign_in("00000") is SignIn.WRONG_CODE
    assert not path.exists() and not path.with_name(path.name + "-journal").exists()


async def test_a_number_telegram_refuses_is_its_telegram_error(tmp_path: Path) -> None:
    path = tmp_path / "15559999999.session"
    with pytest.raises(TelegramError) as caught:
        async with login_session(path, OPTIONS, client_factory=Factory()) as login:
            await login.send_code("+15559999999")
    assert caught.value.rpc_error == "PHONE_NUMBER_INVALID"
    assert "phone number is invalid" in caught.value.message
    assert not path.exists()


async def test_an_existing_session_is_kept_whatever_happens(tmp_path: Path) -> None:
    path = tmp_path / "15550001001.session"
    async with login_session(path, OPTIONS, client_factory=Factory()) as login:
        await login.send_code("+15550001001")
        await login.sign_in(CODE)
    factory = Factory()
    async with login_session(path, OPTIONS, client_factory=factory) as login:
        assert not await login.authorized()  # a fresh fake: not logged in, and gives up
    assert path.exists()


async def test_a_session_in_use_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "15550001001.session"
    held = SessionLock(path)
    held.acquire()
    factory = Factory()
    with pytest.raises(ConfigError, match="in use"):
        async with login_session(path, OPTIONS, client_factory=factory):
            pass
    assert factory.clients == []
    held.release()
