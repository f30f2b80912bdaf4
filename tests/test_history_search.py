"""Issue 12, dates and search in a chat: GET /api/v1/messages with since/until and GET
/api/v1/messages/search, on the real server against the emulator's demo world.

- A date range paged to the end is exactly the messages dated in it, newest first, each
  once, in full pages but the last: a hypothesis property over random ranges, page sizes
  and starting offset_ids, against a `start.py serve` process (one server for every
  example) whose three accounts reach the emulator in this process over loopback, on a
  megagroup added to the world with irregular dates (runs of equal dates, gaps of a second
  to hours) so that the range's ends fall between, on and inside runs.
- The rest on `threaded_api` (the same Tornado application, pool and accounts, in a thread
  of this process; one server for the module): search by text, by sender (`from`, by
  username and by id), by filter, paged with `next_offset_id` and counted; dates with ids;
  each bad parameter 400 naming it; the demo's printed requests.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from common.const import load_settings
from service.apiclient import ApiClient, ApiResponse
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.world import DEFAULT_DATE, ChatSpec, MessageSpec, World
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.server_process import serving
from tests.fixtures.threaded_api import ThreadedApi

DATED = 2301  # the megagroup the date-range property pages
DATED_NAME = "tgc_dated"
DATED_POSTS = 160
SENDERS = (dw.USER_ALICE, dw.USER_BOB, dw.CROWD_FIRST)


def get(api: ThreadedApi, uri: str) -> ApiResponse:
    return api.run(api.server.get(uri))


def ok(api: ThreadedApi, uri: str) -> Any:
    answer = get(api, uri)
    assert answer.status == 200 and answer.ok, (uri, answer.status, answer.error)
    return answer.data


def refused(api: ThreadedApi, uri: str) -> str | None:
    """The parameter a 400 INVALID_PARAM names."""
    answer = get(api, uri)
    assert (answer.status, answer.code) == (400, "INVALID_PARAM"), (uri, answer.status, answer.error)
    assert answer.error is not None
    return answer.error.get("param")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def add_dated_chat(world: World) -> dict[int, int]:
    """Adds the DATED megagroup (accounts A, B and C, three senders) to the world:
    DATED_POSTS messages whose dates never go back with the id (as Telegram's never do in
    a chat) but repeat and jump. Returns message id → date."""
    rng = random.Random(12)
    dates: dict[int, int] = {}
    when = DEFAULT_DATE + 86_400
    for msg_id in range(1, DATED_POSTS + 1):
        when += rng.choice((0, 0, 0, 1, 2, 59, 3600))
        dates[msg_id] = when
    members = {u: DEFAULT_DATE for u in (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C, *SENDERS)}
    world.add_chat(
        ChatSpec(id=DATED, kind="megagroup", title="Dated", username=DATED_NAME,
                 creator_id=dw.USER_ALICE, members=members)
    )  # fmt: skip
    for msg_id, date in dates.items():
        world.add_message(
            MessageSpec(id=msg_id, chat=DATED, date=date, text=f"dated {msg_id}",
                        from_id=SENDERS[msg_id % len(SENDERS)])
        )  # fmt: skip
    return dates


@pytest.fixture(scope="module")
def dated(threaded_api: ThreadedApi) -> dict[int, int]:
    """The DATED megagroup in the threaded server's world (built in its loop)."""

    async def build() -> dict[int, int]:
        return add_dated_chat(threaded_api.server.rpc.world)

    return threaded_api.run(build())


@pytest.fixture
async def served(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> AsyncIterator[tuple[ApiClient, dict[int, int]]]:
    """A `start.py serve` process with accounts A, B and C on the emulator, whose world has
    the DATED megagroup: (a client of it, DATED's dates)."""
    dates = add_dated_chat(fake_telegram.dispatcher.world)
    for user in (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C):
        telegram_session(user, name=f"acc{user}")
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    async with serving(settings, config):
        url = (settings.run_dir / "tgc.url").read_text().strip()
        async with ApiClient(url, TOKEN, AES_KEY) as api:
            yield api, dates


async def walk_pages(
    api: ApiClient, uri: str, limit: int, first_offset: int | None = None
) -> tuple[list[int], int]:
    """Every page from `uri` (+ limit), following next_offset_id to null: (the ids in
    order, how many pages)."""
    got: list[int] = []
    offset = first_offset
    for pages in range(1, DATED_POSTS + 3):
        page_uri = f"{uri}&limit={limit}" + (f"&offset_id={offset}" if offset else "")
        answer = await api.request("GET", page_uri)
        assert answer.status == 200 and answer.ok, (page_uri, answer.status, answer.error)
        ids = [m["id"] for m in answer.data["messages"]]
        assert len(ids) <= limit
        got += ids
        offset = answer.data["next_offset_id"]
        if offset is None:
            return got, pages
    raise AssertionError(f"paging {uri} never ended")


def walk(
    api: ThreadedApi, uri: str, limit: int, first_offset: int | None = None
) -> tuple[list[int], int]:
    return api.run(walk_pages(api.server.api, uri, limit, first_offset))


# --- date ranges ------------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    # No shrinking: each step pages a range on the server; a failure reports the example
    # as found rather than outlive the test's timeout minimising it.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_a_date_range_paged_to_the_end_is_exactly_the_messages_dated_in_it(
    served: tuple[ApiClient, dict[int, int]], data: st.DataObject
) -> None:
    api, dated = served
    first, last = min(dated.values()), max(dated.values())
    moments = st.one_of(
        st.sampled_from(sorted(set(dated.values()))),  # on a message's date
        st.integers(first - 100, last + 100),
    ).map(float) | st.floats(first - 10, last + 10)  # between whole seconds too
    since = data.draw(st.none() | moments, label="since")
    until = data.draw(st.none() | moments, label="until")
    if since is not None and until is not None and until <= since:
        since, until = until, since + 1  # keep the range non-empty: until > since
    limit = data.draw(st.integers(1, 100), label="limit")
    start = data.draw(st.none() | st.integers(1, DATED_POSTS + 1), label="offset_id")
    uri = f"/api/v1/messages?peer=@{DATED_NAME}"
    uri += f"&since={quote(iso(since))}" if since is not None else ""
    uri += f"&until={quote(iso(until))}" if until is not None else ""

    got, pages = await walk_pages(api, uri, limit, start)

    expected = [
        i
        for i in sorted(dated, reverse=True)
        if (since is None or dated[i] >= since)
        and (until is None or dated[i] < until)
        and (start is None or i < start)
    ]
    assert got == expected
    # Full pages until the one that reaches `since` (or the chat's first message) ends it.
    assert pages <= len(expected) // limit + 1


async def test_search_by_text_sender_and_kind_on_the_server_process(
    served: tuple[ApiClient, dict[int, int]],
) -> None:
    api, dated = served

    async def ids(uri: str) -> tuple[list[int], int]:
        answer = await api.request("GET", uri)
        assert answer.ok, (uri, answer.status, answer.error)
        return [m["id"] for m in answer.data["messages"]], answer.data.get("count", -1)

    assert await ids("/api/v1/messages/search?peer=@tgc_news&q=bold&limit=100") == (
        list(range(150, 0, -10)), 15
    )
    assert await ids("/api/v1/messages/search?peer=@tgc_media&filter=photo") == ([6, 5, 4, 3, 2], 5)
    assert await ids("/api/v1/messages/search?peer=@tgc_chat&from=@alice_w") == ([40], 1)
    await ids(f"/api/v1/messages?peer=@{DATED_NAME}&limit=3")  # meets the senders
    bob = [i for i in sorted(dated, reverse=True) if SENDERS[i % 3] == dw.USER_BOB]
    by_id, count = await ids(f"/api/v1/messages/search?peer=@{DATED_NAME}&from={dw.USER_BOB}&limit=100")
    assert (by_id, count) == (bob, len(bob))


def test_dates_answer_their_messages_dates(threaded_api: ThreadedApi, dated: dict[int, int]) -> None:
    """A single page: every message's `date` is in the range; a date alone is its midnight
    UTC; a "+" the query left unencoded is read back as the offset's sign."""
    ids = sorted(dated)
    since, until = dated[ids[40]], dated[ids[60]]
    data = ok(threaded_api, f"/api/v1/messages?peer=@{DATED_NAME}&since={quote(iso(since))}"
                            f"&until={quote(iso(until))}&limit=100")
    for m in data["messages"]:
        assert since <= datetime.fromisoformat(m["date"]).timestamp() < until
    assert data["next_offset_id"] is None
    day = datetime.fromtimestamp(DEFAULT_DATE + 86_400, UTC).date().isoformat()
    assert ok(threaded_api, f"/api/v1/messages?peer=@{DATED_NAME}&until={day}")["messages"] == []
    plus = iso(until).replace("Z", "+00:00").replace("+", " ")  # what a bare "+" becomes
    spaced = ok(threaded_api, f"/api/v1/messages?peer=@{DATED_NAME}&until={quote(plus)}&limit=100")
    assert spaced["messages"][0]["id"] == max(i for i in ids if dated[i] < until)


def test_bad_dates_are_refused_naming_the_parameter(threaded_api: ThreadedApi) -> None:
    base = "/api/v1/messages?peer=@tgc_news"
    assert refused(threaded_api, f"{base}&since=yesterday") == "since"
    assert refused(threaded_api, f"{base}&until=2024-13-01") == "until"
    assert refused(threaded_api, f"{base}&since=2024-05-02&until=2024-05-01") == "until"
    assert refused(threaded_api, f"{base}&since=2024-05-01&until=2024-05-01") == "until"
    assert refused(threaded_api, f"{base}&ids=1,2&since=2024-05-01") == "since"


def test_dates_combine_with_min_id_and_max_id(threaded_api: ThreadedApi) -> None:
    """News post i is dated DEFAULT_DATE + 60 i: ids and dates bound the same pages."""
    since, until = iso(DEFAULT_DATE + 60 * 20), iso(DEFAULT_DATE + 60 * 120)
    uri = f"/api/v1/messages?peer=@tgc_news&since={since}&until={until}&max_id=100&min_id=30"
    assert walk(threaded_api, uri, 7)[0] == list(range(99, 30, -1))
    far = ok(threaded_api, "/api/v1/messages?peer=@tgc_news&until=2100-01-01&limit=2")
    assert [m["id"] for m in far["messages"]] == [150, 149]  # past 2038: no bound


# --- search in a chat ----------------------------------------------------------------


def test_search_by_text_pages_and_counts(threaded_api: ThreadedApi) -> None:
    first = ok(threaded_api, "/api/v1/messages/search?peer=@tgc_news&q=bold&limit=4")
    assert first["count"] == 15 and [m["id"] for m in first["messages"]] == [150, 140, 130, 120]
    assert first["next_offset_id"] == 120
    walked = walk(threaded_api, "/api/v1/messages/search?peer=@tgc_news&q=Bold%20news", 4)
    assert walked == (list(range(150, 0, -10)), 4)
    none = ok(threaded_api, "/api/v1/messages/search?peer=@tgc_news&q=nowhere")
    assert none == {"messages": [], "next_offset_id": None, "count": 0}


def test_search_by_sender(threaded_api: ThreadedApi, dated: dict[int, int]) -> None:
    alice = ok(threaded_api, "/api/v1/messages/search?peer=@tgc_chat&from=@alice_w")
    assert [m["id"] for m in alice["messages"]] == [40] and alice["count"] == 1
    assert alice["messages"][0]["from_id"] == dw.USER_ALICE
    # By id: the serving account knows Bob from the chat's history it read.
    ok(threaded_api, f"/api/v1/messages?peer=@{DATED_NAME}&limit=10")
    bob, _ = walk(threaded_api, f"/api/v1/messages/search?peer=@{DATED_NAME}&from={dw.USER_BOB}", 25)
    assert bob == [i for i in sorted(dated, reverse=True) if SENDERS[i % 3] == dw.USER_BOB]
    both = ok(threaded_api, f"/api/v1/messages/search?peer=@{DATED_NAME}&from={dw.USER_BOB}"
                            "&q=dated%2010&limit=100")
    prefixed = [i for i in sorted(dated, reverse=True) if str(i).startswith("10")]
    assert [m["id"] for m in both["messages"]] == [i for i in prefixed if i in bob]
    unknown = get(threaded_api, "/api/v1/messages/search?peer=@tgc_chat&from=987654321")
    assert (unknown.status, unknown.code) == (404, "PEER_NOT_FOUND")
    # A channel is no sender: Telegram's FROM_PEER_INVALID, 400 naming `from`.
    assert refused(threaded_api, "/api/v1/messages/search?peer=@tgc_chat&from=@tgc_news") == "from"


def test_search_by_filter(threaded_api: ThreadedApi) -> None:
    def ids(kind: str) -> list[int]:
        data = ok(threaded_api, f"/api/v1/messages/search?peer=@tgc_media&filter={kind}")
        assert data["count"] == len(data["messages"])
        return [m["id"] for m in data["messages"]]

    media = dw.MEDIA_IDS
    assert ids("photo") == [6, 5, 4, 3, 2]
    assert ids("voice") == [media["voice"]]
    assert ids("music") == [media["audio"]]
    assert ids("gif") == [media["animation"]]
    assert ids("url") == [media["webpage"]]
    assert ids("round_video") == [media["round"]]
    assert ids("video") == [media["video"]]
    photos = ok(threaded_api, "/api/v1/messages/search?peer=@tgc_media&filter=photo&limit=2")
    assert photos["count"] == 5 and photos["next_offset_id"] == 5
    assert all(m["media"]["type"] == "photo" for m in photos["messages"])
    pinned = ok(threaded_api, "/api/v1/messages/search?peer=@tgc_news&filter=pinned")
    assert [m["id"] for m in pinned["messages"]] == [150]
    text_and_kind = ok(threaded_api, "/api/v1/messages/search?peer=@tgc_media&filter=photo&q=album")
    assert [m["id"] for m in text_and_kind["messages"]] == [4]


def test_search_refuses_each_bad_parameter_by_name(threaded_api: ThreadedApi) -> None:
    base = "/api/v1/messages/search?peer=@tgc_news"
    assert refused(threaded_api, base) == "q"  # nothing to search by
    assert refused(threaded_api, f"{base}&q=%20%20") == "q"
    assert refused(threaded_api, f"{base}&q={'x' * 129}") == "q"
    assert refused(threaded_api, f"{base}&filter=stickers") == "filter"
    assert refused(threaded_api, f"{base}&from=t.me/%2BAbCdEf") == "from"
    assert refused(threaded_api, f"{base}&q=news&limit=0") == "limit"
    assert refused(threaded_api, f"{base}&q=news&offset_id=-1") == "offset_id"
    assert refused(threaded_api, f"{base}&q=news&since=2024-01-01") == "since"  # unknown here
    assert refused(threaded_api, "/api/v1/messages/search?q=news") == "peer"


def test_the_demos_hints_answer(threaded_api: ThreadedApi) -> None:
    """The two requests `start.py demo` prints for these routes (the demo's world is this
    one): a date range of the news channel, a search in it."""
    news = ok(threaded_api, "/api/v1/messages?peer=@tgc_news&since=2023-11-14T23:00:00Z"
                            "&until=2023-11-15")
    assert [m["id"] for m in news["messages"]] == list(range(106, 86, -1))  # posts 47..106
    assert ok(threaded_api, "/api/v1/messages/search?peer=@tgc_news&q=bold&limit=5")["count"] == 15
