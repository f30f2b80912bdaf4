"""service/metrics.py: the Throughput ring on a fake clock, the collector on fakes, and every
family of GET /metrics after real activity (emulator, pool, processor, broker)."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from model.joinmap import JoinMap
from service.events import make_event
from service.metrics import (
    FleetCollector,
    ServiceMetrics,
    SubscriberCollector,
    Throughput,
    account_states,
    observable_subscriber,
    printable,
)
from tests.fixtures.handler_app import serving_api
from tests.fixtures.ops import OpsStack
from tests.fixtures.pools import DownloadingPool, FakePool, reloaded_fleet
from tests.fixtures.wait import wait_for

# --- the minute ring ------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_throughput_puts_growth_in_the_minute_it_was_seen() -> None:
    clock, total = Clock(60 * 30_000_000), {"n": 0}
    ring = Throughput({"requests": lambda: total["n"]}, minutes=3, clock=clock)
    total["n"] = 5
    clock.now += 10
    ring.sample()
    clock.now += 60  # the next minute
    total["n"] = 12
    rows = ring.rows()
    assert [counts["requests"] for _, counts in rows] == [7, 5, 0]
    assert rows[0][0] == int(clock.now // 60) * 60  # newest first


def test_throughput_shows_quiet_minutes_as_zero_and_forgets_old_ones() -> None:
    clock, total = Clock(60 * 30_000_000), {"n": 0}
    ring = Throughput({"x": lambda: total["n"]}, minutes=3, clock=clock)
    total["n"] = 4
    ring.sample()
    clock.now += 5 * 60
    assert [c["x"] for _, c in ring.rows()] == [0, 0, 0]


def test_throughput_takes_a_reset_total_as_a_new_start() -> None:
    clock, total = Clock(60 * 30_000_000), {"n": 10}
    ring = Throughput({"x": lambda: total["n"]}, clock=clock)
    total["n"] = 3  # a new processor counts from 0 again
    ring.sample()
    total["n"] = 5
    assert ring.rows()[0][1]["x"] == 2


def test_maybe_sample_runs_at_most_once_a_second() -> None:
    clock, total = Clock(60 * 30_000_000 + 1), {"n": 0}
    ring = Throughput({"x": lambda: total["n"]}, clock=clock)
    total["n"] = 1
    ring.maybe_sample()  # within the second of the construction: skipped
    assert ring._ring == type(ring._ring)(maxlen=ring.minutes)
    clock.now += 1
    ring.maybe_sample()
    assert ring._ring[-1][1]["x"] == 1


def test_account_states_counts_every_state() -> None:
    states = account_states([{"state": "ok"}, {"state": "ok"}, {"state": "banned"}])
    assert states == {"ok": 2, "flood_wait": 0, "banned": 1, "unauthorized": 0, "disconnected": 0}


# --- the collector on fakes -----------------------------------------------------------------


def families(registry: CollectorRegistry) -> dict[str, Any]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    for s in fams[family].samples:
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no sample {family} {labels}")


def test_service_metrics_observe_the_pool_and_read_its_states() -> None:
    registry, pool = CollectorRegistry(), FakePool(["ok", "flood_wait", "ok"])
    metrics = ServiceMetrics(registry, pool=pool)
    assert pool.observer == metrics.telegram.observe
    pool.observer("messages.GetHistory", None, 0.02)
    pool.observer("messages.GetHistory", "FLOOD_WAIT", 0.01)
    pool.observer("contacts.ResolveUsername", "USERNAME_NOT_OCCUPIED", 0.03)
    fams = families(registry)
    assert value(fams, "tgc_accounts", state="ok") == 2
    assert value(fams, "tgc_accounts", state="flood_wait") == 1
    assert value(fams, "tgc_accounts", state="banned") == 0
    calls = "tgc_telegram_calls_total"
    assert value(fams, "tgc_telegram_calls", calls, method="messages.GetHistory", error="") == 1
    assert value(fams, "tgc_telegram_calls", calls, method="messages.GetHistory", error="FLOOD_WAIT") == 1
    assert value(fams, "tgc_telegram_flood_waits", method="messages.GetHistory") == 1
    assert value(
        fams, "tgc_telegram_call_duration_seconds", "tgc_telegram_call_duration_seconds_count",
        method="messages.GetHistory",
    ) == 2
    assert (metrics.telegram.total, metrics.telegram.errors) == (3, 2)
    assert "tgc_media_queue" not in fams  # no processor on this server


def test_a_processor_without_the_observable_surface_is_left_out() -> None:
    class Bare:
        def submit(self, media: Any) -> dict[str, Any]:
            return {}

    registry = CollectorRegistry()
    ServiceMetrics(registry, pool=FakePool([]), processor=Bare())
    assert "tgc_media_queue" not in families(registry)


def subscriber_values(registry: CollectorRegistry) -> dict[str, float]:
    fams = families(registry)
    out = {
        name: value(fams, name, name + "_total")
        for name in (
            "tgc_subscriber_events",
            "tgc_subscriber_duplicates",
            "tgc_subscriber_polls",
            "tgc_subscriber_poll_found",
        )
    }
    out["tgc_subscriptions"] = value(fams, "tgc_subscriptions")
    out["tgc_subscriptions_orphaned"] = value(fams, "tgc_subscriptions_orphaned")
    return out


def test_the_subscriber_collector_reads_counters_and_joined_chats_at_each_scrape(
    tmp_path: Path,
) -> None:
    # A Subscriber-like object (its plain counters) and a real join map.
    subscriber = SimpleNamespace(published=3, duplicates=1, polls=2, poll_found=0)
    joinmap = JoinMap(tmp_path / "joinmap.sqlite3")
    try:
        registry = CollectorRegistry()
        registry.register(SubscriberCollector(subscriber, joinmap))
        assert subscriber_values(registry) == {
            "tgc_subscriber_events": 3,
            "tgc_subscriber_duplicates": 1,
            "tgc_subscriber_polls": 2,
            "tgc_subscriber_poll_found": 0,
            "tgc_subscriptions": 0,
            "tgc_subscriptions_orphaned": 0,
        }
        subscriber.published += 4
        subscriber.duplicates += 2
        subscriber.polls += 5
        subscriber.poll_found += 3
        # Two accounts in one chat count once; a chat left counts no more.
        joinmap.record_join(-1002001, "acc1", type="channel")
        joinmap.record_join(-1002001, "acc2", type="channel")
        joinmap.record_join(-1002002, "acc1", type="channel")
        joinmap.record_join(-1002003, "acc2", type="channel")
        joinmap.record_leave(-1002003, "acc2")
        assert subscriber_values(registry) == {
            "tgc_subscriber_events": 7,
            "tgc_subscriber_duplicates": 3,
            "tgc_subscriber_polls": 7,
            "tgc_subscriber_poll_found": 3,
            "tgc_subscriptions": 2,
            "tgc_subscriptions_orphaned": 0,
        }
        # acc2 is banned: the chat it shares with acc1 is not orphaned; then acc1 is too.
        joinmap.record_account_banned("acc2")
        assert subscriber_values(registry)["tgc_subscriptions"] == 2
        assert subscriber_values(registry)["tgc_subscriptions_orphaned"] == 0
        joinmap.record_account_banned("acc1")
        assert subscriber_values(registry)["tgc_subscriptions"] == 0
        assert subscriber_values(registry)["tgc_subscriptions_orphaned"] == 2
        # The exposition's names: counters with _total, the gauge without.
        text = generate_latest(registry).decode()
        assert "\ntgc_subscriber_events_total 7.0\n" in text
        assert "\ntgc_subscriptions 0.0\n" in text
        assert "\ntgc_subscriptions_orphaned 2.0\n" in text
    finally:
        joinmap.close()


def test_a_subscriptions_service_without_the_counters_is_not_observable() -> None:
    assert observable_subscriber(SimpleNamespace(subscribe=None, unsubscribe=None)) is None
    assert observable_subscriber(None) is None
    counted = SimpleNamespace(published=0, duplicates=0, polls=0, poll_found=0)
    assert observable_subscriber(counted) is counted


# --- every family after real activity -------------------------------------------------------


async def test_every_family_after_real_activity(ops_stack: OpsStack) -> None:
    s = ops_stack
    peer = await s.api("/api/v1/peer?peer=@tgc_news")
    assert peer.status == 200, peer.error
    page = await s.api("/api/v1/messages?peer=@tgc_media&limit=20")
    assert page.status == 200, page.error
    missing = await s.api("/api/v1/peer?peer=@nobody_here_at_all")
    assert missing.status == 404
    # One flood wait: the pool moves the search to the other account.
    s.rpc.flood_wait("contacts.search", 30, times=1)
    found = await s.api("/api/v1/search?q=tgc_")
    assert found.status == 200, found.error
    await wait_for(lambda: s.processor.stats()["in_progress"] == 0 and s.processor.uploaded_bytes > 0)
    event = make_event("message.new", {"id": -1002001}, account="acc", message={"id": 1})
    await s.publisher.publish_event(event)
    await wait_for(lambda: s.publisher.published >= 1 and s.publisher.outbox.size == 0)

    response = await s.fetch("/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(response.body.decode())}

    # HTTP: the routes asked, by status, with latencies.
    req = "tgc_http_requests_total"
    assert value(fams, "tgc_http_requests", req, route="/api/v1/peer", status="200") == 1
    assert value(fams, "tgc_http_requests", req, route="/api/v1/peer", status="404") == 1
    assert value(fams, "tgc_http_requests", req, route="/api/v1/search", status="200") == 1
    count = value(
        fams, "tgc_http_request_duration_seconds", "tgc_http_request_duration_seconds_count",
        route="/api/v1/messages", method="GET",
    )
    assert count == 1
    # Telegram: calls by method and error, the flood wait and its seconds.
    calls = "tgc_telegram_calls_total"
    assert value(fams, "tgc_telegram_calls", calls, method="channels.GetFullChannel", error="") >= 1
    assert value(fams, "tgc_telegram_calls", calls, method="messages.GetHistory", error="") >= 1
    assert value(
        fams, "tgc_telegram_calls", calls,
        method="contacts.ResolveUsername", error="USERNAME_NOT_OCCUPIED",
    ) == 1
    assert value(fams, "tgc_telegram_calls", calls, method="contacts.Search", error="FLOOD_WAIT") == 1
    assert value(fams, "tgc_telegram_flood_waits", method="contacts.Search") == 1
    assert value(fams, "tgc_telegram_flood_wait_seconds") == 30
    # Accounts: one of the two waits out its flood.
    assert value(fams, "tgc_accounts", state="ok") == 1
    assert value(fams, "tgc_accounts", state="flood_wait") == 1
    # Media: queues drained, bytes down = bytes up = what the storage holds.
    assert value(fams, "tgc_media_queue", queue="download") == 0
    assert value(fams, "tgc_media_queue", queue="upload") == 0
    down = value(fams, "tgc_media_downloaded_bytes")
    up = value(fams, "tgc_media_uploaded_bytes")
    assert down == up == s.processor.uploaded_bytes > 0
    assert value(fams, "tgc_media_spool_max_bytes") > 0
    # Events: published and the outbox empty.
    assert value(fams, "tgc_events_published") == 1
    assert value(fams, "tgc_outbox_events") == 0


# --- the access line: a request's own text stays on its line ----------------------------------

# What must never reach a log record raw: C0/C1 controls (Cc) and the line/paragraph separators.
HOSTILE = "a\nb\rc\x1b[31md\x00e\x85f\u2028g\u2029h\x7f"


def raw_controls(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")]


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(65536)
    finally:
        writer.close()


def test_printable_escapes_controls_and_leaves_the_rest() -> None:
    assert printable(HOSTILE) == r"a\nb\rc\x1b[31md\x00e\x85f\u2028g\u2029h\x7f"
    assert printable("café \\n 'x'") == "café \\n 'x'"


async def test_no_raw_control_character_of_a_request_reaches_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Names, values, the path and headers of hostile requests: every log record they
    cause is one line, their control characters escaped (a signed request used to forge
    a line of tgc.log through an unknown parameter's name)."""
    caplog.set_level(logging.DEBUG)
    name = quote(HOSTILE, safe="")
    async with serving_api("aes-256-gcm") as api:
        # A signed GET with an unknown parameter named HOSTILE, and one with HOSTILE values.
        answer = await api.call("GET", f"/api/v1/peer?{name}=1")
        assert (answer.status, answer.code) == (400, "INVALID_PARAM")
        answer = await api.call("GET", f"/api/v1/messages?peer=news&ids=1,{name}")
        assert answer.status == 400
        answer = await api.call("GET", f"/api/v1/peer?peer={name}")
        assert answer.status == 400
        # A signed POST whose JSON body has a key named HOSTILE.
        answer = await api.call("POST", "/api/v1/subscriptions", {HOSTILE: "news"})
        assert (answer.status, answer.code) == (400, "INVALID_PARAM")
        # An unknown path, and headers: unsigned (401) with hostile signature headers.
        answer = await api.call("GET", f"/api/v1/{name}")
        assert answer.status == 404
        port = int(api.url.rsplit(":", 1)[1])
        # obs-text (\x85, NEL once decoded as Latin-1) is allowed in a header value by HTTP.
        head = (
            b"GET /api/v1/peer?peer=x HTTP/1.1\r\nHost: t\r\nX-Timestamp: 1\x85\r\n"
            b"X-Nonce: \x85\x9b31m\r\nX-Signature: \x1b\r\n\r\n"
        )
        assert b" 40" in await raw_request(port, head)  # 400 from Tornado, or 401
        head = b"GET /api/v1/peer?peer=x HTTP/1.1\r\nHost: t\r\nX-Nonce: \x85\x9bz\r\n\r\n"
        assert b" 401 " in await raw_request(port, head)
        await wait_for(
            lambda: sum("/api/v1/" in r.getMessage() for r in caplog.records) >= 6,
            what="the access lines",
        )
    lines = [r.getMessage() for r in caplog.records]
    forged = [line for line in lines if raw_controls(line)]
    assert not forged, forged
    unknown = [line for line in lines if "unknown parameter" in line]
    assert any(printable(HOSTILE) in line for line in unknown), unknown


def test_each_accounts_downloads_window_and_pace_are_scraped() -> None:
    registry = CollectorRegistry()
    ServiceMetrics(registry, pool=DownloadingPool())
    fams = families(registry)
    assert value(fams, "tgc_media_account_downloaded_bytes", account="busy") == 5 << 20
    assert value(fams, "tgc_media_download_flood_waits", account="busy") == 1
    assert value(fams, "tgc_media_download_pace_bytes_per_second", account="busy") > 0
    # A fresh window: START (8) within its ceiling.
    assert value(fams, "tgc_media_parts_window", account="busy", dc="2") == 8
    assert value(fams, "tgc_media_parts_window", account="busy", dc="4") == 8
    assert value(fams, "tgc_media_parts_in_flight", account="busy", dc="2") == 0
    # An account that downloaded nothing has no rows.
    with pytest.raises(AssertionError):
        value(fams, "tgc_media_account_downloaded_bytes", account="idle")


async def test_the_reloads_of_the_accounts_are_scraped(tmp_path: Path) -> None:
    fleet = await reloaded_fleet(tmp_path)
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet))
    fams = families(registry)
    assert value(fams, "tgc_fleet_reloads", "tgc_fleet_reloads_total") == 1
    assert value(fams, "tgc_fleet_reload_failures", "tgc_fleet_reload_failures_total") == 0
    assert value(fams, "tgc_fleet_last_reload_timestamp_seconds") == fleet.describe()["last_at"]
    assert value(fams, "tgc_fleet_refused_sessions") == 1
    # Before any reload: no timestamp to show.
    registry = CollectorRegistry()
    registry.register(FleetCollector(await reloaded_fleet(tmp_path / "new", reload=False)))
    assert "tgc_fleet_last_reload_timestamp_seconds" not in families(registry)

