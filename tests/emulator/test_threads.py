"""Comments and reply threads through a stock Telethon client: a channel with a linked
discussion group (the demo world's TALK and TALK_CHAT), messages.getReplies paged by
Telethon's own `iter_messages(reply_to=...)`, messages.getDiscussionMessage, a megagroup's
reply thread, and a post and a comment pushed while the client listens."""

from __future__ import annotations

from typing import Any

import pytest
from telethon import errors, events
from telethon.tl import functions as F
from telethon.tl import types as T

from tests.emulator import test_telethon as stock
from tests.fakedc.demo_world import (
    ACCOUNT_A,
    ACCOUNT_B,
    CHAT,
    TALK,
    TALK_CHAT,
    TALK_COMMENTS,
    TALK_POSTS,
    TALK_THREAD_POST,
    USER_BOB,
)
from tests.fakedc.rpc import TelegramRpc
from tests.fakedc.world import World
from tests.fixtures.wait import wait_for

# The fixtures of test_telethon.py: a stock client (`connect`) on the demo world.
world = stock.world
fakedc_dispatcher = stock.fakedc_dispatcher
rpc = stock.rpc
connect = stock.connect

POST = TALK_THREAD_POST
COMMENTS = TALK_COMMENTS[POST]


async def test_a_post_carries_its_comments_and_iter_messages_reply_to_pages_them(
    connect: Any, rpc: TelegramRpc, world: World
) -> None:
    client = await connect(ACCOUNT_B)  # a member of neither the channel nor its group
    talk = await client.get_entity("open_talk")
    full = await client(F.channels.GetFullChannelRequest(talk))
    assert full.full_chat.linked_chat_id == TALK_CHAT and talk.has_link
    post = await client.get_messages(talk, ids=POST)
    replies = post.replies
    assert replies.comments and replies.channel_id == TALK_CHAT and replies.replies == COMMENTS
    forward = world.forward_of(world.chats[TALK], POST)
    assert forward is not None
    thread = world.threads(world.chats[TALK_CHAT]).thread(forward.id)
    assert replies.max_id == thread[0].id and len(replies.recent_repliers) == 3

    rpc.reset_counts()
    got = [m async for m in client.iter_messages(talk, reply_to=POST)]
    ids = [m.id for m in got]
    assert ids == [m.id for m in thread] and ids == sorted(ids, reverse=True)
    assert len(set(ids)) == COMMENTS
    assert all(m.chat_id == -1_000_000_000_000 - TALK_CHAT for m in got)
    assert all(m.reply_to.reply_to_msg_id == forward.id for m in got if not m.reply_to.reply_to_top_id)
    inside = [m for m in got if m.reply_to.reply_to_top_id]
    assert len(inside) == 2 and all(m.reply_to.reply_to_top_id == forward.id for m in inside)
    assert rpc.count("messages.getReplies") == 1  # 45 fit in one request of 100

    # Small pages: Telethon's own paging (offset_id, offset_date) finds each once.
    rpc.reset_counts()
    paged = [m.id async for m in client.iter_messages(talk, reply_to=POST, limit=None, wait_time=0)]
    assert paged == ids
    few = await client.get_messages(talk, reply_to=POST, limit=7)
    assert [m.id for m in few] == ids[:7] and few.total == COMMENTS
    older = [m.id async for m in client.iter_messages(talk, reply_to=POST, offset_id=ids[9])]
    assert older == ids[10:]
    ranged = [m.id async for m in client.iter_messages(talk, reply_to=POST, min_id=ids[5], max_id=ids[1])]
    assert ranged == ids[2:5]


async def test_discussion_message_and_a_megagroup_thread(connect: Any, world: World) -> None:
    client = await connect(ACCOUNT_A)
    talk = await client.get_entity("open_talk")
    found = await client(F.messages.GetDiscussionMessageRequest(talk, POST))
    (top,) = found.messages
    assert top.peer_id == T.PeerChannel(TALK_CHAT) and top.from_id == T.PeerChannel(TALK)
    assert top.fwd_from.channel_post == POST and top.fwd_from.saved_from_msg_id == POST
    assert top.fwd_from.saved_from_peer == T.PeerChannel(TALK)
    assert top.replies.replies == COMMENTS and not top.replies.comments
    assert found.max_id == top.replies.max_id
    # The same thread asked in the group itself, by the forward's id.
    group = await client.get_entity("open_talk_chat")
    in_group = [m.id async for m in client.iter_messages(group, reply_to=top.id)]
    assert in_group == [m.id async for m in client.iter_messages(talk, reply_to=POST)]
    # A post without comments has an empty thread; one of another channel has none.
    assert await client.get_messages(talk, reply_to=1, limit=10) == []
    with pytest.raises(errors.MsgIdInvalidError):
        await client.get_messages(talk, reply_to=TALK_POSTS + 1)
    news = await client.get_entity("tgc_news")
    with pytest.raises(errors.MsgIdInvalidError):
        await client.get_messages(news, reply_to=10)
    # A plain megagroup: message 7 of the demo chat has one reply (8).
    chat = await client.get_entity("tgc_chat")
    assert [m.id async for m in client.iter_messages(chat, reply_to=7)] == [8]
    (seven,) = await client.get_messages(chat, ids=[7])
    assert seven.replies.replies == 1 and seven.replies.channel_id is None
    assert world.chats[CHAT].messages[8].reply_to == 7


async def test_a_new_post_is_forwarded_and_a_new_comment_lands_in_its_thread(
    connect: Any, rpc: TelegramRpc, world: World
) -> None:
    rpc.add_member(ACCOUNT_A, TALK)
    rpc.add_member(ACCOUNT_A, TALK_CHAT)
    client = await connect(ACCOUNT_A)  # now a member of the channel and of its group
    talk = await client.get_entity("open_talk")
    await client.get_entity("open_talk_chat")
    seen: list[Any] = []
    client.add_event_handler(stock.collect(seen, lambda e: e.message), events.NewMessage())
    await client.get_me()
    await client.catch_up()

    post = await rpc.post_message(TALK, "fresh post")
    comment = await rpc.post_comment(TALK, post.id, "first!", from_id=USER_BOB)
    answer = await rpc.post_comment(TALK, post.id, "re: first", from_id=ACCOUNT_A, reply_to=comment.id)
    await wait_for(lambda: len(seen) >= 4, within=5, what="the post, its forward, two comments")
    forward = world.forward_of(world.chats[TALK], post.id)
    assert forward is not None and comment.reply_to == forward.id
    assert (answer.reply_to, answer.reply_top) == (comment.id, forward.id)
    assert {(m.chat_id, m.id) for m in seen} >= {
        (-1_000_000_000_000 - TALK, post.id),
        (-1_000_000_000_000 - TALK_CHAT, forward.id),
        (-1_000_000_000_000 - TALK_CHAT, comment.id),
    }
    assert [m.id async for m in client.iter_messages(talk, reply_to=post.id)] == [answer.id, comment.id]
    (again,) = await client.get_messages(talk, ids=[post.id])
    assert again.replies.replies == 2 and again.replies.max_id == answer.id


async def test_threads_need_a_channel_and_a_readable_one(connect: Any, rpc: TelegramRpc) -> None:
    client = await connect(ACCOUNT_B)
    talk = await client.get_entity("open_talk")
    rpc.channel_private(TALK)
    with pytest.raises(errors.ChannelPrivateError):
        await client(F.messages.GetRepliesRequest(talk, POST, 0, None, 0, 10, 0, 0, 0))
    me = await client.get_me(input_peer=True)
    with pytest.raises(errors.PeerIdInvalidError):
        await client(F.messages.GetDiscussionMessageRequest(me, 1))


# --- the world's rules on their own (no client) -------------------------------------------


def small_world(linked: bool = True) -> World:
    return World.from_dict(
        {
            "users": [{"id": 1, "first_name": "U"}],
            "chats": [
                {"id": 10, "kind": "broadcast", "title": "C", "username": "chan",
                 **({"linked_chat_id": 20} if linked else {})},
                {"id": 20, "kind": "megagroup", "title": "G", "username": "grp"},
            ],
            "messages": [
                {"chat": 10, "text": "post 1"},
                {"chat": 10, "action": {"type": "channel_create", "title": "C"}},
                {"chat": 20, "comment_to": 1, "from_id": 1, "text": "c1"},
            ]
            if linked
            else [{"chat": 10, "text": "post 1"}],
        }
    )  # fmt: skip


def test_a_file_links_both_sides_and_forwards_each_post_but_service_messages() -> None:
    world = small_world()
    channel, group = world.chats[10], world.chats[20]
    assert group.linked_chat_id == 10 and world.discussion_of(channel) is group
    forward = world.forward_of(channel, 1)
    assert forward is not None and forward.from_chat == 10 and forward.text == "post 1"
    assert forward.fwd is not None and forward.fwd["saved_from_msg_id"] == 1
    assert world.forward_of(channel, 2) is None  # a service message is not forwarded
    (comment,) = world.threads(group).thread(forward.id)
    assert comment.reply_to == forward.id and comment.reply_top is None
    answer = world.add_comment(10, 1, "c2", 1, reply_to=comment.id)
    assert (answer.reply_to, answer.reply_top) == (comment.id, forward.id)
    assert [m.id for m in world.threads(group).thread(forward.id)] == [answer.id, comment.id]


def test_what_the_world_refuses() -> None:
    world = small_world(linked=False)
    with pytest.raises(ValueError, match="no discussion group"):
        world.add_comment(10, 1, "c", 1)
    with pytest.raises(ValueError, match="broadcast channel"):
        world.link_discussion(20, 10)
    world.link_discussion(10, 20)  # post 1 came before the link: it has no forward
    with pytest.raises(ValueError, match="no forward of post 1"):
        world.add_comment(10, 1, "c", 1)
    post = world.add_post(10, "post 2")
    assert world.forward_of(world.chats[10], post.id) is not None
