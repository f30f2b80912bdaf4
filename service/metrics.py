"""The service's metrics, defined in one place, on the registry the caller passes in.

`ServiceMetrics(registry, pool=, processor=, publisher=)` registers every family /metrics
serves (the publisher registers its own `tgc_events_*` and `tgc_outbox_*` collector in the
same registry, see service/publisher.py):

    tgc_http_requests_total{route,method,status}        counted as each answer is sent
    tgc_http_request_duration_seconds{route,method}     histogram
    tgc_telegram_calls_total{method,error}              every request a TeleClient sends;
    tgc_telegram_call_duration_seconds{method}          error="" when it succeeded
    tgc_telegram_flood_waits_total{method}              FLOOD_WAIT answers
    tgc_telegram_flood_wait_seconds_total               seconds of flood wait met, all accounts
    tgc_accounts{state}                                 accounts by state (read at scrape time)
    tgc_media_queue{queue}                              download / upload queue lengths
    tgc_media_in_progress, tgc_media_spool_bytes, tgc_media_spool_max_bytes
    tgc_media_downloaded_bytes_total, tgc_media_uploaded_bytes_total
    tgc_media_found_in_storage_total                    stored by another process: not downloaded
    tgc_media_account_downloaded_bytes_total{account}   each account's downloads (progress)
    tgc_media_download_flood_waits_total{account}       flood waits Telegram put on its getFile
    tgc_media_download_pace_bytes_per_second{account}   the pace they set (0: none)
    tgc_media_parts_window{account,dc}                  parts it may have in flight there now
    tgc_media_parts_in_flight{account,dc}               and has (model/partwindow.py)

and `SubscriberCollector(subscriber, joinmap)`, which start.py registers next to the
subscriber it builds (a server without the subscription flow has none of these):

    tgc_subscriber_events_total                         events handed to the publisher
    tgc_subscriber_duplicates_total                     events dropped as already published
    tgc_subscriber_polls_total                          chats polled
    tgc_subscriber_poll_found_total                     messages a poll published (pushes missed)
    tgc_subscriptions                                   chats at least one account is in

and `FleetCollector(fleet)`, which start.py registers next to the fleet (service/fleet.py):

    tgc_fleet_reloads_total                             reloads done (SIGHUP, startup.sh reload)
    tgc_fleet_reload_failures_total                     reloads that failed
    tgc_fleet_last_reload_timestamp_seconds             when the last one ended (none before one)
    tgc_fleet_refused_sessions                          session files the last one refused

Gauges and the totals other modules keep (the processor's bytes, the accounts' flood
waits) are read at scrape time by a custom collector: nothing has to remember to update a
metric, and a scrape costs a few attribute reads. A separate registry per server (never
the process-global one) keeps tests isolated.

`Throughput` keeps per-minute counts of the last minutes for the /status page.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import tornado.web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.ports import Pool

log = logging.getLogger(__name__)

ACCOUNT_STATES = ("ok", "flood_wait", "banned", "unauthorized", "disconnected")
_TELEGRAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# What a request can put in its access line (an unknown parameter's name, the method, an
# error's message) must neither start a line of its own in tgc.log nor steer the terminal
# that shows it: C0 and C1 controls (NEL \x85 included), DEL, the Unicode line and
# paragraph separators and the bidirectional overrides are written as Python escapes.
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def printable(text: str) -> str:
    """`text` on one line, every control character escaped (\\n, \\x1b, \\u2028).

    A backslash is left as it is: the line is meant to be read, and escaping it too would
    double the backslashes of the values already quoted with repr() in error messages."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


# --- what the metrics read of the services (their real types satisfy these) -----------


class OutboxLevel(Protocol):
    """How full the outbox is (service.outbox.Outbox)."""

    @property
    def size(self) -> int: ...

    @property
    def max_events(self) -> int: ...


class ObservedPublisher(Protocol):
    """What /metrics and /status read of the publisher (service.publisher.Publisher)."""

    @property
    def published(self) -> int: ...

    @property
    def outbox(self) -> OutboxLevel: ...

    @property
    def connected(self) -> asyncio.Event: ...


@runtime_checkable
class ObservedProcessor(Protocol):
    """A media queue that shows its queues and byte totals (the MediaProcessor does)."""

    def stats(self) -> Mapping[str, int]: ...

    @property
    def downloaded_bytes(self) -> int: ...

    @property
    def uploaded_bytes(self) -> int: ...


@runtime_checkable
class ObservedSubscriber(Protocol):
    """A subscriptions service that keeps the counters of SUBSCRIBER_COUNTERS."""

    @property
    def published(self) -> int: ...

    @property
    def duplicates(self) -> int: ...

    @property
    def polls(self) -> int: ...

    @property
    def poll_found(self) -> int: ...


class JoinedChats(Protocol):
    """What the subscriber's metrics read of the join map (model.joinmap.JoinMap)."""

    def joined_peers(self) -> list[int]: ...

    def orphaned(self) -> list[int]: ...


# --- the families ----------------------------------------------------------------------


class HttpMetrics:
    """Requests by route, method and status, and their latency; in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.total = 0  # every request answered (for the status page's throughput)
        self.server_errors = 0  # answers with a 5xx status
        self.requests = Counter(
            "tgc_http_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "tgc_http_request_duration_seconds",
            "Time from the request's arrival to its answer",
            ["route", "method"],
            registry=registry,
            buckets=_HTTP_BUCKETS,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, handler: tornado.web.RequestHandler) -> None:
        route = getattr(handler, "route", "unmatched")
        method = handler.request.method or ""
        if method not in handler.SUPPORTED_METHODS:
            method = "OTHER"  # a client must not mint new label values
        status = handler.get_status()
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # labels() costs ~8 µs a request; the pairs are few
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(handler.request.request_time())
        self.total += 1
        if status >= 500:
            self.server_errors += 1
        # The one log line of a request; a failed one names its error (the handler logs
        # only bugs, with their traceback).
        level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.WARNING
        if log.isEnabledFor(level):
            failure = getattr(handler, "failure", None)
            # The message of an INVALID_PARAM names the parameter as the request spelled it
            # (its value is quoted with repr() where it is shown): escaped here, once for
            # every error, rather than at each place that names a parameter.
            log.log(
                level,
                "%s %s %d %.1f ms from %s%s",
                printable(method),
                route,
                status,
                1000 * handler.request.request_time(),
                printable(handler.request.remote_ip or ""),
                printable(f": {failure.code} {failure.message}") if failure is not None else "",
            )


class TelegramMetrics:
    """Telegram requests by method and error: the pool's call observer
    (`TeleClients.observe_calls(metrics.observe)`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = 0
        self.errors = 0
        self.calls = Counter(
            "tgc_telegram_calls",
            "Telegram requests sent, by method and error (empty: it succeeded)",
            ["method", "error"],
            registry=registry,
        )
        self.latency = Histogram(
            "tgc_telegram_call_duration_seconds",
            "Time a Telegram request took, answered or not",
            ["method"],
            registry=registry,
            buckets=_TELEGRAM_BUCKETS,
        )
        self.flood_waits = Counter(
            "tgc_telegram_flood_waits",
            "FLOOD_WAIT answers, by method",
            ["method"],
            registry=registry,
        )

    def observe(self, method: str, error: str | None, seconds: float) -> None:
        self.total += 1
        self.calls.labels(method, error or "").inc()
        self.latency.labels(method).observe(seconds)
        if error is not None:
            self.errors += 1
            if error == "FLOOD_WAIT":
                self.flood_waits.labels(method).inc()


class StateCollector(Collector):
    """Accounts by state and the media queues, read at scrape time.

    `pool` needs `accounts()` (and is iterated for the accounts' `flood_wait_seconds` when
    it can be); `processor` needs `stats()` and its `downloaded_bytes`/`uploaded_bytes`.
    Either may be None (a server without them): their families are left out.
    """

    def __init__(
        self, pool: Pool | None = None, processor: ObservedProcessor | None = None
    ) -> None:
        self.pool = pool
        self.processor = processor

    def collect(self) -> Iterator[Metric]:
        if self.pool is not None:
            yield from self._accounts()
            yield from self._downloads()
        if self.processor is not None:
            yield from self._media()

    def _accounts(self) -> Iterator[Metric]:
        assert self.pool is not None  # collect() asks only then
        states = account_states(self.pool.accounts())
        accounts = GaugeMetricFamily("tgc_accounts", "Accounts by state", labels=["state"])
        for state, n in states.items():
            accounts.add_metric([state], n)
        yield accounts
        if isinstance(self.pool, Iterable):
            seconds = sum(getattr(c, "flood_wait_seconds", 0) for c in self.pool)
            yield CounterMetricFamily(
                "tgc_telegram_flood_wait_seconds",
                "Seconds of flood wait Telegram imposed, all accounts together",
                value=seconds,
            )

    def _downloads(self) -> Iterator[Metric]:
        rows = download_rows(self.pool)
        if not rows:
            return
        by_account = [
            (CounterMetricFamily, "tgc_media_account_downloaded_bytes",
             "Bytes each account downloaded from Telegram", "downloaded_bytes"),
            (CounterMetricFamily, "tgc_media_download_flood_waits",
             "Flood waits Telegram put on each account's downloads (getFile)", "flood_waits"),
            (GaugeMetricFamily, "tgc_media_download_pace_bytes_per_second",
             "The pace a flood wait set on each account's downloads (0: none)", "rate_limit"),
        ]  # fmt: skip
        for kind, name, doc, key in by_account:
            family = kind(name, doc, labels=["account"])
            for row in rows:
                family.add_metric([row["account"]], row[key] or 0)
            yield family
        window = GaugeMetricFamily(
            "tgc_media_parts_window", "Parts each account may have in flight on a DC now",
            labels=["account", "dc"],
        )  # fmt: skip
        flying = GaugeMetricFamily(
            "tgc_media_parts_in_flight", "Parts each account has in flight on a DC",
            labels=["account", "dc"],
        )  # fmt: skip
        for row in rows:
            for dc, w in row["dcs"].items():
                window.add_metric([row["account"], str(dc)], w["window"])
                flying.add_metric([row["account"], str(dc)], w["in_flight"])
        yield window
        yield flying

    def _media(self) -> Iterator[Metric]:
        p = self.processor
        assert p is not None  # collect() asks only then
        stats: Mapping[str, int] = p.stats()
        queue = GaugeMetricFamily("tgc_media_queue", "Media waiting, by queue", labels=["queue"])
        queue.add_metric(["download"], stats.get("downloads_queued", 0))
        queue.add_metric(["upload"], stats.get("uploads_queued", 0))
        yield queue
        for name, key, doc in (
            ("tgc_media_in_progress", "in_progress", "Media items not finished"),
            ("tgc_media_spool_bytes", "spool_bytes", "Spool bytes reserved"),
            ("tgc_media_spool_max_bytes", "spool_max_bytes", "The spool's bound"),
        ):
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        yield CounterMetricFamily(
            "tgc_media_downloaded_bytes", "Bytes downloaded from Telegram", value=p.downloaded_bytes
        )
        yield CounterMetricFamily(
            "tgc_media_uploaded_bytes", "Bytes stored in the storage", value=p.uploaded_bytes
        )
        yield CounterMetricFamily(
            "tgc_media_found_in_storage",
            "Media the storage already held when their download was due (another process"
            " stored them): not downloaded here",
            value=stats.get("found_in_storage", 0),
        )


class SubscriberCollector(Collector):
    """The subscriber's plain counters and the subscribed chats, read at scrape time.

    `subscriber` needs the ints named in SUBSCRIBER_COUNTERS; `joinmap` `joined_peers()` and
    `orphaned()` (indexed SELECTs: cheap at a scrape every few seconds, even for thousands
    of chats).
    """

    def __init__(self, subscriber: ObservedSubscriber, joinmap: JoinedChats) -> None:
        self.subscriber = subscriber
        self.joinmap = joinmap

    def collect(self) -> Iterator[Metric]:
        for name, attr, doc in SUBSCRIBER_COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(self.subscriber, attr))
        yield GaugeMetricFamily(
            "tgc_subscriptions",
            "Chats at least one account is in",
            value=len(self.joinmap.joined_peers()),
        )
        # Chats nobody listens to since their account was banned (the subscriber keeps
        # trying to join them): worth an alert when it stays above 0.
        yield GaugeMetricFamily(
            "tgc_subscriptions_orphaned",
            "Subscribed chats no account is in since theirs was banned or logged out",
            value=len(self.joinmap.orphaned()),
        )


class DescribedFleet(Protocol):
    def describe(self) -> dict[str, Any]: ...


class FleetCollector(Collector):
    """The reloads of the accounts (service/fleet.py `Fleet.describe()`), read at scrape
    time: a refused file stays refused until the next reload, worth an alert above 0."""

    def __init__(self, fleet: DescribedFleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        d = self.fleet.describe()
        yield CounterMetricFamily("tgc_fleet_reloads", "Reloads of the accounts done",
                                  value=d["reloads"])  # fmt: skip
        yield CounterMetricFamily("tgc_fleet_reload_failures", "Reloads of the accounts that failed",
                                  value=d["failures"])  # fmt: skip
        if d["last_at"] is not None:
            yield GaugeMetricFamily(
                "tgc_fleet_last_reload_timestamp_seconds",
                "When the last reload of the accounts ended (Unix time)",
                value=d["last_at"],
            )
        yield GaugeMetricFamily(
            "tgc_fleet_refused_sessions",
            "Session files the last reload refused (retried at the next one)",
            value=len(d["refused"]),
        )


# (family, the Subscriber's attribute, help); CounterMetricFamily adds the _total suffix.
SUBSCRIBER_COUNTERS = (
    ("tgc_subscriber_events", "published", "Events the subscriber handed to the publisher"),
    ("tgc_subscriber_duplicates", "duplicates", "Events dropped as already published"),
    ("tgc_subscriber_polls", "polls", "Chats polled for what the updates missed"),
    ("tgc_subscriber_poll_found", "poll_found", "Messages polls found that updates missed"),
)


def observable_subscriber(subscriber: object | None) -> ObservedSubscriber | None:
    """The subscriber if it keeps the counters of SUBSCRIBER_COUNTERS, else None (a fake
    subscriptions service in a test, or a server without the subscription flow)."""
    return subscriber if isinstance(subscriber, ObservedSubscriber) else None


def observable_processor(processor: object | None) -> ObservedProcessor | None:
    """The processor if it shows its queues (`stats()`) and byte totals, else None (a
    fake in a test of something else, or a server without media)."""
    return processor if isinstance(processor, ObservedProcessor) else None


def download_rows(pool: object | None) -> list[dict[str, Any]]:
    """How each account's downloads fare (`MediaConnections.describe()` with its
    `account`), for the accounts that downloaded anything; none when `pool` can't be
    iterated (a fake) or holds no media connections."""
    rows: list[dict[str, Any]] = []
    if not isinstance(pool, Iterable):
        return rows
    for client in pool:
        describe = getattr(getattr(client, "media_connections", None), "describe", None)
        if describe is None:
            continue
        row = describe()
        if row.get("dcs") or row.get("downloaded_bytes"):
            rows.append({"account": str(getattr(client, "name", "?")), **row})
    return rows


def account_states(accounts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many accounts are in each state (every known state present, 0 or more)."""
    out = dict.fromkeys(ACCOUNT_STATES, 0)
    for account in accounts:
        state = str(account.get("state", ""))
        out[state] = out.get(state, 0) + 1
    return out


class Throughput:
    """Per-minute counts of the last `minutes` minutes, from running totals.

    `sources` maps a name to a function returning a running total (requests answered, bytes
    downloaded, ...). `sample()` adds what each total grew by since the last sample to the
    current minute; it is called on every HTTP answer (at most once a second) and whenever
    the status page is drawn, so a quiet minute shows as 0 and nothing runs in between.
    """

    def __init__(
        self,
        sources: Mapping[str, Callable[[], float]],
        *,
        minutes: int = 15,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = dict(sources)
        self.minutes = minutes
        self._clock = clock
        self._last = {name: float(read()) for name, read in self.sources.items()}
        self._sampled_at = clock()
        self._ring: deque[tuple[int, dict[str, float]]] = deque(maxlen=minutes)

    def maybe_sample(self) -> None:
        """`sample()` unless one ran within the last second (cheap on a hot path)."""
        if self._clock() - self._sampled_at >= 1.0:
            self.sample()

    def sample(self) -> None:
        now = self._clock()
        self._sampled_at = now
        minute = int(now // 60)
        if not self._ring or self._ring[-1][0] != minute:
            self._ring.append((minute, dict.fromkeys(self.sources, 0.0)))
        counts = self._ring[-1][1]
        for name, read in self.sources.items():
            value = float(read())
            # A total that went down was reset (a new processor): count from there.
            counts[name] += max(0.0, value - self._last[name])
            self._last[name] = value

    def rows(self) -> list[tuple[int, dict[str, float]]]:
        """(minute start as unix seconds, counts) for each of the last minutes, newest
        first, quiet minutes included as zeros."""
        self.sample()
        current = int(self._clock() // 60)
        by_minute = dict(self._ring)
        zero = dict.fromkeys(self.sources, 0.0)
        return [
            (m * 60, by_minute.get(m, zero))
            for m in range(current, current - self.minutes, -1)
        ]


class ServiceMetrics:
    """Every metric of the service on one registry, and the status page's throughput.

        metrics = ServiceMetrics(registry, pool=pool, processor=processor, publisher=pub)
        metrics.observe_request(handler)      # Tornado's log_function, once per answer

    `service.handler.make_app` builds the one a server has, on the registry it is given.
    Installs itself as the pool's call observer when the pool offers `observe_calls`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        pool: Pool | None = None,
        processor: object | None = None,
        publisher: ObservedPublisher | None = None,
        minutes: int = 15,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        observed = observable_processor(processor)
        self.http = HttpMetrics(registry)
        self.telegram = TelegramMetrics(registry)
        registry.register(StateCollector(pool, observed))
        observe_calls = getattr(pool, "observe_calls", None)
        if observe_calls is not None:
            observe_calls(self.telegram.observe)
        sources: dict[str, Callable[[], float]] = {
            "requests": lambda: self.http.total,
            "server errors": lambda: self.http.server_errors,
            "telegram calls": lambda: self.telegram.total,
            "telegram errors": lambda: self.telegram.errors,
        }
        if observed is not None:
            sources["downloaded bytes"] = lambda: observed.downloaded_bytes
            sources["uploaded bytes"] = lambda: observed.uploaded_bytes
        if publisher is not None:
            sources["events published"] = lambda: publisher.published
        self.throughput = Throughput(sources, minutes=minutes, clock=clock)

    def observe_request(self, handler: tornado.web.RequestHandler) -> None:
        """Tornado's `log_function`: called once per answer."""
        self.http.observe(handler)
        self.throughput.maybe_sample()
