"""What an account missed: updates.getDifference and updates.getChannelDifference over a
World, as Telegram keeps it (core.telegram.org/api/updates, "Recovering gaps").

Rules reproduced (each tested in tests/emulator/test_rpc.py):
- Account (`account_difference`): the events of the account's common box (basic groups,
  private chats) after `pts`: each new message still there in `new_messages`; each
  message edited since (and not new in the same difference, nor deleted since) once in
  `other_updates` as updateEditMessage (as it is now, the pts of its last edit); each
  deletion as updateDeleteMessages (the account's own id). Each joined channel that
  changed since `date` is named by updateChannelTooLong (its events are the channel's
  difference's). Nothing after `pts` and no channel changed: differenceEmpty.
- Channel (`channel_difference`): pts ≤ 0 is PERSISTENT_TIMESTAMP_EMPTY, a pts ahead of
  the channel's PERSISTENT_TIMESTAMP_INVALID; nothing after it: channelDifferenceEmpty;
  more events than `limit`, or a pts the channel's log doesn't reach back to:
  channelDifferenceTooLong (its latest `limit` messages, the dialog with the channel's
  pts). Else new messages still there, one updateEditChannelMessage per message edited
  (as above), and each deletion (updateDeleteChannelMessages, pts_count = ids), final.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telethon.tl import types

from tests.fakedc import render
from tests.fakedc.api import RpcError
from tests.fakedc.world import ChannelEvent, ChatSpec, MessageSpec, World

DIFF_TIMEOUT = 30  # seconds a client should wait before asking a channel again


@dataclass(frozen=True)
class Viewer:
    """The account asking, and how the rpc renders things for it."""

    id: int
    # (messages) -> (users, chats) they mention, as this account sees them.
    entities: Callable[[list[MessageSpec]], tuple[list[Any], list[Any]]]
    # A chat as this account sees it (Channel, ChannelForbidden, Chat).
    chat: Callable[[ChatSpec], Any]


def account_difference(
    world: World, viewer: Viewer, pts: int, stale: list[ChatSpec], now: int
) -> Any:
    """updates.getDifference from `pts`; `stale` are the joined channels changed since the
    date asked (the caller knows which the account may read)."""
    top = world.account_pts.get(viewer.id, 1)
    too_long = [types.UpdateChannelTooLong(channel_id=c.id, pts=c.pts) for c in stale]
    if pts >= top and not too_long:
        return types.updates.DifferenceEmpty(date=now, seq=0)
    events = [e for e in world.account_log.get(viewer.id, []) if e[0] > pts]
    new_ids = list(dict.fromkeys(i for _, i, kind in events if kind == "new"))
    new_msgs = [world.seen_by(world.common[i], viewer.id) for i in new_ids if i in world.common]
    edits = _last_edits((p, i) for p, i, kind in events if kind == "edit")
    edited = {
        p: world.seen_by(world.common[i], viewer.id)
        for p, i in edits.items()
        if i not in new_ids and i in world.common
    }
    other: list[Any] = [
        types.UpdateEditMessage(message=render.message(world, m, viewer.id), pts=p, pts_count=1)
        for p, m in edited.items()
    ]
    other += [
        types.UpdateDeleteMessages(messages=[own], pts=p, pts_count=1)
        for p, i, kind in events
        if kind == "delete" and (own := world.own_id(viewer.id, i)) is not None
    ]
    other.sort(key=lambda u: u.pts)
    users, chats = viewer.entities(new_msgs + list(edited.values()))
    _add_chats(chats, [viewer.chat(c) for c in stale])
    state = types.updates.State(pts=top, qts=0, date=now, seq=0, unread_count=0)
    return types.updates.Difference(
        new_messages=[render.message(world, m, viewer.id) for m in new_msgs],
        new_encrypted_messages=[],
        other_updates=[*other, *too_long],
        chats=chats,
        users=users,
        state=state,
    )


def channel_difference(world: World, chat: ChatSpec, viewer: Viewer, pts: int, limit: int) -> Any:
    """updates.getChannelDifference of `chat` from `pts` (at most `limit` events)."""
    if pts <= 0:
        raise RpcError(400, "PERSISTENT_TIMESTAMP_EMPTY")
    if pts > chat.pts:
        raise RpcError(400, "PERSISTENT_TIMESTAMP_INVALID")
    events = world.events_since(chat, pts)
    if events == []:
        return types.updates.ChannelDifferenceEmpty(pts=chat.pts, final=True, timeout=DIFF_TIMEOUT)
    limit = max(1, min(limit, 100_000))
    if events is None or len(events) > limit:
        return _too_long(world, chat, viewer, limit)
    new_ids = [i for e in events if e.kind == "new" for i in e.ids]
    new_msgs = [chat.messages[i] for i in new_ids if i in chat.messages]
    edits = _last_edits((e.pts, e.ids[0]) for e in events if e.kind == "edit")
    edited = {
        p: chat.messages[i] for p, i in edits.items() if i not in new_ids and i in chat.messages
    }
    other: list[Any] = [
        types.UpdateEditChannelMessage(
            message=render.message(world, m, viewer.id), pts=p, pts_count=1
        )
        for p, m in edited.items()
    ]
    other += [_deleted(chat, e) for e in events if e.kind == "delete"]
    other.sort(key=lambda u: u.pts)
    users, chats = viewer.entities(new_msgs + list(edited.values()))
    _add_chats(chats, [viewer.chat(chat)])
    return types.updates.ChannelDifference(
        pts=chat.pts,
        new_messages=[render.message(world, m, viewer.id) for m in new_msgs],
        other_updates=other,
        chats=chats,
        users=users,
        final=True,
        timeout=DIFF_TIMEOUT,
    )


def _last_edits(edits: Any) -> dict[int, int]:
    """{pts of a message's last edit: message id}, from (pts, id) in pts order."""
    last: dict[int, int] = {}
    for p, msg_id in edits:
        last[msg_id] = p
    return {p: msg_id for msg_id, p in last.items()}


def _deleted(chat: ChatSpec, event: ChannelEvent) -> Any:
    return types.UpdateDeleteChannelMessages(
        channel_id=chat.id, messages=list(event.ids), pts=event.pts, pts_count=event.pts_count
    )


def _add_chats(chats: list[Any], more: list[Any]) -> None:
    for chat in more:
        if not any(c.id == chat.id for c in chats):
            chats.append(chat)


def _too_long(world: World, chat: ChatSpec, viewer: Viewer, limit: int) -> Any:
    latest = world.newest_first(chat)[:limit]
    top = latest[0].id if latest else 0
    users, chats = viewer.entities(latest)
    _add_chats(chats, [viewer.chat(chat)])
    dialog = types.Dialog(
        peer=types.PeerChannel(chat.id),
        top_message=top,
        read_inbox_max_id=top,
        read_outbox_max_id=top,
        unread_count=0,
        unread_mentions_count=0,
        unread_reactions_count=0,
        unread_poll_votes_count=0,
        notify_settings=types.PeerNotifySettings(),
        pts=chat.pts,
    )
    return types.updates.ChannelDifferenceTooLong(
        dialog=dialog,
        messages=[render.message(world, m, viewer.id) for m in latest],
        chats=chats,
        users=users,
        final=True,
        timeout=DIFF_TIMEOUT,
    )
