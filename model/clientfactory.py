"""How the Telethon client of a session is built: one place for the accounts and the login.

`TeleClient` and `model.login` both take a `ClientFactory`, a callable that builds the
client from a session and `ClientOptions`; `build_client` (the default) builds Telethon's
`TelegramClient`, and tests hand in one that builds a fake around the same real session.

Telethon sleeps through flood waits shorter than `flood_sleep_threshold` inside the call
(and ignores a per-call threshold in 1.45), so an account's threshold is 0 by default
(telegram.flood_sleep_threshold) and the pool answers a flood wait by moving the call to
another account.

Telegram's transient failures (its 500s, a -503) are not left to Telethon's retries either,
and no setting here could do that: `_call` sleeps 2 s after each such failure, after the
last try too, so even request_retries=0 holds a call 2 s (3, the shipped value, held each
soak INTERNAL 8 s before a 502). An account's calls go through
`model.telethon_internals.call_once`, which raises them at once for the pool to move.
`request_retries` (telegram.request_retries) stays what Telethon retries otherwise:
migrations and the flood waits it sleeps through, for the accounts' calls; for the file
parts the downloader sends through `_call` itself, its 500s too (a background download
loses nothing by waiting). `raise_last_call_error` stays True: when those retries run out,
the last error keeps Telegram's name (TelegramError) instead of Telethon's bare ValueError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telethon import TelegramClient

from common.const import Proxy


@dataclass(frozen=True)
class ClientOptions:
    """What a Telethon client is built with, besides its session."""

    api_id: int
    api_hash: str
    proxy: Proxy | None = None
    flood_sleep_threshold: int = 0
    request_retries: int = 2
    receive_updates: bool = True
    # Load the update state saved in the session at connect and ask Telegram for what was
    # missed since (model/updatefeed.py); without it Telethon starts from the current state.
    catch_up: bool = False
    # Telethon fills what is None from this machine (platform, its own version).
    device_model: str | None = None
    app_version: str | None = None
    system_version: str | None = None
    lang_code: str = "en"


# (session, options) → the client: telethon.TelegramClient, or a test's stand-in.
ClientFactory = Callable[[Any, ClientOptions], Any]


def build_client(session: Any, options: ClientOptions) -> Any:
    """Telethon's `TelegramClient` on `session` (a telethon.sessions.Session)."""
    return TelegramClient(
        session,
        options.api_id,
        options.api_hash,
        proxy=options.proxy.to_telethon() if options.proxy is not None else None,
        flood_sleep_threshold=options.flood_sleep_threshold,
        request_retries=options.request_retries,
        # After its retries run out, Telethon raises a bare ValueError unless told to raise
        # the last error, which keeps Telegram's name for TelegramError (module docstring).
        raise_last_call_error=True,
        auto_reconnect=True,
        receive_updates=options.receive_updates,
        catch_up=options.catch_up,
        lang_code=options.lang_code,
        system_lang_code=options.lang_code,
        device_model=options.device_model,
        app_version=options.app_version,
        system_version=options.system_version,
    )
