"""The gap poll: what the pushes missed is read from Telegram and published once, a long
backlog in order, a caught-up chat at the cost of one request, a flood wait ending a round;
and the poll loop ends on stop() whatever it was doing."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from common.errors import FloodWait, NoAccountAvailable
from common.utils import parse_peer
from model.joinmap import JoinMap
from model.pool import TeleClients
from service.subscriber import Subscriber
from tests.fixtures.rabbitmq import Rabbit
from tests.fixtures.wait import wait_for
from tests.service.subscription.flow import NEWS, NEWS_ID, TALK_ID, Flow, of, settle


async def test_stop_ends_the_poll_loop_when_a_wake_meets_the_cancel(tmp_path: Path) -> None:
    """A wake-up and stop()'s cancel in the same loop turn: the poll loop must end. (Python
    3.11's wait_for returned the wake-up's result and swallowed the cancel, bpo-42130: the
    loop went on and stop() never returned.)"""

    class Quiet:
        async def publish_event(self, event: Any) -> None:
            pass

    joinmap = JoinMap(tmp_path / "j.db")
    quiet: Any = Quiet()  # all the publisher the loop needs
    subscriber = Subscriber(
        TeleClients([]), joinmap, quiet, poll_interval=3600, check_interval=3600
    )
    await subscriber.start()
    # The first (empty) poll round is over: the loop waits.
    await wait_for(lambda: subscriber.poller.idle, within=5, what="the poll loop waiting")
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("subscriber-")]
    names = {"subscriber-poll", "subscriber-accounts", "subscriber-flush"}
    assert names <= {t.get_name() for t in tasks}
    subscriber.poll_soon()  # the wake-up completes the loop's wait on the next turn...
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(subscriber.stop())  # ...and the cancel lands in it
    done, _ = await asyncio.wait({stopping}, timeout=5)  # (wait: it doesn't cancel stop())
    assert stopping in done and all(t.done() for t in tasks)
    joinmap.close()


async def test_missed_pushes_are_found_by_the_poll_once(flow: Flow, rabbit: Rabbit) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    async with rabbit.consumer() as consumer:
        flow.rpc.drop_next_posts(NEWS, 3)
        lost = [await flow.rpc.post_message(NEWS, f"lost {i}") for i in range(3)]
        assert await flow.subscriber.poll_chat(NEWS_ID) == 3
        assert await flow.subscriber.poll_chat(NEWS_ID) == 0  # nothing twice
        assert flow.subscriber.poll_found == 3  # what /metrics and /status show
        # the next push follows a pts gap: Telethon may fetch the lost ones again too
        pushed = await flow.rpc.post_message(NEWS, "pushed")
        ids = [f"{NEWS_ID}:{p.id}:message.new" for p in [*lost, pushed]]
        await consumer.wait_for_ids(ids)
        assert await flow.subscriber.poll_chat(NEWS_ID) == 0
        await settle(flow)
    counts = consumer.counts()
    assert [counts[i] for i in ids] == [1, 1, 1, 1]
    assert [m.body["message"]["text"] for m in of(consumer, "message.new")] == [
        "lost 0", "lost 1", "lost 2", "pushed"
    ]  # fmt: skip
    assert flow.joinmap.last_message_id(NEWS_ID) == pushed.id


async def test_the_poll_walks_a_long_backlog_in_order(flow: Flow, rabbit: Rabbit) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    async with rabbit.consumer() as consumer:
        flow.rpc.drop_next_posts(NEWS, 250)
        posts = [await flow.rpc.post_message(NEWS, f"p{i}") for i in range(250)]
        flow.subscriber.poll_soon()  # what the interval or a reconnect does
        ids = [f"{NEWS_ID}:{p.id}:message.new" for p in posts]
        await consumer.wait_for_ids(ids)
        await settle(flow)
    assert [m.message_id for m in of(consumer, "message.new")] == ids


async def test_a_caught_up_poll_costs_one_request(flow: Flow) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    flow.rpc.reset_counts()
    assert await flow.subscriber.poll_chat(NEWS_ID) == 0
    assert flow.rpc.count("messages.getHistory") == 1


async def test_a_flood_wait_ends_the_poll_round_of_the_accounts_that_wait(flow: Flow) -> None:
    await flow.subscriber.subscribe(parse_peer("@news"))
    await flow.subscriber.subscribe(parse_peer("@talk"))
    lanes = flow.subscriber.poller.lanes([NEWS_ID, TALK_ID])
    flow.rpc.flood_wait("messages.getHistory", 30, times=None)
    flow.rpc.reset_counts()
    await flow.subscriber.poller.poll_round([NEWS_ID, TALK_ID], pace=0)
    # Each lane's account met its own wait once (flood waits are per account)...
    assert flow.rpc.count("messages.getHistory") == len(lanes)
    # ...and a waiting account is not asked again: the next round asks nobody.
    await flow.subscriber.poller.poll_round([NEWS_ID, TALK_ID], pace=0)
    assert flow.rpc.count("messages.getHistory") == len(lanes)


# --- the round's lanes: each account polls its own chats at its own pace -----------------


class LaneAccount:
    """An account of `LanePool`: usable, never ready for `_follow`, an empty history."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.usable = True

    def ready_in(self, peer: Any) -> float | None:
        return None

    async def get_history(self, ref: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
        return None, []


class LanePool:
    """The pool as the poller uses it, on a virtual clock per lane: `sleep` moves the
    calling task's clock, each call is recorded with its account and that clock."""

    def __init__(self, names: list[str]) -> None:
        self.accounts = {n: LaneAccount(n) for n in names}
        self.elapsed: dict[asyncio.Task[Any] | None, float] = {}
        self.calls: list[tuple[str | None, float]] = []
        self.flooded: set[str] = set()

    def get(self, name: str) -> LaneAccount:
        if name not in self.accounts:
            raise NoAccountAvailable(f"no account named {name}")
        return self.accounts[name]

    async def sleep(self, seconds: float) -> None:
        task = asyncio.current_task()
        self.elapsed[task] = self.elapsed.get(task, 0.0) + seconds
        await asyncio.sleep(0)  # the other lanes run meanwhile, as they would

    async def run(self, op: Any, peer: Any, *, prefer: str | None = None) -> Any:
        account = self.accounts[prefer] if prefer else next(iter(self.accounts.values()))
        self.calls.append((prefer, self.elapsed.get(asyncio.current_task(), 0.0)))
        if prefer in self.flooded:
            raise FloodWait(30, account.name, "every account able to serve waits 30 s")
        return await op(account), account

    @property
    def round_time(self) -> float:
        return max(self.elapsed.values(), default=0.0)


def channel_id(n: int) -> int:
    return -(10**12) - 5000 - n


async def paced_round(
    tmp_path: Path, accounts: int, chats: int, pace: float, flooded: set[str] | None = None
) -> LanePool:
    """A round over `chats` channels spread evenly over `accounts` accounts."""
    from service.subscription.gappoll import GapPoller
    from service.subscription.state import Shared

    names = [f"acc{i}" for i in range(accounts)]
    pool = LanePool(names)
    pool.flooded = flooded or set()
    joinmap = JoinMap(tmp_path / f"lanes{accounts}.db")
    for n in range(chats):
        joinmap.record_join(channel_id(n), names[n % accounts], type="channel", title=f"c{n}")
    shared = Shared(
        pool,  # type: ignore[arg-type]
        joinmap,
        None,  # type: ignore[arg-type]
        media_queue=None,
        clock=lambda: 0.0,
        recent_size=10,
    )
    intake: Any = None  # empty histories: nothing reaches it
    poller = GapPoller(shared, intake, pace=pace, sleep=pool.sleep)
    await poller.poll_round(sorted(joinmap.joined_peers()), pace=pace)
    joinmap.close()
    return pool


async def test_a_round_on_ten_accounts_takes_a_tenth_of_the_time_on_one(tmp_path: Path) -> None:
    one = await paced_round(tmp_path, accounts=1, chats=500, pace=0.2)
    ten = await paced_round(tmp_path, accounts=10, chats=500, pace=0.2)
    assert len(one.calls) == len(ten.calls) == 500  # every chat, once
    assert one.round_time == pytest.approx(499 * 0.2)
    assert ten.round_time == pytest.approx(49 * 0.2)  # 50 chats per lane
    # Each chat read as the account in it, each account's reads `pace` apart in its lane.
    assert {prefer for prefer, _ in ten.calls} == {f"acc{i}" for i in range(10)}
    for account in (f"acc{i}" for i in range(10)):
        times = [t for prefer, t in ten.calls if prefer == account]
        assert len(times) == 50
        assert all(b - a == pytest.approx(0.2) for a, b in itertools.pairwise(times))


async def test_a_chat_with_several_accounts_goes_to_the_least_loaded_lane(tmp_path: Path) -> None:
    from service.subscription.gappoll import GapPoller
    from service.subscription.state import Shared

    pool = LanePool(["a", "b"])
    joinmap = JoinMap(tmp_path / "shared.db")
    for n in range(6):
        for account in ("a", "b"):
            joinmap.record_join(channel_id(n), account, type="channel", title=f"c{n}")
    joinmap.record_join(channel_id(9), "gone", type="channel", title="orphan-ish")
    shared = Shared(
        pool,
        joinmap,
        None,
        media_queue=None,
        clock=lambda: 0.0,
        recent_size=10,  # type: ignore[arg-type]
    )
    poller = GapPoller(shared, None, pace=0.1, sleep=pool.sleep)  # type: ignore[arg-type]
    lanes = poller.lanes(sorted(joinmap.joined_peers()))
    assert sorted(map(len, (lanes["a"], lanes["b"]))) == [3, 3]
    assert lanes[None] == [channel_id(9)]  # its one account is not in the pool: any account
    joinmap.close()


async def test_a_flood_wait_ends_only_its_accounts_lane(tmp_path: Path) -> None:
    pool = await paced_round(tmp_path, accounts=2, chats=10, pace=0.2, flooded={"acc0"})
    asked = [prefer for prefer, _ in pool.calls]
    assert asked.count("acc0") == 1  # its first chat met the wait: the rest of its lane waits
    assert asked.count("acc1") == 5  # the other account's lane went on
