"""The takeover: a banned account's chats move to other accounts, paced and beside the API; a
chat none can take is orphaned (kept, shown, tried again after a backoff, at start, when an
account turns ok) until it is taken or deleted; basic groups and private channels move by
the invite link they were subscribed by."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

import pytest

from common.errors import AccountUnusable, NotSubscribed
from common.utils import parse_peer
from model.account import AccountState
from model.joinmap import JoinMap, State
from service.subscription.takeover import Backoff
from tests.fixtures.rabbitmq import Consumer, Rabbit
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import (
    NEWS,
    NEWS_ID,
    TALK_ID,
    Flow,
    ban,
    check,
    joined_by,
    of,
    own,
    post_to,
    replace_subscriber,
    settle,
    texts,
    uid,
)


async def test_a_banned_accounts_chats_move_to_another(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    banned = flow.pool.get(sub["account"])
    flow.rpc.deactivated_ban(uid(banned.name))
    with pytest.raises(AccountUnusable):
        await banned.get_entity(parse_peer("@talk"))  # the account learns it is banned
    assert banned.state == AccountState.BANNED
    async with rabbit.consumer() as consumer:
        await check(flow)
        moved = flow.joinmap.get(NEWS_ID)
        assert moved is not None and moved["state"] == "joined"
        assert moved["account"] != banned.name
        post = await flow.rpc.post_message(NEWS, "after the move")
        await consumer.wait_for_ids([f"{NEWS_ID}:{post.id}:message.new"])
        await settle(flow)
    states = [(m.body["account"], m.body["state"]) for m in of(consumer, "subscription.changed")]
    assert states == [
        (banned.name, "joined"),  # the subscribe, waiting in the durable queue
        (banned.name, "banned_account"),
        (moved["account"], "joined"),
    ]


# --- orphaned chats: no account could take them over ---------------------------------------


def test_the_rejoin_backoff_spaces_tries_and_doubles_up_to_its_cap() -> None:
    now = [100.0]
    backoff = Backoff(30.0, 100.0, clock=lambda: now[0])
    assert backoff.due(1)  # never failed: at once
    waits = []
    for _ in range(4):
        waits.append(backoff.failed(1))
        assert not backoff.due(1)
        now[0] += waits[-1] - 0.01
        assert not backoff.due(1)  # not a moment before its time
        now[0] += 0.01
        assert backoff.due(1)
    assert waits == [30.0, 60.0, 100.0, 100.0]
    assert backoff.due(2)  # per key
    backoff.failed(1)
    backoff.all_due()  # an account became usable: due now, the wait reached kept
    assert backoff.due(1) and backoff.failed(1) == 100.0
    backoff.keep_only([2])
    assert backoff.due(1) and backoff.failed(1) == 30.0  # forgotten: from the start


async def _orphan_news(flow: Flow) -> tuple[str, list[str]]:
    """@news joined by one account, the two others full (channel_limit=1: each is in TALK,
    as in the emulator), then that account banned: nobody can take NEWS over."""
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    others = [tc.name for tc in flow.pool if tc.name != sub["account"]]
    for name in others:
        flow.joinmap.record_join(
            TALK_ID, name, type="megagroup", title="News talk", username="talk"
        )
    await ban(flow, sub["account"])
    await wait_for(lambda: flow.joinmap.orphaned() == [NEWS_ID], what="NEWS orphaned")
    return sub["account"], others


def _said_joined(consumer: Consumer, peer_id: int, accounts: list[str]) -> bool:
    """Whether a subscription.changed says one of `accounts` joined the chat."""
    return any(
        m.body["peer"]["id"] == peer_id
        and m.body["state"] == "joined"
        and m.body["account"] in accounts
        for m in of(consumer, "subscription.changed")
    )


async def test_an_orphaned_chat_is_taken_over_once_an_account_has_room(
    flow: Flow, rabbit: Rabbit
) -> None:
    await replace_subscriber(
        flow, channel_limit=1, check_interval=0.05, rejoin_backoff=0.2, rejoin_backoff_max=1.0
    )
    banned, others = await _orphan_news(flow)
    # GET /api/v1/subscriptions still shows it: nobody in it, its account banned.
    shown = [s for s in flow.joinmap.subscriptions() if s["peer"]["id"] == NEWS_ID]
    assert [(s["account"], s["state"]) for s in shown] == [(banned, "banned_account")]
    missed = await flow.rpc.post_message(NEWS, "while nobody listened")
    async with rabbit.consumer() as consumer:
        for name in others:  # room again (as after a DELETE of TALK)
            flow.joinmap.set_state(TALK_ID, name, State.LEFT)
        await wait_for(lambda: joined_by(flow, NEWS_ID, others), what="NEWS taken over")
        await consumer.wait_for_ids([f"{NEWS_ID}:{missed.id}:message.new"])  # polled
        await consumer.wait_until(lambda c: _said_joined(c, NEWS_ID, others))
    taker = flow.joinmap.get(NEWS_ID)
    assert taker is not None and flow.joinmap.orphaned() == []
    news = flow.rpc.world.chats[NEWS]
    assert flow.rpc.world.is_member(news, uid(taker["account"]))


async def test_an_orphaned_chat_survives_a_restart_and_is_joined_at_start(
    flow: Flow, rabbit: Rabbit, tmp_path: Path
) -> None:
    await replace_subscriber(flow, channel_limit=1, check_interval=0.05)
    _, others = await _orphan_news(flow)
    await flow.subscriber.stop()
    flow.joinmap.close()
    reopened = JoinMap(tmp_path / "joinmap.db")  # the fixture's file, as the next start opens it
    assert reopened.orphaned() == [NEWS_ID]
    async with rabbit.consumer() as consumer:
        # The next start has room (a higher limit here; a new account would do the same).
        # No check interval to wait for: the first check runs at start.
        await replace_subscriber(flow, reopened, check_interval=3600)
        await wait_for(lambda: joined_by(flow, NEWS_ID, others), what="NEWS taken over")
        await consumer.wait_until(lambda c: _said_joined(c, NEWS_ID, others))


async def test_an_orphan_is_tried_at_once_when_a_flood_wait_ends(flow: Flow) -> None:
    # A long backoff: only the accounts' return to ok can bring the next try in time.
    await replace_subscriber(flow, check_interval=0.05, rejoin_backoff=3600)
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    others = [tc.name for tc in flow.pool if tc.name != sub["account"]]
    flow.rpc.flood_wait("channels.joinChannel", 1, times=2)  # each other account meets one
    flow.rpc.reset_counts()
    await ban(flow, sub["account"])
    await wait_for(lambda: flow.joinmap.orphaned() == [NEWS_ID], what="NEWS orphaned")
    await wait_for(lambda: joined_by(flow, NEWS_ID, others), what="NEWS taken over")
    # Two joins met the wait, one took the chat: none while the accounts waited.
    assert flow.rpc.count("channels.joinChannel") == 3


async def test_deleting_an_orphaned_chat_ends_its_takeover(flow: Flow, rabbit: Rabbit) -> None:
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    for tc in flow.pool:  # the other accounts first: none is left to take NEWS over
        if tc.name != sub["account"]:
            await ban(flow, tc.name)
    await ban(flow, sub["account"])
    await check(flow)
    assert flow.joinmap.orphaned() == [NEWS_ID]
    left = await flow.subscriber.unsubscribe(parse_peer("@news"))
    assert (left["account"], left["state"]) == (sub["account"], "left")
    assert flow.joinmap.orphaned() == [] and flow.joinmap.subscriptions() == []
    with pytest.raises(NotSubscribed):
        await flow.subscriber.unsubscribe(parse_peer("@news"))


# --- takeovers of many chats: paced, beside the API, stopped by a flood wait -------------------

FEEDS = 6101  # the first of the public channels `_add_feeds` adds


def _add_feeds(flow: Flow, account: str, n: int) -> list[int]:
    """n public channels (@feed0, ...) `account` is in, as after a subscribe through it;
    returns their marked ids in the join map's order (as `orphaned()` lists them)."""
    from tests.fakedc.world import ChatSpec

    ids = []
    for i in range(n):
        title, username = f"Feed {i}", f"feed{i}"
        flow.rpc.world.add_chat(
            ChatSpec(id=FEEDS + i, kind="broadcast", title=title, username=username)
        )
        peer_id = -(10**12) - (FEEDS + i)
        flow.joinmap.record_join(peer_id, account, type="channel", title=title, username=username)
        ids.append(peer_id)
    return sorted(ids)


def _join_times(flow: Flow) -> list[float]:
    """When each channels.joinChannel is sent from now on (time.monotonic())."""
    times: list[float] = []

    def observe(method: str, error: str | None, seconds: float) -> None:
        if method == "channels.JoinChannel":
            times.append(time.monotonic() - seconds)

    flow.pool.observe_calls(observe)
    return times


async def test_a_banned_accounts_chats_are_said_at_once_and_joined_paced(
    flow: Flow, rabbit: Rabbit
) -> None:
    pace = 0.1
    await replace_subscriber(flow, check_interval=3600, takeover_pace=pace)
    feeds = _add_feeds(flow, "acc1001", 5)
    joins = _join_times(flow)
    await ban(flow, "acc1001")
    async with rabbit.consumer() as consumer:
        await check(flow)
        assert flow.joinmap.orphaned() == []
        await consumer.wait_until(lambda c: len(of(c, "subscription.changed")) == 10)
    assert len(joins) == 5
    gaps = [b - a for a, b in itertools.pairwise(joins)]
    assert min(gaps) >= pace - 0.001, gaps  # a burst: a few ms apart
    said = [(m.body["peer"]["id"], m.body["state"]) for m in of(consumer, "subscription.changed")]
    # Every chat's ban is said before the first join.
    assert sorted(said[:5]) == [(p, "banned_account") for p in feeds]
    assert sorted(said[5:]) == [(p, "joined") for p in feeds]


async def test_the_api_and_the_account_check_are_served_during_a_takeover_batch(
    flow: Flow,
) -> None:
    await replace_subscriber(flow, check_interval=3600, takeover_pace=0.3)
    feeds = _add_feeds(flow, "acc1001", 4)
    await ban(flow, "acc1001")
    await flow.subscriber.check_accounts()  # returns with the batch under way
    batch = flow.subscriber.takeover.batch
    assert batch is not None and not batch.done()
    await wait_for(lambda: len(flow.joinmap.orphaned()) == 3, what="the first chat taken")
    # The batch waits its pace (0.3 s) before the next join: the API is not held up by the
    # three joins still to come, nor is the next account check.
    sub = await flow.subscriber.subscribe(parse_peer("@news"))
    await flow.subscriber.unsubscribe(parse_peer("@news"))
    await flow.subscriber.check_accounts()
    assert sub["state"] == "joined"
    assert len(flow.joinmap.orphaned()) >= 2 and not batch.done()
    async with asyncio.timeout(20):
        await batch
    assert all(joined_by(flow, p, ["acc1002", "acc1003"]) for p in feeds)


async def test_a_flood_wait_stops_the_takeover_batch_and_the_rest_move_when_it_ends(
    flow: Flow, caplog: pytest.LogCaptureFixture
) -> None:
    # A long backoff: only the accounts' return to ok can bring the next try in time.
    await replace_subscriber(flow, check_interval=3600, rejoin_backoff=3600, takeover_pace=0.05)
    feeds = _add_feeds(flow, "acc1001", 4)
    takers = ["acc1002", "acc1003"]
    flow.rpc.flood_wait("channels.joinChannel", 1, times=2)  # each taker meets one
    flow.rpc.reset_counts()
    caplog.set_level(logging.WARNING, logger="service.subscriber")
    await ban(flow, "acc1001")
    await check(flow)
    # The first chat met the wait on both takers; the batch stopped there: the other chats
    # were not tried (none backed off), none is asked of a pool that just said wait.
    assert flow.rpc.count("channels.joinChannel") == 2
    assert flow.joinmap.orphaned() == feeds
    takeover = flow.subscriber.takeover
    assert [p for p in feeds if not takeover.retry_due(p)] == feeds[:1]
    assert "takeovers stopped by a flood wait of 1 s" in caplog.text
    await check(flow)  # a check during the wait sees the takers waiting: nobody is asked
    assert flow.rpc.count("channels.joinChannel") == 2
    waiting = [flow.pool.get(n) for n in takers]
    await wait_for(
        lambda: all(tc.state == AccountState.OK for tc in waiting),
        within=5,
        what="the takers' flood wait over",
    )
    await check(flow)  # the takers are ok again: every chat at once, backoff or not
    assert flow.joinmap.orphaned() == []
    assert all(joined_by(flow, p, takers) for p in feeds)
    assert flow.rpc.count("channels.joinChannel") == 2 + len(feeds)


async def test_stop_ends_a_takeover_batch_at_once(flow: Flow) -> None:
    await replace_subscriber(flow, check_interval=3600, takeover_pace=30)
    _add_feeds(flow, "acc1001", 3)
    await ban(flow, "acc1001")
    await flow.subscriber.check_accounts()
    await wait_for(lambda: len(flow.joinmap.orphaned()) == 2, what="the first chat taken")
    batch = flow.subscriber.takeover.batch
    assert batch is not None and not batch.done()  # 30 s to the next join
    async with asyncio.timeout(2):
        await flow.subscriber.stop()
    assert batch.cancelled()


# --- takeover by invite link: basic groups and private channels -------------------------------

SMALL = 4002  # a basic group no account is in, joined by its invite link
SMALL_ID = -SMALL
SMALL_INVITE = "SmallGroup4002"
SECRET = 2003  # a private channel (no username), joined by its invite link
SECRET_ID = -(10**12) - SECRET
SECRET_INVITE = "SecretNews2003"


def _add_invite_chats(flow: Flow) -> None:
    """SMALL and SECRET, with history; only a non-account member in them: the accounts can
    join them by invite link only, and none of them has met them."""
    from tests.fakedc.world import ChatSpec, MessageSpec

    world = flow.rpc.world
    for chat_id, kind, title, invite in (
        (SMALL, "group", "Small by invite", SMALL_INVITE),
        (SECRET, "broadcast", "Secret news", SECRET_INVITE),
    ):
        world.add_chat(
            ChatSpec(
                id=chat_id, kind=kind, title=title, creator_id=3001, invite=invite,
                members={3001: 0},
            )
        )  # fmt: skip
    world.add_message(MessageSpec(chat=SMALL, from_id=3001, text="small history"))
    for i in range(3):
        world.add_message(MessageSpec(chat=SECRET, text=f"secret history {i}"))


async def _ban_and_silence(flow: Flow, name: str, chats: list[int]) -> None:
    """Bans the account; Telegram then sends it nothing (the emulator would still push to a
    member: it is taken out of the chats, so every event below comes through the taker)."""
    await ban(flow, name)
    for chat_id in chats:
        flow.rpc.world.chats[chat_id].members.pop(uid(name), None)


def _newest_own_id(flow: Flow, account: str, chat_id: int) -> int:
    """The newest message of a basic group in `account`'s own ids."""
    world = flow.rpc.world
    own_ids = [world.own_id(uid(account), s) for s, m in world.common.items() if m.chat == chat_id]
    return int(max(i for i in own_ids if i is not None))


async def test_a_basic_group_and_a_private_channel_move_by_their_invite_links(
    flow: Flow, rabbit: Rabbit
) -> None:
    _add_invite_chats(flow)
    group = await flow.subscriber.subscribe(parse_peer(f"https://t.me/+{SMALL_INVITE}"))
    secret = await flow.subscriber.subscribe(parse_peer(f"t.me/joinchat/{SECRET_INVITE}"))
    assert (group["peer"]["type"], secret["peer"]["type"]) == ("group", "channel")
    assert secret["peer"]["username"] is None and secret["last_message_id"] == 3
    # Kept for a takeover, never answered.
    assert flow.joinmap.invite(SMALL_ID) == SMALL_INVITE
    assert flow.joinmap.invite(SECRET_ID) == SECRET_INVITE
    assert "SmallGroup" not in repr(group) and "SecretNews" not in repr(secret)
    banned = sorted({group["account"], secret["account"]})
    for name in banned:
        await _ban_and_silence(flow, name, [SMALL, SECRET])
    async with rabbit.consumer() as consumer:
        flow.rpc.reset_counts()
        await check(flow)
        # Another account joined each by its link (no account knew them by id).
        assert flow.rpc.count("messages.importChatInvite") == 2
        takers = {}
        for peer_id, chat_id in ((SMALL_ID, SMALL), (SECRET_ID, SECRET)):
            sub = flow.joinmap.get(peer_id)
            assert sub is not None and sub["state"] == "joined"
            assert sub["account"] not in banned
            takers[peer_id] = sub["account"]
            assert flow.rpc.world.is_member(flow.rpc.world.chats[chat_id], uid(sub["account"]))
        assert flow.joinmap.orphaned() == []
        # The taker's cursor of the basic group starts at its own newest id (its "joined by
        # link" message), not at 0 nor at the banned account's ids.
        newest = _newest_own_id(flow, takers[SMALL_ID], SMALL)
        assert flow.joinmap.member_last_message_id(SMALL_ID, takers[SMALL_ID]) == newest
        assert flow.joinmap.last_message_id(SECRET_ID) == 3  # the channel's stays
        post = await post_to(flow, SMALL, "small after the move")
        secret_post = await flow.rpc.post_message(SECRET, "secret after the move")
        await consumer.wait_for_ids([f"{SECRET_ID}:{secret_post.id}:message.new"])
        await consumer.wait_until(lambda c: "small after the move" in texts(c, SMALL_ID))
        # A poll of each finds nothing: no history again, nothing twice.
        assert await flow.subscriber.poll_chat(SMALL_ID) == 0
        assert await flow.subscriber.poll_chat(SECRET_ID) == 0
        await settle(flow)
    assert texts(consumer, SMALL_ID) == ["small after the move"]
    assert texts(consumer, SECRET_ID) == ["secret after the move"]
    assert set(consumer.counts().values()) == {1}
    small_new = [m for m in of(consumer, "message.new") if m.body["peer"]["id"] == SMALL_ID]
    assert small_new[0].body["account"] == takers[SMALL_ID]
    assert small_new[0].body["message"]["id"] == own(flow, takers[SMALL_ID], post)
    for peer_id, sub, start in ((SMALL_ID, group, newest), (SECRET_ID, secret, 3)):
        changed = [m.body for m in of(consumer, "subscription.changed")
                   if m.body["peer"]["id"] == peer_id]  # fmt: skip
        assert [(b["account"], b["state"]) for b in changed] == [
            (sub["account"], "joined"),  # the subscribe, waiting in the durable queue
            (sub["account"], "banned_account"),
            (takers[peer_id], "joined"),
        ]
        assert changed[-1]["subscription"]["last_message_id"] == start
    assert not any(
        "SmallGroup" in repr(m.body) or "SecretNews" in repr(m.body) for m in consumer.messages
    )


@pytest.mark.parametrize(
    ("chat_id", "peer_id", "invite", "dead"),
    [
        (SMALL, SMALL_ID, SMALL_INVITE, "INVITE_HASH_EXPIRED"),
        (SECRET, SECRET_ID, SECRET_INVITE, "INVITE_HASH_INVALID"),
    ],
    ids=["basic-group-expired", "private-channel-revoked"],
)
async def test_a_chat_whose_invite_link_is_dead_stays_orphaned_and_the_log_says_why(
    flow: Flow,
    caplog: pytest.LogCaptureFixture,
    chat_id: int,
    peer_id: int,
    invite: str,
    dead: str,
) -> None:
    await replace_subscriber(flow, check_interval=3600, rejoin_backoff=0.2, rejoin_backoff_max=0.2)
    _add_invite_chats(flow)
    sub = await flow.subscriber.subscribe(parse_peer(f"https://t.me/+{invite}"))
    if dead == "INVITE_HASH_EXPIRED":
        flow.rpc.fail("messages.importChatInvite", 400, dead, times=1000)
    else:  # revoked: Telegram no longer knows the link
        flow.rpc.world.chats[chat_id].invite = "RevokedLink" + str(chat_id)
    await _ban_and_silence(flow, sub["account"], [chat_id])
    flow.rpc.reset_counts()
    caplog.set_level(logging.WARNING, logger="service.subscriber")
    await check(flow)
    assert flow.joinmap.orphaned() == [peer_id]
    assert flow.rpc.count("messages.importChatInvite") == 1  # one account asked, not each
    said = [r.getMessage() for r in caplog.records if "invite link" in r.getMessage()]
    assert len(said) == 1 and str(peer_id) in said[0] and dead in said[0]
    assert "is dead" in said[0] and "subscribed again with a new link" in said[0]
    assert invite not in caplog.text  # the hash stays out of the log
    # The next check comes before the backoff is over: Telegram is not asked again.
    takeover = flow.subscriber.takeover
    await check(flow)
    assert flow.rpc.count("messages.importChatInvite") == 1
    await wait_for(lambda: takeover.retry_due(peer_id), within=5, what="the backoff over")
    await check(flow)
    assert flow.rpc.count("messages.importChatInvite") == 2
    assert flow.joinmap.orphaned() == [peer_id]
    # What the log asks for: a new link, subscribed through the API, ends the orphan.
    flow.rpc.clear_faults()
    flow.rpc.deactivated_ban(uid(sub["account"]))
    flow.rpc.world.chats[chat_id].invite = f"FreshLink{chat_id}"
    again = await flow.subscriber.subscribe(parse_peer(f"https://t.me/+FreshLink{chat_id}"))
    assert again["state"] == "joined" and again["account"] != sub["account"]
    assert flow.joinmap.orphaned() == [] and flow.joinmap.invite(peer_id) == f"FreshLink{chat_id}"
