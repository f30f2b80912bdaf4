"""model/clientfactory.py: the one way a Telethon client is built, for the accounts (and the
login, tests/model/test_login.py): the settings reach Telethon, and a TeleClient hands its
factory the session file it opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.const import Proxy
from model.clientfactory import ClientOptions, build_client
from model.session import EntitySession
from model.teleclient import TeleClient


def test_the_proxy_setting_reaches_telethon(tmp_path: Path) -> None:
    proxy = Proxy("socks5", "127.0.0.9", 1080, "u@x", "p:w")
    with_proxy = TeleClient(tmp_path / "a.session", 1, "0" * 32, proxy=proxy)
    direct = TeleClient(tmp_path / "b.session", 1, "0" * 32)
    try:
        assert with_proxy.client._proxy == proxy.to_telethon()
        assert with_proxy.client._proxy["rdns"] is True
        assert direct.client._proxy is None
    finally:
        with_proxy.client.session.close()
        direct.client.session.close()


def test_build_client_takes_the_options(tmp_path: Path) -> None:
    options = ClientOptions(1, "0" * 32, flood_sleep_threshold=7, request_retries=4)
    client = build_client(EntitySession(str(tmp_path / "c.session")), options)
    try:
        assert client.flood_sleep_threshold == 7
        assert isinstance(client.session, EntitySession)
    finally:
        client.session.close()


def test_a_teleclient_builds_its_client_with_the_factory_it_is_given(tmp_path: Path) -> None:
    built: list[tuple[Any, ClientOptions]] = []

    def factory(session: Any, options: ClientOptions) -> Any:
        built.append((session, options))
        return build_client(session, options)

    tc = TeleClient(
        tmp_path / "acc",
        5,
        "f" * 32,
        flood_sleep_threshold=3,
        request_retries=1,
        receive_updates=False,
        lang_code="de",
        device_model="tgc",
        client_factory=factory,
    )
    try:
        ((session, options),) = built
        assert session is tc.client.session and isinstance(session, EntitySession)
        assert session.filename == str(tmp_path / "acc.session")
        assert options == ClientOptions(
            5,
            "f" * 32,
            flood_sleep_threshold=3,
            request_retries=1,
            receive_updates=False,
            device_model="tgc",
            lang_code="de",
        )
    finally:
        tc.client.session.close()
