"""A ready world for the demo and the tests: accounts, users, a bot, channels, megagroups,
a basic group, and messages of every kind (text with entities, replies, forwards, albums,
views, edits, service messages, photos on DC 1 and DC 2, every document kind, a webpage
preview with a photo, a 20 MB video).

    world = demo_world()            # a fresh World (tests mutate it freely)
    data = demo_dict()              # the same as plain JSON-able data

    python -m tests.fakedc.demo_world > world.json   # a starting point for your own world

The ids below are the names tests use. Phones are digits only (Telethon strips the '+').
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.fakedc.world import DEFAULT_DATE, World

# Accounts (users with a phone; ACCOUNT_2FA has a 2FA password).
ACCOUNT_A = 1001
ACCOUNT_B = 1002
ACCOUNT_C = 1003
ACCOUNT_2FA = 1004
ACCOUNTS = (ACCOUNT_A, ACCOUNT_B, ACCOUNT_C, ACCOUNT_2FA)
PASSWORD = "correct horse battery staple"
# Other users.
USER_ALICE = 1101
USER_BOB = 1102
BOT = 1201
CROWD_FIRST = 1300  # 260 plain members of the big megagroup: 1300..1559
CROWD_SIZE = 260

# Chats.
NEWS = 2001  # public broadcast, 150 text posts (ids 1..150) on every rule of getHistory
MEDIA = 2002  # public broadcast, every media kind
SECRET = 2003  # private broadcast (no username); only ACCOUNT_A is a member
REQUESTS = 2004  # public broadcast with join requests (INVITE_REQUEST_SENT)
CHAT = 2101  # public megagroup with the crowd (participants paging)
PRIVATE_GROUP = 2102  # private megagroup, ACCOUNT_A and ACCOUNT_B are members
SMALL = 2201  # basic group of ACCOUNT_A, ACCOUNT_B, USER_ALICE
TALK = 2005  # public broadcast with a discussion group (@open_talk): posts with comments
TALK_CHAT = 2103  # TALK's discussion megagroup (public, @open_talk_chat; no account in it)

# Invite link hashes (t.me/+HASH).
INVITE_SECRET = "SeCrEtInViTe01"
INVITE_PRIVATE_GROUP = "HiDdEnGrOuP002"
INVITE_REQUESTS = "AsKtOjOiN00003"
INVITE_SMALL = "SmAlLgRoUp0004"

# Files.
PHOTO_DC1 = 5001
PHOTO_DC2 = 5002
ALBUM_PHOTOS = (5011, 5012, 5013)
WEB_PHOTO = 5021
AVATAR = 5031
VIDEO_20MB = 6001
AUDIO = 6002
VOICE = 6003
FILE_PDF = 6004
STICKER = 6005
ANIMATION = 6006
ROUND = 6007
BIG_FILE_DC2 = 6008  # 3 MB file on DC 2 (cross-DC download)
WEBPAGE = 7001
ALBUM_GROUP = 9_000_000_001

VIDEO_SIZE = 20 * 1024 * 1024 + 12_345  # not a multiple of any part size: a short last part
NEWS_POSTS = 150
# TALK: post id → how many comments it has (posts 1..TALK_POSTS; the others have none).
TALK_POSTS = 5
TALK_COMMENTS = {2: 45, 4: 3}
TALK_THREAD_POST = 2  # its comment 10 has 2 answers inside the thread (among the 45)

# Message ids in MEDIA, in the order they are added.
ALBUM_IDS = (4, 5, 6)
MEDIA_IDS: dict[str, Any] = {
    "photo_dc1": 2,
    "photo_dc2": 3,
    "album": ALBUM_IDS,
    "video": 7,
    "audio": 8,
    "voice": 9,
    "file": 10,
    "sticker": 11,
    "animation": 12,
    "round": 13,
    "webpage": 14,
    "file_dc2": 15,
}


def _users() -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = [
        {"id": ACCOUNT_A, "first_name": "Ann", "last_name": "Able", "username": "ann_able",
         "phone": "15550001001"},
        {"id": ACCOUNT_B, "first_name": "Ben", "last_name": "Baker", "phone": "15550001002"},
        {"id": ACCOUNT_C, "first_name": "Cat", "phone": "15550001003"},
        {"id": ACCOUNT_2FA, "first_name": "Dan", "phone": "15550001004",
         "password": PASSWORD, "hint": "xkcd"},
        {"id": USER_ALICE, "first_name": "Alice", "last_name": "Liddell", "username": "alice_w",
         "about": "down the rabbit hole", "photo": AVATAR, "verified": True},
        {"id": USER_BOB, "first_name": "Bob", "username": "bob_builder"},
        {"id": BOT, "first_name": "Helper Bot", "username": "helper_bot", "bot": True,
         "about": "I help."},
    ]
    users += [
        {"id": CROWD_FIRST + i, "first_name": f"Member{i:03d}", "username": f"member_{i:03d}"}
        for i in range(CROWD_SIZE)
    ]
    return users


def _photos() -> list[dict[str, Any]]:
    return [
        {"id": PHOTO_DC1, "dc_id": 1},
        {"id": PHOTO_DC2, "dc_id": 2},
        *({"id": p, "dc_id": 1} for p in ALBUM_PHOTOS),
        {"id": WEB_PHOTO, "dc_id": 1,
         "sizes": [{"type": "m", "w": 320, "h": 180, "size": 15_000},
                   {"type": "x", "w": 800, "h": 450, "size": 70_001}]},
        {"id": AVATAR, "dc_id": 1,
         "sizes": [{"type": "a", "w": 160, "h": 160, "size": 8_000},
                   {"type": "c", "w": 640, "h": 640, "size": 60_000}]},
    ]


def _documents() -> list[dict[str, Any]]:
    return [
        {"id": VIDEO_20MB, "kind": "video", "size": VIDEO_SIZE, "duration": 95, "w": 1920,
         "h": 1080, "file_name": "clip.mp4", "thumb": True},
        {"id": AUDIO, "kind": "audio", "size": 4_000_000, "duration": 241, "title": "Song",
         "performer": "Band", "file_name": "song.mp3"},
        {"id": VOICE, "kind": "voice", "size": 30_000, "duration": 7},
        {"id": FILE_PDF, "kind": "file", "size": 250_000, "file_name": "report.pdf"},
        {"id": STICKER, "kind": "sticker", "size": 25_000, "alt": "😀"},
        {"id": ANIMATION, "kind": "animation", "size": 600_000, "duration": 3, "w": 480,
         "h": 270, "file_name": "fun.mp4"},
        {"id": ROUND, "kind": "round", "size": 800_000, "duration": 10, "w": 384, "h": 384},
        {"id": BIG_FILE_DC2, "kind": "file", "size": 3 * 1024 * 1024 + 777, "dc_id": 2,
         "mime_type": "application/zip", "file_name": "archive.zip"},
    ]


def _chats() -> list[dict[str, Any]]:
    all_accounts = {str(a): DEFAULT_DATE for a in (ACCOUNT_A, ACCOUNT_B, ACCOUNT_C)}
    crowd = {str(CROWD_FIRST + i): DEFAULT_DATE + i for i in range(CROWD_SIZE)}
    return [
        {"id": NEWS, "kind": "broadcast", "title": "TGC News", "username": "tgc_news",
         "about": "News of the emulator", "creator_id": USER_ALICE, "admins": [USER_ALICE],
         "members": {**all_accounts, str(USER_ALICE): DEFAULT_DATE}, "extra_participants": 5000,
         "verified": True, "signatures": True},
        {"id": MEDIA, "kind": "broadcast", "title": "TGC Media", "username": "tgc_media",
         "creator_id": USER_ALICE, "members": {str(ACCOUNT_A): DEFAULT_DATE,
                                               str(USER_ALICE): DEFAULT_DATE},
         "photo": PHOTO_DC1},
        {"id": SECRET, "kind": "broadcast", "title": "Secret Channel", "creator_id": USER_BOB,
         "invite": INVITE_SECRET,
         "members": {str(ACCOUNT_A): DEFAULT_DATE, str(USER_BOB): DEFAULT_DATE}},
        {"id": REQUESTS, "kind": "broadcast", "title": "Ask To Join", "username": "tgc_ask",
         "join_request": True, "creator_id": USER_BOB, "invite": INVITE_REQUESTS,
         "members": {str(USER_BOB): DEFAULT_DATE}},
        {"id": CHAT, "kind": "megagroup", "title": "TGC Chat", "username": "tgc_chat",
         "creator_id": USER_ALICE, "admins": [USER_BOB],
         "members": {**crowd, str(USER_ALICE): DEFAULT_DATE - 10, str(USER_BOB): DEFAULT_DATE - 5,
                     str(BOT): DEFAULT_DATE - 1, str(ACCOUNT_A): DEFAULT_DATE + 1000},
         "linked_chat_id": None},
        {"id": PRIVATE_GROUP, "kind": "megagroup", "title": "Hidden Group",
         "creator_id": ACCOUNT_A, "invite": INVITE_PRIVATE_GROUP,
         "members": {str(ACCOUNT_A): DEFAULT_DATE, str(ACCOUNT_B): DEFAULT_DATE}},
        {"id": TALK, "kind": "broadcast", "title": "Open Talk", "username": "open_talk",
         "creator_id": USER_ALICE, "linked_chat_id": TALK_CHAT,
         "members": {str(USER_ALICE): DEFAULT_DATE}},
        {"id": TALK_CHAT, "kind": "megagroup", "title": "Open Talk Chat",
         "username": "open_talk_chat", "creator_id": USER_ALICE, "linked_chat_id": TALK,
         "members": {str(USER_ALICE): DEFAULT_DATE, str(USER_BOB): DEFAULT_DATE}},
        {"id": SMALL, "kind": "group", "title": "Small Group", "creator_id": ACCOUNT_A,
         "invite": INVITE_SMALL,
         "members": {str(ACCOUNT_A): DEFAULT_DATE, str(ACCOUNT_B): DEFAULT_DATE,
                     str(USER_ALICE): DEFAULT_DATE}},
    ]


def _news_messages() -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [
        {"chat": NEWS, "id": 1, "action": {"type": "channel_create", "title": "TGC News"}},
    ]
    for i in range(2, NEWS_POSTS + 1):
        m: dict[str, Any] = {"chat": NEWS, "id": i, "date": DEFAULT_DATE + 60 * i,
                             "text": f"News post {i}", "views": 100 + i, "forwards": i % 7,
                             "post_author": "Alice"}
        if i % 10 == 0:
            m["text"] = f"Bold news {i} https://example.com/{i}"
            m["entities"] = [
                {"type": "bold", "offset": 0, "length": 4},
                {"type": "url", "offset": len(f"Bold news {i} "),
                 "length": len(f"https://example.com/{i}")},
                {"type": "text_url", "offset": 5, "length": 4, "url": "https://t.me/tgc_news"},
            ]
        if i % 15 == 0:
            m["reply_to"] = i - 1
        if i % 25 == 0:
            m["fwd"] = {"from_channel": MEDIA, "channel_post": 2, "date": DEFAULT_DATE}
        if i % 33 == 0:
            m["fwd"] = {"from_name": "Hidden Sender", "date": DEFAULT_DATE}
        if i % 20 == 0:
            m["edit_date"] = DEFAULT_DATE + 60 * i + 30
        msgs.append(m)
    msgs[-1]["pinned"] = True
    return msgs


def _media_messages() -> list[dict[str, Any]]:
    ids = MEDIA_IDS
    base = {"chat": MEDIA, "views": 10, "forwards": 1}
    msgs: list[dict[str, Any]] = [
        {"chat": MEDIA, "id": 1, "action": {"type": "channel_create", "title": "TGC Media"}},
        {**base, "id": ids["photo_dc1"], "text": "a photo", "media": {"photo": PHOTO_DC1}},
        {**base, "id": ids["photo_dc2"], "text": "a photo on dc 2", "media": {"photo": PHOTO_DC2}},
    ]
    for n, (mid, pid) in enumerate(zip(ALBUM_IDS, ALBUM_PHOTOS, strict=True)):
        msgs.append({**base, "id": mid, "text": "album" if n == 0 else "",
                     "media": {"photo": pid}, "grouped_id": ALBUM_GROUP})
    for key, doc in (("video", VIDEO_20MB), ("audio", AUDIO), ("voice", VOICE),
                     ("file", FILE_PDF), ("sticker", STICKER), ("animation", ANIMATION),
                     ("round", ROUND)):
        msgs.append({**base, "id": ids[key], "text": key, "media": {"document": doc}})
    msgs.append({**base, "id": ids["webpage"], "text": "see https://example.com/page",
                 "entities": [{"type": "url", "offset": 4, "length": 24}],
                 "media": {"webpage": WEBPAGE}})
    msgs.append({**base, "id": ids["file_dc2"], "text": "zip on dc 2",
                 "media": {"document": BIG_FILE_DC2}})
    return msgs


def _group_messages() -> list[dict[str, Any]]:
    chat_msgs: list[dict[str, Any]] = [
        {"chat": CHAT, "id": 1, "action": {"type": "chat_create", "title": "TGC Chat",
                                           "users": [USER_ALICE]}},
        {"chat": CHAT, "id": 2, "action": {"type": "add_user", "users": [ACCOUNT_A]}},
    ]
    for i in range(3, 40):
        sender = CROWD_FIRST + (i % CROWD_SIZE)
        chat_msgs.append({"chat": CHAT, "id": i, "from_id": sender, "date": DEFAULT_DATE + i,
                          "text": f"hello {i}", "reply_to": i - 1 if i % 4 == 0 else None})
    chat_msgs.append({"chat": CHAT, "id": 40, "from_id": USER_ALICE, "text": "@bob_builder hi",
                      "entities": [{"type": "mention", "offset": 0, "length": 12},
                                   {"type": "mention_name", "offset": 13, "length": 2,
                                    "user_id": USER_BOB}]})
    chat_msgs.append({"chat": PRIVATE_GROUP, "id": 1, "from_id": ACCOUNT_A, "text": "psst"})
    chat_msgs.append({"chat": SECRET, "id": 1, "text": "secret post", "views": 3})
    chat_msgs.append({"chat": REQUESTS, "id": 1, "text": "members only", "views": 1})
    small = [
        {"chat": SMALL, "action": {"type": "chat_create", "title": "Small Group",
                                   "users": [ACCOUNT_B, USER_ALICE]}, "from_id": ACCOUNT_A},
        {"chat": SMALL, "from_id": ACCOUNT_A, "text": "hi all", "date": DEFAULT_DATE + 5},
        {"chat": SMALL, "from_id": USER_ALICE, "text": "hello Ann", "date": DEFAULT_DATE + 6,
         "reply_to": None},
        {"to_user": ACCOUNT_A, "from_id": USER_ALICE, "text": "a private hello",
         "date": DEFAULT_DATE + 7},
    ]
    return chat_msgs + small


def _talk_messages() -> list[dict[str, Any]]:
    """TALK's posts (each forwarded to TALK_CHAT by the world) and their comments: in
    TALK_THREAD_POST's thread, two answers to its 10th comment sit inside the thread."""
    msgs: list[dict[str, Any]] = []
    for post in range(1, TALK_POSTS + 1):
        date = DEFAULT_DATE + 3600 * post
        msgs.append({"chat": TALK, "id": post, "date": date, "text": f"Talk post {post}",
                     "views": 50 + post, "forwards": 0})
        commenters = (USER_ALICE, USER_BOB, *(CROWD_FIRST + i for i in range(5)))
        for n in range(1, TALK_COMMENTS.get(post, 0) + 1):
            comment: dict[str, Any] = {"chat": TALK_CHAT, "comment_to": post,
                                       "from_id": commenters[n % len(commenters)],
                                       "date": date + 60 * n, "text": f"comment {n} on {post}"}
            if post == TALK_THREAD_POST and n in (20, 30):
                comment["reply_to"] = _talk_comment_id(post, 10)
            msgs.append(comment)
    return msgs


def _talk_comment_id(post: int, n: int) -> int:
    """The id in TALK_CHAT of comment n on a post: the group numbers the forwards and the
    comments in the order _talk_messages adds them."""
    before = sum(1 + TALK_COMMENTS.get(p, 0) for p in range(1, post))
    return before + 1 + n


def demo_dict() -> dict[str, Any]:
    return {
        "users": _users(),
        "photos": _photos(),
        "documents": _documents(),
        "webpages": [{"id": WEBPAGE, "url": "https://example.com/page", "site_name": "Example",
                      "title": "A page", "description": "with a photo", "photo": WEB_PHOTO}],
        "chats": _chats(),
        "messages": _news_messages() + _media_messages() + _group_messages()
        + _talk_messages(),
    }


def demo_world() -> World:
    return World.from_dict(demo_dict())


if __name__ == "__main__":
    json.dump(demo_dict(), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
