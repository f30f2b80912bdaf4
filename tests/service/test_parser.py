"""service/parser.py: hand-built Telethon objects of every kind, and property tests over
generated messages (JSON-serialisable, every contract field, keys equal across accounts)."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon.tl import types

from common.utils import media_key
from model.media import sanitize_file_name
from service.parser import (
    MESSAGE_FIELDS,
    PEER_FIELDS,
    fresh_reference,
    parse_message,
    parse_messages,
    parse_peer,
    parse_search_result,
    parse_user,
    plain,
)

DATE = dt.datetime(2024, 5, 1, 12, 0, 7, tzinfo=dt.UTC)
CHANNEL = types.PeerChannel(1234)
CONTRACT_MESSAGE = {
    "id", "peer_id", "date", "edit_date", "text", "entities", "from_id", "post_author",
    "views", "forwards", "replies", "reply_to_msg_id", "fwd_from", "grouped_id", "pinned",
    "action", "media",
}  # fmt: skip
CONTRACT_DESCRIPTOR = {
    "key", "type", "mime_type", "size", "file_name", "width", "height", "duration", "state", "url",
    "content_url",
}  # fmt: skip
CONTRACT_PEER = {
    "id", "type", "title", "first_name", "last_name", "username", "about",
    "participants_count", "verified", "scam", "fake", "date", "linked_chat_id", "photo",
}  # fmt: skip


def photo(photo_id: int = 10, access_hash: int = 99, ref: bytes = b"r1") -> types.Photo:
    return types.Photo(
        id=photo_id,
        access_hash=access_hash,
        file_reference=ref,
        date=DATE,
        sizes=[
            types.PhotoSize(type="s", w=90, h=90, size=1000),
            types.PhotoSize(type="x", w=800, h=800, size=50_000),
        ],
        dc_id=2,
    )


def document(
    doc_id: int = 20,
    access_hash: int = 98,
    ref: bytes = b"r2",
    mime: str = "application/pdf",
    attrs: list[Any] | None = None,
) -> types.Document:
    return types.Document(
        id=doc_id,
        access_hash=access_hash,
        file_reference=ref,
        date=DATE,
        mime_type=mime,
        size=3_000_000,
        dc_id=1,
        attributes=attrs if attrs is not None else [types.DocumentAttributeFilename("a.pdf")],
    )


def message(**kw: Any) -> types.Message:
    base: dict[str, Any] = {"id": 7, "peer_id": CHANNEL, "date": DATE, "message": "hello"}
    base.update(kw)
    return types.Message(**base)


def parse(msg: Any, account: str = "acc1") -> tuple[dict[str, Any], list[Any]]:
    out, media = parse_message(msg, account)
    json.dumps(out)  # nothing Telethon, no datetime, no bytes (orjson would take datetimes)
    assert tuple(out)[: len(MESSAGE_FIELDS)] == MESSAGE_FIELDS
    return out, media


def test_plain_text_message() -> None:
    out, media = parse(message())
    assert media == []
    assert out["id"] == 7 and out["peer_id"] == -1000000001234
    assert out["date"] == "2024-05-01T12:00:07Z" and out["edit_date"] is None
    assert out["text"] == "hello" and out["entities"] == []
    assert out["media"] is None and out["action"] is None and out["fwd_from"] is None
    assert out["pinned"] is False and out["replies"] is None and out["replies_info"] is None


def test_a_posts_comments_and_a_groups_thread_from_message_replies() -> None:
    comments = types.MessageReplies(
        replies=45,
        replies_pts=9,
        comments=True,
        channel_id=2103,
        max_id=47,
        read_max_id=40,
        recent_repliers=[types.PeerUser(1101), types.PeerChannel(77)],
    )
    out, _ = parse(message(post=True, replies=comments))
    assert out["replies"] == 45
    assert out["replies_info"] == {
        "replies": 45, "comments": True, "discussion_id": -1000000002103, "max_id": 47,
        "read_max_id": 40, "recent_repliers": [1101, -1000000000077],
    }  # fmt: skip
    thread = types.MessageReplies(replies=0, replies_pts=3)
    out, _ = parse(message(replies=thread))
    assert out["replies"] == 0 and out["replies_info"]["comments"] is False
    assert out["replies_info"]["discussion_id"] is None and out["replies_info"]["max_id"] is None


def test_channel_post_fields() -> None:
    out, _ = parse(
        message(
            post=True,
            views=1500,
            forwards=12,
            post_author="Editor",
            edit_date=dt.datetime(2024, 5, 2, tzinfo=dt.UTC),
            replies=types.MessageReplies(replies=4, replies_pts=1, comments=True),
            pinned=True,
            grouped_id=2**62 + 5,
            reply_to=types.MessageReplyHeader(reply_to_msg_id=3, reply_to_top_id=1),
            reactions=types.MessageReactions(
                results=[
                    types.ReactionCount(reaction=types.ReactionEmoji("👍"), count=3),
                    types.ReactionCount(reaction=types.ReactionCustomEmoji(document_id=5), count=1),
                    types.ReactionCount(reaction=types.ReactionPaid(), count=2),
                ]
            ),
        )
    )
    assert (out["views"], out["forwards"], out["post_author"]) == (1500, 12, "Editor")
    assert out["edit_date"] == "2024-05-02T00:00:00Z"
    assert out["replies"] == 4 and out["pinned"] is True and out["post"] is True
    assert out["replies_info"] == {
        "replies": 4, "comments": True, "discussion_id": None, "max_id": None,
        "read_max_id": None, "recent_repliers": [],
    }  # fmt: skip
    assert out["grouped_id"] == 2**62 + 5
    assert out["reply_to_msg_id"] == 3 and out["reply_to_top_id"] == 1
    assert out["reactions"] == [
        {"reaction": "👍", "count": 3},
        {"reaction": "custom:5", "count": 1},
        {"reaction": "paid", "count": 2},
    ]


def test_from_id_and_forward_header() -> None:
    out, _ = parse(
        message(
            peer_id=types.PeerChat(55),
            from_id=types.PeerUser(42),
            fwd_from=types.MessageFwdHeader(
                date=DATE,
                from_id=types.PeerChannel(9),
                channel_post=77,
                post_author="X",
                saved_from_peer=types.PeerChannel(10),
                saved_from_msg_id=8,
            ),
        )
    )
    assert out["peer_id"] == -55 and out["from_id"] == 42
    assert out["fwd_from"] == {
        "from_id": -1000000000009,
        "from_name": None,
        "date": "2024-05-01T12:00:07Z",
        "channel_post": 77,
        "post_author": "X",
        "saved_from_peer": -1000000000010,
        "saved_from_msg_id": 8,
        "psa_type": None,
    }


def test_entities() -> None:
    out, _ = parse(
        message(
            message="bold link @u code",
            entities=[
                types.MessageEntityBold(offset=0, length=4),
                types.MessageEntityTextUrl(offset=5, length=4, url="https://e.x"),
                types.MessageEntityMentionName(offset=10, length=2, user_id=42),
                types.MessageEntityPre(offset=13, length=4, language="py"),
                types.MessageEntityCustomEmoji(offset=0, length=1, document_id=2**63 - 1),
            ],
        )
    )
    assert out["entities"] == [
        {"offset": 0, "length": 4, "type": "bold"},
        {"offset": 5, "length": 4, "url": "https://e.x", "type": "text_url"},
        {"offset": 10, "length": 2, "user_id": 42, "type": "mention_name"},
        {"offset": 13, "length": 4, "language": "py", "type": "pre"},
        {"offset": 0, "length": 1, "document_id": 2**63 - 1, "type": "custom_emoji"},
    ]


def test_photo_message() -> None:
    out, media = parse(message(media=types.MessageMediaPhoto(photo=photo())), account="acc9")
    assert len(media) == 1
    m = media[0]
    assert (m.type, m.kind, m.thumb_size, m.account, m.peer_id, m.msg_id) == (
        "photo", "photo", "x", "acc9", -1000000001234, 7,
    )  # fmt: skip
    assert out["media"] == m.descriptor()
    assert set(out["media"]) == CONTRACT_DESCRIPTOR
    assert out["media"]["key"] == media_key("photo", 10, "x")
    assert (out["media"]["width"], out["media"]["size"]) == (800, 50_000)


@pytest.mark.parametrize(
    ("attrs", "flags", "mtype"),
    [
        ([types.DocumentAttributeFilename("a.pdf")], {}, "document"),
        ([types.DocumentAttributeVideo(duration=9.5, w=1280, h=720)], {"video": True}, "video"),
        (
            [types.DocumentAttributeVideo(duration=9, w=240, h=240, round_message=True)],
            {"round": True},
            "video_note",
        ),
        ([types.DocumentAttributeAudio(duration=180, title="song", performer="me")], {}, "audio"),
        ([types.DocumentAttributeAudio(duration=4, voice=True)], {"voice": True}, "voice"),
        (
            [types.DocumentAttributeSticker(alt="x", stickerset=types.InputStickerSetEmpty())],
            {},
            "sticker",
        ),
        (
            [types.DocumentAttributeAnimated(), types.DocumentAttributeVideo(duration=2, w=4, h=4)],
            {},
            "animation",
        ),
    ],
)
def test_document_kinds(attrs: list[Any], flags: dict[str, bool], mtype: str) -> None:
    doc = document(attrs=attrs)
    out, media = parse(message(media=types.MessageMediaDocument(document=doc, **flags)))
    assert [m.type for m in media] == [mtype]
    assert out["media"]["type"] == mtype
    assert out["media"]["key"] == media_key("document", 20, "")


def test_video_fields() -> None:
    doc = document(
        mime="video/mp4",
        attrs=[
            types.DocumentAttributeVideo(duration=9.5, w=1280, h=720),
            types.DocumentAttributeFilename("movie.mp4"),
        ],
    )
    out, _ = parse(message(media=types.MessageMediaDocument(document=doc)))
    d = out["media"]
    assert (d["width"], d["height"], d["duration"], d["file_name"], d["mime_type"]) == (
        1280, 720, 9.5, "movie.mp4", "video/mp4",
    )  # fmt: skip


def test_document_name_is_sanitised() -> None:
    doc = document(attrs=[types.DocumentAttributeFilename("../../etc/passwd\x00")])
    out, media = parse(message(media=types.MessageMediaDocument(document=doc)))
    assert out["media"]["file_name"] == "_.._etc_passwd" == media[0].file_name


def test_webpage_preview_photo() -> None:
    page = types.WebPage(
        id=1,
        url="https://example.org/a",
        display_url="example.org/a",
        hash=0,
        type="article",
        site_name="Example",
        title="A",
        description="about a",
        photo=photo(photo_id=31),
    )
    out, media = parse(message(media=types.MessageMediaWebPage(webpage=page)))
    assert [m.type for m in media] == ["webpage_photo"]
    assert out["media"]["type"] == "webpage_photo"
    assert out["media"]["key"] == media_key("photo", 31, "x")
    assert out["webpage"] == {
        "url": "https://example.org/a",
        "display_url": "example.org/a",
        "site_name": "Example",
        "title": "A",
        "description": "about a",
        "type": "article",
    }


def test_webpage_with_document_and_pending_page() -> None:
    page = types.WebPage(id=1, url="u", display_url="u", hash=0, document=document(doc_id=44))
    _, media = parse(message(media=types.MessageMediaWebPage(webpage=page)))
    assert [m.file_id for m in media] == [44]
    out, media = parse(
        message(media=types.MessageMediaWebPage(webpage=types.WebPagePending(id=1, date=DATE)))
    )
    assert media == [] and out["media"] is None and out["webpage"]["url"] is None


@pytest.mark.parametrize(
    ("mm", "info_type"),
    [
        (types.MessageMediaGeo(geo=types.GeoPoint(long=1.5, lat=2.5, access_hash=3)), "geo"),
        (types.MessageMediaContact("+1", "A", "B", "", 42), "contact"),
        (types.MessageMediaDice(value=3, emoticon="🎲"), "dice"),
        (
            types.MessageMediaVenue(
                geo=types.GeoPoint(long=1, lat=2, access_hash=3),
                title="t",
                address="a",
                provider="p",
                venue_id="v",
                venue_type="x",
            ),
            "venue",
        ),
        (
            types.MessageMediaPoll(
                poll=types.Poll(
                    id=2**63 - 1,
                    question=types.TextWithEntities("Q?", []),
                    answers=[types.PollAnswer(types.TextWithEntities("yes", []), b"\x00")],
                    hash=0,
                ),
                results=types.PollResults(total_voters=3),
            ),
            "poll",
        ),
        (types.MessageMediaUnsupported(), "unsupported"),
        (types.MessageMediaStory(peer=types.PeerUser(5), id=3), "story"),
        (
            types.MessageMediaGame(
                game=types.Game(
                    id=1, access_hash=2, short_name="g", title="G", description="d", photo=photo()
                )
            ),
            "game",
        ),
    ],
)
def test_media_without_file_gives_media_info(mm: Any, info_type: str) -> None:
    out, media = parse(message(media=mm))
    assert media == [] and out["media"] is None
    assert out["media_info"]["type"] == info_type


def test_poll_info_is_plain() -> None:
    mm = types.MessageMediaPoll(
        poll=types.Poll(
            id=5,
            question=types.TextWithEntities("Q?", []),
            answers=[types.PollAnswer(types.TextWithEntities("yes", []), b"\x01")],
            hash=0,
            closed=True,
        ),
        results=types.PollResults(total_voters=3),
    )
    out, _ = parse(message(media=mm))
    info = out["media_info"]
    assert info["poll"]["question"]["text"] == "Q?"
    assert info["poll"]["answers"][0]["option"] == "AQ=="
    assert info["poll"]["closed"] is True and info["results"]["total_voters"] == 3


def test_expired_photo_is_no_media() -> None:
    out, media = parse(message(media=types.MessageMediaPhoto(photo=types.PhotoEmpty(id=1))))
    assert media == [] and out["media"] is None and out["media_info"] is None


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (types.MessageActionChatAddUser(users=[1, 2]), {"type": "chat_add_user", "users": [1, 2]}),
        (types.MessageActionPinMessage(), {"type": "pin_message"}),
        (types.MessageActionChatEditTitle(title="T"), {"type": "chat_edit_title", "title": "T"}),
        (
            types.MessageActionChannelCreate(title="C"),
            {"type": "channel_create", "title": "C"},
        ),
        (
            types.MessageActionChatMigrateTo(channel_id=9),
            {"type": "chat_migrate_to", "channel_id": 9},
        ),
        (
            types.MessageActionGeoProximityReached(
                from_id=types.PeerUser(1), to_id=types.PeerChannel(2), distance=10
            ),
            {
                "type": "geo_proximity_reached",
                "from_id": 1,
                "to_id": -1000000000002,
                "distance": 10,
            },
        ),
    ],
)
def test_service_actions(action: Any, expected: dict[str, Any]) -> None:
    msg = types.MessageService(id=4, peer_id=CHANNEL, date=DATE, action=action)
    out, media = parse(msg)
    assert out["action"] == expected and media == []
    assert out["text"] == "" and out["media"] is None


def test_chat_photo_action_gives_media() -> None:
    msg = types.MessageService(
        id=4, peer_id=CHANNEL, date=DATE, action=types.MessageActionChatEditPhoto(photo=photo(61))
    )
    out, media = parse(msg)
    assert [m.file_id for m in media] == [61]
    assert out["action"] == {"type": "chat_edit_photo", "photo": media[0].descriptor()}


def test_parse_messages_keeps_places() -> None:
    msgs = [
        message(id=1),
        types.MessageEmpty(id=2, peer_id=CHANNEL),
        None,
        message(id=3, media=types.MessageMediaPhoto(photo=photo())),
    ]
    out, media = parse_messages(msgs, "acc")
    assert [m["id"] if m else None for m in out] == [1, None, None, 3]
    assert len(media) == 1 and media[0].msg_id == 3
    with pytest.raises(TypeError):
        parse_message(types.MessageEmpty(id=2, peer_id=CHANNEL), "acc")


def test_plain_handles_odd_values() -> None:
    assert plain(2**100) == str(2**100)
    assert plain(b"\xff") == "/w=="
    assert plain(types.PeerChat(3)) == -3
    assert plain(document(doc_id=5)) == {"type": "document", "id": 5}


# -- peers ----------------------------------------------------------------------------


def channel(**kw: Any) -> types.Channel:
    base: dict[str, Any] = {
        "id": 1234,
        "title": "News",
        "photo": types.ChatPhoto(photo_id=61, dc_id=2),
        "date": DATE,
        "broadcast": True,
        "access_hash": 5,
        "username": "news",
        "participants_count": 1000,
    }
    base.update(kw)
    return types.Channel(**base)


def channel_full(**kw: Any) -> types.messages.ChatFull:
    base: dict[str, Any] = {
        "id": 1234,
        "about": "All the news",
        "read_inbox_max_id": 0,
        "read_outbox_max_id": 0,
        "unread_count": 0,
        "chat_photo": photo(61),
        "notify_settings": types.PeerNotifySettings(),
        "bot_info": [],
        "pts": 1,
        "participants_count": 1200,
        "linked_chat_id": 777,
    }
    base.update(kw)
    return types.messages.ChatFull(full_chat=types.ChannelFull(**base), chats=[], users=[])


def peer(entity: Any, full: Any = None, account: str = "acc") -> tuple[dict[str, Any], list[Any]]:
    out, media = parse_peer(entity, full, account)
    orjson.dumps(out)
    assert tuple(out)[: len(PEER_FIELDS)] == PEER_FIELDS
    assert CONTRACT_PEER <= set(out)
    return out, media


def test_channel_with_full() -> None:
    out, media = peer(channel(verified=True), channel_full(), account="acc3")
    assert out["id"] == -1000000001234 and out["type"] == "channel"
    assert (out["title"], out["username"], out["about"]) == ("News", "news", "All the news")
    assert out["participants_count"] == 1200 and out["verified"] is True
    assert out["linked_chat_id"] == -1000000000777
    assert out["date"] == "2024-05-01T12:00:07Z"
    assert len(media) == 1 and media[0].account == "acc3" and media[0].msg_id is None
    assert media[0].peer_id == -1000000001234
    assert out["photo"] == media[0].descriptor()


def test_channel_without_full_has_no_photo() -> None:
    out, media = peer(channel(username=None, usernames=[
        types.Username("old", active=False), types.Username("cur", active=True)
    ]))  # fmt: skip
    assert out["photo"] is None and media == [] and out["about"] is None
    assert out["username"] == "cur" and out["participants_count"] == 1000


def test_megagroup_and_flags() -> None:
    out, _ = peer(channel(broadcast=False, megagroup=True, scam=True, fake=True))
    assert out["type"] == "megagroup" and out["scam"] is True and out["fake"] is True


def test_forbidden_channel() -> None:
    out, _ = peer(types.ChannelForbidden(id=9, access_hash=1, title="Gone", broadcast=True))
    assert out["type"] == "channel" and out["forbidden"] is True and out["title"] == "Gone"


def test_basic_group_with_full() -> None:
    chat = types.Chat(
        id=55, title="Friends", photo=types.ChatPhotoEmpty(), participants_count=3,
        date=DATE, version=1, migrated_to=types.InputChannel(channel_id=8, access_hash=1),
    )  # fmt: skip
    full = types.messages.ChatFull(
        full_chat=types.ChatFull(
            id=55,
            about="us",
            participants=types.ChatParticipantsForbidden(chat_id=55),
            notify_settings=types.PeerNotifySettings(),
            chat_photo=photo(71),
        ),
        chats=[],
        users=[],
    )
    out, media = peer(chat, full)
    assert out["id"] == -55 and out["type"] == "group" and out["about"] == "us"
    assert out["participants_count"] == 3 and out["migrated_to"] == -1000000000008
    assert [m.file_id for m in media] == [71]


def test_user_and_bot() -> None:
    user = types.User(
        id=42, first_name="Ann", last_name="Lee", username="ann", verified=True,
        status=types.UserStatusOffline(was_online=DATE), access_hash=1,
    )  # fmt: skip
    full = types.users.UserFull(
        full_user=types.UserFull(
            id=42,
            settings=types.PeerSettings(),
            notify_settings=types.PeerNotifySettings(),
            common_chats_count=0,
            about="hi",
            profile_photo=photo(81),
        ),
        chats=[],
        users=[],
    )
    out, media = peer(user, full)
    assert out["id"] == 42 and out["type"] == "user" and out["title"] is None
    assert (out["first_name"], out["last_name"], out["about"]) == ("Ann", "Lee", "hi")
    assert out["status"] == {"type": "offline", "was_online": "2024-05-01T12:00:07Z"}
    assert [m.file_id for m in media] == [81] and media[0].peer_id == 42
    bot = parse_user(types.User(id=43, bot=True, first_name="B"))
    assert bot["type"] == "bot" and bot["status"] is None
    orjson.dumps(bot)


def test_search_result_and_bad_input() -> None:
    out = parse_search_result(channel())
    assert out["id"] == -1000000001234 and out["photo"] is None
    with pytest.raises(TypeError):
        parse_peer(types.PeerChannel(1))
    with pytest.raises(TypeError):
        parse_peer(channel(), full=types.PeerNotifySettings())


def test_fresh_reference_finds_the_same_file() -> None:
    _, media = parse(message(media=types.MessageMediaDocument(document=document(ref=b"old"))))
    again = message(media=types.MessageMediaDocument(document=document(ref=b"new")))
    assert fresh_reference(again, media[0]) == b"new"
    other = message(media=types.MessageMediaDocument(document=document(doc_id=21, ref=b"x")))
    assert fresh_reference(other, media[0]) is None
    assert fresh_reference(message(), media[0]) is None
    _, pmedia = peer(channel(), channel_full())
    assert fresh_reference(channel_full(chat_photo=photo(61, ref=b"n2")), pmedia[0]) == b"n2"
    page = types.WebPage(id=1, url="u", display_url="u", hash=0, photo=photo(31, ref=b"w"))
    _, wmedia = parse(message(media=types.MessageMediaWebPage(webpage=page)))
    assert (
        fresh_reference(message(media=types.MessageMediaWebPage(webpage=page)), wmedia[0]) == b"w"
    )


# -- property tests -------------------------------------------------------------------

# Telethon decodes TL strings with errors="replace", so real text never holds lone
# surrogates; generated text leaves them out too.
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
ids = st.integers(min_value=1, max_value=2**31 - 1)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Telethon's datetimes are UTC; other offsets too, so that the property checks the parser
# turns whatever it gets into UTC.
zones = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=3)), dt.timezone(-dt.timedelta(hours=5, minutes=30))]
)
dates = st.datetimes(
    min_value=dt.datetime(2013, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=zones
)
# What the contract says a date is: ISO 8601, UTC, with the Z suffix.
ISO_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def utc_iso(value: dt.datetime | None) -> str | None:
    """The contract's form of a datetime, computed independently of the parser."""
    if value is None:
        return None
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def date_strings(value: Any, key: str = "") -> list[str]:
    """Every value under a key that names a date (date, edit_date, was_online...), nested."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in date_strings(v, k)]
    if isinstance(value, list):
        return [s for v in value for s in date_strings(v, key)]
    if value is not None and (key.endswith("date") or key == "was_online"):
        return [value]
    return []
peers = st.one_of(
    st.builds(types.PeerUser, ids),
    st.builds(types.PeerChat, ids),
    st.builds(types.PeerChannel, ids),
)
entities = st.lists(
    st.one_of(
        st.builds(types.MessageEntityBold, ids, ids),
        st.builds(types.MessageEntityTextUrl, ids, ids, texts),
        st.builds(types.MessageEntityMentionName, ids, ids, ids),
        st.builds(types.MessageEntityPre, ids, ids, texts),
        st.builds(types.MessageEntityCustomEmoji, ids, ids, longs),
    ),
    max_size=4,
)
photo_sizes = st.lists(
    st.one_of(
        st.builds(types.PhotoSize, st.sampled_from("smxyw"), ids, ids, ids),
        st.builds(
            types.PhotoSizeProgressive,
            st.sampled_from("smxyw"),
            ids,
            ids,
            st.lists(ids, min_size=1, max_size=3),
        ),
        st.builds(types.PhotoStrippedSize, st.just("i"), st.binary(max_size=8)),
    ),
    max_size=4,
)
photos = st.builds(
    types.Photo, id=longs, access_hash=longs, file_reference=st.binary(max_size=32),
    date=dates, sizes=photo_sizes, dc_id=st.integers(1, 5),
)  # fmt: skip
attributes = st.lists(
    st.one_of(
        st.builds(types.DocumentAttributeFilename, texts),
        st.builds(
            types.DocumentAttributeVideo, st.floats(0, 1e5), ids, ids, round_message=st.booleans()
        ),
        st.builds(types.DocumentAttributeAudio, ids, voice=st.booleans(), title=st.none() | texts),
        st.builds(types.DocumentAttributeImageSize, ids, ids),
        st.builds(types.DocumentAttributeAnimated),
        st.builds(types.DocumentAttributeSticker, texts, st.just(types.InputStickerSetEmpty())),
    ),
    max_size=3,
)
documents = st.builds(
    types.Document, id=longs, access_hash=longs, file_reference=st.binary(max_size=32),
    date=dates, mime_type=texts, size=st.integers(0, 2**40), dc_id=st.integers(1, 5),
    attributes=attributes,
)  # fmt: skip
webpages = st.builds(
    types.WebPage, id=longs, url=texts, display_url=texts, hash=st.integers(0, 2**31),
    title=st.none() | texts, description=st.none() | texts, photo=st.none() | photos,
    document=st.none() | documents,
)  # fmt: skip
medias = st.one_of(
    st.none(),
    st.builds(types.MessageMediaPhoto, photo=photos),
    st.builds(
        types.MessageMediaDocument, document=documents, voice=st.booleans(), round=st.booleans()
    ),
    st.builds(types.MessageMediaWebPage, webpage=webpages),
    st.builds(
        types.MessageMediaGeo,
        st.builds(types.GeoPoint, st.floats(-180, 180), st.floats(-90, 90), longs),
    ),
    st.builds(types.MessageMediaDice, ids, texts),
)
messages = st.builds(
    types.Message,
    id=ids,
    peer_id=peers,
    date=dates,
    message=texts,
    entities=st.none() | entities,
    from_id=st.none() | peers,
    post_author=st.none() | texts,
    views=st.none() | ids,
    forwards=st.none() | ids,
    edit_date=st.none() | dates,
    grouped_id=st.none() | longs,
    pinned=st.none() | st.booleans(),
    media=medias,
    fwd_from=st.none()
    | st.builds(
        types.MessageFwdHeader, date=dates, from_id=st.none() | peers, from_name=st.none() | texts
    ),
    reply_to=st.none() | st.builds(types.MessageReplyHeader, reply_to_msg_id=st.none() | ids),
    replies=st.none() | st.builds(types.MessageReplies, ids, ids),
)
services = st.builds(
    types.MessageService,
    id=ids,
    peer_id=peers,
    date=dates,
    action=st.one_of(
        st.builds(types.MessageActionChatAddUser, st.lists(ids, max_size=3)),
        st.builds(types.MessageActionChatEditTitle, texts),
        st.builds(types.MessageActionChatEditPhoto, photos),
        st.builds(types.MessageActionPinMessage),
        st.builds(types.MessageActionChatJoinedByLink, ids),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(messages, services), st.sampled_from(["acc1", "acc2"]))
def test_any_message_is_json_and_complete(msg: Any, account: str) -> None:
    out, media = parse_message(msg, account)
    # The stdlib encoder, with no default=: orjson would write a datetime itself, so a
    # parser that leaked one would pass through it unseen.
    data = json.loads(json.dumps(out))
    assert CONTRACT_MESSAGE <= set(data)
    assert data["date"] == utc_iso(msg.date)
    assert data["edit_date"] == utc_iso(getattr(msg, "edit_date", None))
    fwd = getattr(msg, "fwd_from", None)
    assert (data["fwd_from"] or {}).get("date") == utc_iso(fwd.date if fwd else None)
    stamps = date_strings(data)
    assert stamps and all(isinstance(s, str) and ISO_UTC.fullmatch(s) for s in stamps), stamps
    assert set(MESSAGE_FIELDS) == set(data)
    descriptors = [d for d in (data["media"], (data["action"] or {}).get("photo")) if d]
    assert len(descriptors) == len(media)
    for desc, m in zip(descriptors, media, strict=True):
        assert set(desc) == CONTRACT_DESCRIPTOR
        assert desc["key"] == m.key and m.account == account and m.msg_id == msg.id
        assert desc["file_name"] == sanitize_file_name(desc["file_name"])


@settings(max_examples=150, deadline=None)
@given(messages, longs, st.binary(max_size=16))
def test_keys_equal_across_accounts(msg: Any, other_hash: int, other_ref: bytes) -> None:
    _, first = parse_message(msg, "acc1")
    # The same file as another account sees it: another access hash and reference.
    for obj in (getattr(msg.media, "photo", None), getattr(msg.media, "document", None)):
        if obj is not None:
            obj.access_hash, obj.file_reference = other_hash, other_ref
    page = getattr(msg.media, "webpage", None)
    for obj in (getattr(page, "photo", None), getattr(page, "document", None)):
        if obj is not None:
            obj.access_hash, obj.file_reference = other_hash, other_ref
    _, second = parse_message(msg, "acc2")
    assert [m.key for m in first] == [m.key for m in second]
    assert all(m.account == "acc2" for m in second)
