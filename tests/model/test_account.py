"""model/account.py: an account's public label (a session named by a phone number never
shows it) and its status (flood waits per request kind, out of rotation for good,
disconnected until a reconnect)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.account import AccountState, AccountStatus, account_label, account_labels
from model.tgerrors import OTHER, RESOLVE
from tests.model.faketelethon import FakeClock

# --- labels ---


@pytest.mark.parametrize(
    ("stem", "label"),
    [
        ("15550001001", "+15*******01"),
        ("+15550001001", "+15*******01"),
        ("4470000101", "+44******01"),
        ("1234567", "+12***67"),  # 7 digits: the shortest number taken for a phone
        ("123456", "123456"),
        ("1234567890123456", "1234567890123456"),  # 16: not a phone number
        ("acc101", "acc101"),
        ("ops-1555000100", "ops-1555000100"),
    ],
)
def test_account_label_masks_a_phone_stem(stem: str, label: str) -> None:
    assert account_label(stem) == label


def test_account_labels_tell_colliding_masks_apart_by_stem_order() -> None:
    stems = ["15550009901", "acc1", "15550001001", "15550001002", "+15550007701"]
    labels = account_labels(stems)
    assert labels == {
        "+15550007701": "+15*******01",  # "+" sorts before digits
        "15550001001": "+15*******01#2",
        "15550009901": "+15*******01#3",
        "15550001002": "+15*******02",
        "acc1": "acc1",
    }
    # The order of the files does not matter; only the set of stems does.
    assert account_labels(reversed(stems)) == labels


def test_a_generated_suffix_never_takes_another_accounts_own_name() -> None:
    labels = account_labels(["15550001001", "15550009901", "+15*******01#2"])
    assert labels["+15*******01#2"] == "+15*******01#2"
    assert sorted(labels.values()) == ["+15*******01", "+15*******01#2", "+15*******01#3"]


@given(st.lists(st.from_regex(r"\+?[0-9]{7,15}|[a-z0-9_-]{1,12}", fullmatch=True), max_size=12))
def test_account_labels_are_unique_and_never_a_phone(stems: list[str]) -> None:
    labels = account_labels(stems)
    assert set(labels) == set(stems)
    assert len(set(labels.values())) == len(labels)
    for stem, label in labels.items():
        if account_label(stem) != stem:  # a phone number
            assert stem.lstrip("+") not in label and label.startswith(account_label(stem))


# --- the status ---


def test_flood_waits_are_kept_per_request_kind() -> None:
    clock = FakeClock()
    status = AccountStatus("acc", clock)
    assert (status.state, status.flood_until, status.flood_ready_in(RESOLVE)) == ("ok", None, 0)
    status.flood(RESOLVE, 300)
    status.flood(OTHER, 20)
    status.flood(RESOLVE, 100)  # a shorter wait does not shorten the running one
    assert status.state is AccountState.FLOOD_WAIT and status.connected
    assert status.flood_ready_in(RESOLVE) == 300 and status.flood_ready_in(OTHER) == 20
    assert status.flood_until == clock() + 300
    assert (status.flood_waits, status.flood_wait_seconds) == (3, 420)
    clock.advance(20)
    assert status.flood_ready_in(OTHER) == 0 and status.state is AccountState.FLOOD_WAIT
    clock.advance(280)
    assert status.state is AccountState.OK and status.flood_until is None


def test_out_of_rotation_is_for_good() -> None:
    status = AccountStatus("acc", FakeClock())
    status.set_disconnected("reset")
    assert (status.state, status.reason, status.usable) == ("disconnected", "reset", True)
    assert status.disconnected and not status.connected
    status.set_connected()
    assert (status.state, status.reason) == ("ok", None)
    status.set_unusable(AccountState.BANNED, "USER_DEACTIVATED_BAN")
    status.set_disconnected("the connection was lost")  # a banned account stays banned
    status.set_connected()
    assert (status.state, status.reason) == ("banned", "USER_DEACTIVATED_BAN")
    assert not status.usable and not status.connected
