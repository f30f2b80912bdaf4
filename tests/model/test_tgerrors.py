"""model/tgerrors.py: Telegram's error names, what an error says of the account, the
service's error for each, and the names and flood-wait kinds of requests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from telethon import errors, functions, types

from common.errors import (
    AccountUnusable,
    FloodWait,
    InvalidArgument,
    PeerNotFound,
    PeerPrivate,
    TelegramError,
    TransientTelegramError,
)
from model.tgerrors import (
    CONNECTION_LOST,
    DOWNLOAD,
    OTHER,
    RESOLVE,
    account_fate,
    domain_error,
    error_label,
    is_flood,
    is_transient,
    lost_connection_error,
    request_kind,
    request_name,
    rpc_error_name,
    telethon_cause,
)


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


# --- the service's error for each: the one classification ---

ACCOUNT = "acc1"


@pytest.mark.parametrize(
    ("error", "peer", "blame", "expected", "fields"),
    [
        (errors.FloodWaitError(None, capture=40), "@x", None, FloodWait, {"retry_after": 40}),
        (errors.FloodWaitError(None, capture=0), "", None, FloodWait, {"retry_after": 1}),
        (errors.FloodPremiumWaitError(None, capture=7), "", None, FloodWait, {"retry_after": 7}),
        (errors.QueryTooShortError(None), "", {"QUERY_TOO_SHORT": "q"}, InvalidArgument,
         {"argument": "q"}),
        (errors.QueryTooShortError(None), "", None, TelegramError,
         {"rpc_error": "QUERY_TOO_SHORT"}),
        (errors.UserDeactivatedBanError(None), "@x", None, AccountUnusable,
         {"state": "banned", "reason": "USER_DEACTIVATED_BAN", "account": ACCOUNT}),
        (errors.AuthKeyUnregisteredError(None), "", None, AccountUnusable,
         {"state": "unauthorized"}),
        (errors.UsernameNotOccupiedError(None), "@x", None, PeerNotFound, {"peer": "@x"}),
        (errors.ChannelPrivateError(None), "@x", None, PeerPrivate, {"peer": "@x"}),
        (errors.ChatAdminRequiredError(None), "@x", None, PeerPrivate, {"peer": "@x"}),
        # About a peer only when the call named one (the downloader's calls name none).
        (errors.ChannelPrivateError(None), "", None, TelegramError,
         {"rpc_error": "CHANNEL_PRIVATE"}),
        (errors.RPCError(None, "SOMETHING_NEW", 400), "@x", None, TelegramError,
         {"rpc_error": "SOMETHING_NEW"}),
    ],
)  # fmt: skip
def test_domain_error(
    error: errors.RPCError,
    peer: str,
    blame: dict[str, str] | None,
    expected: type[Exception],
    fields: dict[str, object],
) -> None:
    found = domain_error(error, ACCOUNT, peer=peer, blame=blame)
    assert type(found) is expected
    for name, value in fields.items():
        assert getattr(found, name) == value, name


def test_a_blamed_error_names_the_argument_and_telegrams_reason() -> None:
    found = domain_error(errors.MsgIdInvalidError(None), ACCOUNT, blame={"MSG_ID_INVALID": "ids"})
    assert isinstance(found, InvalidArgument)
    assert found.message == "ids: Telegram refused it (MSG_ID_INVALID)"


def test_the_telethon_cause_is_found_through_a_short_chain() -> None:
    rpc = errors.FileReferenceExpiredError(None)
    try:
        raise TelegramError("WRAPPED") from rpc
    except TelegramError as e:
        wrapped = e
    assert telethon_cause(rpc) is rpc and telethon_cause(wrapped) is rpc
    assert telethon_cause(ConnectionError("reset")) is None and telethon_cause(None) is None


def test_requests_are_classified_for_flood_waits() -> None:
    wrapped = functions.InvokeWithLayerRequest(1, functions.contacts.ResolveUsernameRequest("x"))
    assert request_kind(wrapped) == RESOLVE
    assert request_kind(functions.contacts.SearchRequest("x", 1)) == OTHER != RESOLVE
    get_file = functions.upload.GetFileRequest(
        types.InputDocumentFileLocation(1, 2, b"", ""), 0, 4096
    )
    assert request_kind(functions.InvokeWithLayerRequest(1, get_file)) == DOWNLOAD


def test_requests_are_named_by_module_and_method() -> None:
    wrapped = functions.InvokeWithLayerRequest(1, functions.contacts.ResolveUsernameRequest("x"))
    assert request_name(wrapped) == "contacts.ResolveUsername"
    assert request_name(functions.channels.GetFullChannelRequest(None)) == "channels.GetFullChannel"


def test_error_labels_fold_every_flood_wait() -> None:
    assert error_label(errors.FloodWaitError(None, capture=5)) == "FLOOD_WAIT"
    assert error_label(errors.FloodPremiumWaitError(None, capture=5)) == "FLOOD_WAIT"
    assert error_label(errors.ChannelPrivateError(None)) == "CHANNEL_PRIVATE"
    assert is_flood(errors.FloodWaitError(None, capture=5))
    assert not is_flood(errors.ChannelPrivateError(None))


# --- transient failures: Telegram's own, moved to another account ---


def telegram_says(code: int, message: str) -> errors.RPCError:
    """The Telethon error for an rpc_error as it comes off the wire."""
    raw = SimpleNamespace(error_code=code, error_message=message)
    error: errors.RPCError = errors.rpc_message_to_error(raw, None)
    return error


@pytest.mark.parametrize(
    ("code", "message", "transient"),
    [
        (500, "INTERNAL", True),
        (-500, "No workers running", True),
        (500, "RPC_CALL_FAIL", True),
        (500, "INTERDC_2_CALL_ERROR", True),
        (-503, "Timeout", True),
        (503, "TIMEOUT", True),
        (420, "FLOOD_WAIT_5", False),
        (400, "CHANNEL_INVALID", False),
        (401, "AUTH_KEY_UNREGISTERED", False),
        (406, "SOMETHING_ELSE", False),
    ],
)
def test_transient_failures_are_telegrams_500s_and_503s(
    code: int, message: str, transient: bool
) -> None:
    error = telegram_says(code, message)
    assert is_transient(error) is transient
    service = domain_error(error, ACCOUNT, peer="@news")
    assert isinstance(service, TransientTelegramError) is transient
    if transient:
        assert isinstance(service, TelegramError) and service.status == 502
        assert (service.rpc_error, service.account) == (rpc_error_name(error), ACCOUNT)


def test_a_lost_connection_is_a_transient_failure_named_connection_lost() -> None:
    error = lost_connection_error(ACCOUNT, 0.5)
    assert isinstance(error, TransientTelegramError)
    assert (error.rpc_error, error.account, error.code) == (CONNECTION_LOST, ACCOUNT, "TELEGRAM_ERROR")
    assert "0.5 s" in error.message
