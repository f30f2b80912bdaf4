"""Peer strings and marked ids, phone masking, media keys, the date format."""

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidParam
from common.utils import PeerRef, is_basic_group, mask_phone, media_key, parse_peer, utc_iso

usernames = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{4,31}", fullmatch=True)


@pytest.mark.parametrize(
    "raw",
    ["@Durov", "durov", "t.me/durov", "https://t.me/durov", "http://telegram.me/durov/12",
     "https://t.me/s/durov", "t.me/durov?start=x"],
)
def test_usernames_and_links_name_the_same_peer(raw: str) -> None:
    assert parse_peer(raw).username == "durov"


@given(usernames)
def test_any_valid_username_parses_lowercased(name: str) -> None:
    ref = parse_peer("@" + name)
    assert ref.username == name.lower()
    assert ref.id is None and ref.invite is None


def test_marked_ids() -> None:
    channel = parse_peer("-1001234567890")
    assert (channel.id, channel.kind) == (1234567890, "channel")
    assert channel.marked_ids() == [-1001234567890]
    chat = parse_peer("-4242")
    assert (chat.id, chat.kind) == (4242, "chat")
    assert chat.marked_ids() == [-4242]
    plain = parse_peer(777)
    assert (plain.id, plain.kind) == (777, None)
    assert plain.marked_ids() == [777, -1000000000777, -777]


@given(st.integers(min_value=1, max_value=2**40))
def test_channel_marked_id_round_trips(bare: int) -> None:
    ref = parse_peer(str(-(10**12) - bare))
    assert ref.kind == "channel" and ref.id == bare
    assert ref.marked_ids() == [-(10**12) - bare]


def test_private_and_invite_links() -> None:
    assert parse_peer("https://t.me/c/777/5") == PeerRef("https://t.me/c/777/5", id=777, kind="channel")
    assert parse_peer("t.me/+AbCdEfGh123").invite == "AbCdEfGh123"
    assert parse_peer("t.me/joinchat/AbCdEfGh12").invite == "AbCdEfGh12"


@pytest.mark.parametrize(
    "raw", ["", "   ", "@", "@ab", "1abc", "bad name", "t.me/", "0", "x" * 300, "-", "@a;drop",
            "https://example.com/durov", None],
)
def test_garbage_is_invalid_param_naming_the_parameter(raw: str | None) -> None:
    with pytest.raises(InvalidParam) as err:
        parse_peer(raw, param="peer")
    assert err.value.param == "peer"
    assert err.value.status == 400


@given(st.text(max_size=80))
def test_parse_peer_never_raises_anything_but_invalid_param(raw: str) -> None:
    try:
        ref = parse_peer(raw)
    except InvalidParam:
        return
    assert (ref.username, ref.id, ref.invite).count(None) == 2


def test_mask_phone_hides_the_middle() -> None:
    assert mask_phone("+441234567890") == "+44********90"
    assert mask_phone("123") == "+***"


@given(st.from_regex(r"\+?[0-9]{5,15}", fullmatch=True))
def test_mask_phone_keeps_length_and_hides_most_digits(phone: str) -> None:
    masked = mask_phone(phone)
    digits = phone.lstrip("+")
    assert len(masked) == len(digits) + 1
    assert masked.count("*") == len(digits) - 4


@given(st.sampled_from(["photo", "document"]), st.integers(min_value=-(2**63), max_value=2**63 - 1),
       st.text(max_size=3))
def test_media_key_is_stable_hex_and_depends_on_identity(kind: str, file_id: int, variant: str) -> None:
    key = media_key(kind, file_id, variant)
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == media_key(kind, file_id, variant)
    assert key != media_key(kind, file_id + 1, variant)


@pytest.mark.parametrize(
    "raw",
    ["t.me/c/²", "t.me/c/¹²³/4", "https://t.me/c/0", "t.me/c/" + "9" * 20, "-" + "9" * 20,
     str(-(10**12) - 2**53)],
)
def test_channel_ids_out_of_telegrams_range_are_invalid_param(raw: str) -> None:
    # Unicode digits once escaped as a ValueError (a 500), and ids past 64 bits as an
    # OverflowError from the session's SQLite lookup.
    with pytest.raises(InvalidParam) as err:
        parse_peer(raw)
    assert err.value.param == "peer"


@given(
    st.one_of(
        st.integers(min_value=-(10**21), max_value=10**21).map(str),
        st.from_regex(r"(https://)?t\.me/c/[0-9]{1,22}(/[0-9]{1,3})?", fullmatch=True),
    )
)
def test_every_parsed_id_fits_telegrams_range(raw: str) -> None:
    try:
        ref = parse_peer(raw)
    except InvalidParam:
        return
    assert ref.id is not None and 0 < ref.id < 2**53
    assert all(-(2**63) <= marked < 2**63 for marked in ref.marked_ids())


def test_utc_iso_of_naive_other_zones_and_unix_times() -> None:
    assert utc_iso(dt.datetime(2024, 1, 1, 1, 2, 3)) == "2024-01-01T01:02:03Z"
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert utc_iso(dt.datetime(2024, 1, 1, 3, 0, tzinfo=plus2)) == "2024-01-01T01:00:00Z"
    assert utc_iso(None) is None
    assert utc_iso(1_700_000_000.9) == "2023-11-14T22:13:20Z"


# strftime pads years below 1000 by platform; Telegram dates start in 2013.
@given(st.datetimes(min_value=dt.datetime(1970, 1, 1), timezones=st.just(dt.UTC)))
def test_utc_iso_matches_strftime(value: dt.datetime) -> None:
    assert utc_iso(value) == value.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("marked", "kind", "bare"),
    [
        (42, "user", 42),
        (-42, "chat", 42),
        # A basic group whose id starts with 100 is still a basic group (not channel 123).
        (-100123, "chat", 100123),
        (-1001234567890, "channel", 1234567890),
        (-(10**12) - 5, "channel", 5),
    ],
)
def test_from_marked_id(marked: int, kind: str, bare: int) -> None:
    ref = PeerRef.from_marked_id(marked)
    assert (ref.kind, ref.id, ref.raw) == (kind, bare, str(marked))
    assert ref.marked_ids() == [marked]
    assert is_basic_group(marked) == (kind == "chat")


@given(st.integers(min_value=-(2**52), max_value=2**52).filter(bool))
def test_from_marked_id_agrees_with_parse_peer(marked: int) -> None:
    ref = PeerRef.from_marked_id(marked)
    parsed = parse_peer(str(marked))
    assert ref.id == parsed.id
    if marked < 0:
        assert ref.kind == parsed.kind
