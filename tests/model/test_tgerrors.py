"""model/tgerrors.py: Telegram's error names, and what an error says of the account."""

from __future__ import annotations

import pytest
from telethon import errors

from model.tgerrors import account_fate, rpc_error_name


def test_rpc_error_names_are_telegrams() -> None:
    assert rpc_error_name(errors.ChannelPrivateError(None)) == "CHANNEL_PRIVATE"
    assert rpc_error_name(errors.FloodWaitError(None, capture=5)) == "FLOOD_WAIT_X"
    assert rpc_error_name(errors.RPCError(None, "SOMETHING_NEW", 400)) == "SOMETHING_NEW"


@pytest.mark.parametrize(
    ("error", "fate"),
    [
        (errors.UserDeactivatedBanError(None), "banned"),
        (errors.UserDeactivatedError(None), "banned"),
        (errors.AuthKeyDuplicatedError(None), "banned"),
        (errors.AuthKeyUnregisteredError(None), "unauthorized"),
        (errors.SessionRevokedError(None), "unauthorized"),
        (errors.SessionExpiredError(None), "unauthorized"),
        # A 401 Telethon has no class for is still a logout.
        (errors.UnauthorizedError(None, "SESSION_SOMETHING_NEW"), "unauthorized"),
        (errors.ChannelPrivateError(None), None),
        (errors.FloodWaitError(None, capture=5), None),
        (errors.FileReferenceExpiredError(None), None),
    ],
)
def test_account_fate(error: errors.RPCError, fate: str | None) -> None:
    assert account_fate(error) == fate
