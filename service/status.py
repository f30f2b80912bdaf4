"""The /status page for ops: one server-rendered HTML page, no scripts, no front-end build.

It shows the accounts and their state, each account's downloads (its window of parts in
flight per DC, bytes, the pace a flood wait set), the media queues, the outbox, the subscriber, the recent
warnings and errors of the log (`ErrorLog`, a bounded ring fed by a logging handler) and
the throughput of the last minutes (`service.metrics.Throughput`). It is for humans on the box:
not signed, not encrypted, and answered only to the addresses in server.status_allow
(the handler in service/handler.py checks that). Every value goes through Tornado's
template autoescape: account names, log messages and the like are never trusted as HTML.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import tornado.template

from service.metrics import (
    DescribedFleet,
    ObservedPublisher,
    ServiceMetrics,
    account_states,
    download_rows,
    observable_processor,
    observable_subscriber,
)
from service.ports import Pool

MESSAGE_MAX = 500


@dataclass(frozen=True, slots=True)
class LoggedError:
    at: float
    level: str
    logger: str
    message: str


class ErrorLog(logging.Handler):
    """The last `capacity` log records at WARNING or above, for the status page.

    Keeps the record's formatted message only (cut to 500 characters): never the exception
    or its traceback, whose locals and arguments may carry what the log line itself
    leaves out. The service never logs secrets in messages (STYLE.md), so the page shows
    nothing the log file doesn't.

        errors = ErrorLog()
        logging.getLogger().addHandler(errors)     # start.py; removed at stop
    """

    def __init__(self, capacity: int = 50, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.records: deque[LoggedError] = deque(maxlen=capacity)
        self.total = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: show the template rather than lose the record
            message = str(record.msg)
        if len(message) > MESSAGE_MAX:
            message = message[: MESSAGE_MAX - 1] + "…"
        self.records.append(LoggedError(record.created, record.levelname, record.name, message))
        self.total += 1

    def recent(self) -> list[LoggedError]:
        """Newest first."""
        return list(reversed(self.records))


class StatusPage:
    """Gathers what the page shows and renders it.

    `pool` needs `accounts()`; `processor` (optional) `stats()`; `publisher` (optional) its
    `outbox.size`, `outbox.max_events`, `published` and `connected`; `subscriber` (optional)
    its counters (`service.metrics.SUBSCRIBER_COUNTERS`) and `joinmap` its `joined_peers()`.
    """

    def __init__(
        self,
        *,
        pool: Pool,
        processor: object | None = None,
        publisher: ObservedPublisher | None = None,
        subscriber: object | None = None,
        joinmap: object | None = None,
        metrics: ServiceMetrics | None = None,
        errors: ErrorLog | None = None,
        fleet: DescribedFleet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.processor = observable_processor(processor)
        self.publisher = publisher
        self.subscriber = observable_subscriber(subscriber)
        self.joinmap = joinmap
        self.metrics = metrics
        self.errors = errors
        self.fleet = fleet
        self._clock = clock
        self.started_at = clock()

    def context(self, *, draining: bool = False) -> dict[str, Any]:
        """Everything the template shows, as plain values (tests read this too)."""
        now = self._clock()
        accounts = sorted(self.pool.accounts(), key=lambda a: str(a.get("name", "")))
        throughput = self.metrics.throughput if self.metrics is not None else None
        errors = self.errors.recent() if self.errors is not None else []
        return {
            "now": _utc(now),
            "uptime": _duration(now - self.started_at),
            "pid": os.getpid(),
            "draining": draining,
            "accounts": accounts,
            "states": {k: v for k, v in account_states(accounts).items() if v},
            "queues": self._queues(),
            "downloads": self._downloads(),
            "columns": list(throughput.sources) if throughput is not None else [],
            "throughput": [(_utc(start, "%H:%M"), counts) for start, counts in throughput.rows()]
            if throughput is not None
            else [],
            "errors": [(_utc(e.at, "%H:%M:%S"), e.level, e.logger, e.message) for e in errors],
            "errors_total": self.errors.total if self.errors is not None else 0,
            "reloads": self._reloads(),
        }

    def _reloads(self) -> list[tuple[str, str]]:
        """The reloads of the accounts (SIGHUP): how many, the last one, the files it refused
        and why (a refused file waits for the next reload)."""
        if self.fleet is None:
            return []
        d = self.fleet.describe()
        count = str(d["reloads"]) + (f" ({d['failures']} failed)" if d["failures"] else "")
        rows = [("reloads", count)]
        if d["last_at"] is not None:
            what = d["last"] if d["last_error"] is None else f"failed: {d['last_error']}"
            rows.append(("last reload", f"{_utc(d['last_at'])}: {what}"))
        rows += [(f"refused: {name}", reason) for name, reason in sorted(d["refused"].items())]
        return rows

    def _downloads(self) -> list[tuple[str, str, str, str, str, str, str]]:
        """Per account and DC: window (of its ceiling, and the throughput it last measured),
        parts in flight, least round trip;
        per account: downloaded, pace, flood waits on getFile."""
        rows = []
        for row in sorted(download_rows(self.pool), key=lambda r: r["account"]):
            pace = _bytes(row["rate_limit"]) + "/s" if row["rate_limit"] else "-"
            if row.get("waiting"):
                pace += f" (waiting {row['waiting']:.0f} s)"
            common = (_bytes(row["downloaded_bytes"]), pace, str(row["flood_waits"]))
            for dc, w in sorted(row["dcs"].items()) or [("-", None)]:
                if w is None:
                    rows.append((row["account"], "-", "-", "-", *common))
                    continue
                base = "-" if w["base_rtt_ms"] is None else f"{w['base_rtt_ms']:g} ms"
                window = f"{w['window']} of {w['ceiling']}"
                if w.get("throughput_mb_s") is not None:
                    window += f" · {w['throughput_mb_s']:g} MB/s"
                rows.append((
                    row["account"], str(dc), window,
                    f"{w['in_flight']} · {base}", *common,
                ))  # fmt: skip
        return rows

    def _queues(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        if self.processor is not None:
            s = self.processor.stats()
            spool = f"{_bytes(s.get('spool_bytes', 0))} of {_bytes(s.get('spool_max_bytes', 0))}"
            rows += [
                ("media downloads queued", str(s.get("downloads_queued", 0))),
                ("media uploads queued", str(s.get("uploads_queued", 0))),
                ("media in progress", str(s.get("in_progress", 0))),
                ("spool", spool),
            ]
        if self.publisher is not None:
            p = self.publisher
            rows += [
                ("outbox events", f"{p.outbox.size} of {p.outbox.max_events}"),
                ("events published", str(p.published)),
                ("broker", "connected" if p.connected.is_set() else "not connected"),
            ]
        if self.subscriber is not None:
            sub = self.subscriber
            joined = getattr(self.joinmap, "joined_peers", None)
            if joined is not None:
                rows.append(("subscribed chats", str(len(joined()))))
            rows += [
                ("subscriber events", str(sub.published)),
                ("subscriber duplicates dropped", str(sub.duplicates)),
                ("chats polled", str(sub.polls)),
                ("messages polls found (pushes missed)", str(sub.poll_found)),
            ]
        return rows

    def render(self, *, draining: bool = False) -> bytes:
        return _TEMPLATE.generate(amount=_amount, **self.context(draining=draining))


def _utc(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return datetime.fromtimestamp(ts, UTC).strftime(fmt)


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m {s}s"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1024
        if n < 1024 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _amount(column: str, value: float) -> str:
    return _bytes(value) if column.endswith("bytes") else f"{value:.0f}"


# Tornado templates escape every {{ }} (xhtml_escape) unless told otherwise; nothing here
# is told otherwise. No scripts, no external resources: the page's CSP forbids both.
_TEMPLATE = tornado.template.Template(
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="15">
<title>tgc status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; background: #f7f8fa; }
h1 { font-size: 20px; margin: 0 0 .2em; } h2 { font-size: 16px; margin: 1.4em 0 .4em; }
.meta { color: #5b6475; } .warn { color: #a33; font-weight: bold; }
table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { padding: .3em .8em; border-bottom: 1px solid #e3e6ec; text-align: left; }
th { background: #2d3a55; color: #fff; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.state-ok { color: #17803d; } .state-flood_wait { color: #b26b00; }
.state-banned, .state-unauthorized { color: #b3261e; font-weight: bold; }
.state-disconnected { color: #6b4fbb; }
.lvl-ERROR, .lvl-CRITICAL { color: #b3261e; } .lvl-WARNING { color: #b26b00; }
td.msg { font-family: ui-monospace, monospace; font-size: 12px; max-width: 70em; word-break: break-word; }
</style></head>
<body>
<h1>tgc status</h1>
<p class="meta">{{ now }} · up {{ uptime }} · pid {{ pid }}
{% if draining %}· <span class="warn">shutting down</span>{% end %}</p>

<h2>Accounts ({{ len(accounts) }}{% for state, n in states.items() %} · {{ n }} {{ state }}{% end %})</h2>
<table id="accounts">
<tr><th>account</th><th>phone</th><th>user id</th><th>state</th><th>flood wait until</th><th>pending downloads</th></tr>
{% for a in accounts %}<tr>
<td>{{ a.get("name") }}{% if a.get("label") %} <span class="label">{{ a["label"] }}</span>{% end %}{% if a.get("proxy") %}<br><span class="proxy">via {{ a["proxy"] }}</span>{% end %}</td><td>{{ a.get("phone") or "-" }}</td><td class="n">{{ a.get("user_id") or "-" }}</td>
<td class="state-{{ a.get("state") }}">{{ a.get("state") }}{% if a.get("reason") %} <span class="reason">({{ a["reason"] }})</span>{% end %}</td><td>{{ a.get("flood_wait_until") or "-" }}</td>
<td class="n">{{ a.get("pending_downloads", 0) }}</td></tr>
{% end %}{% if not accounts %}<tr><td colspan="6">no accounts: python start.py login --phone +NUMBER</td></tr>{% end %}
</table>

{% if reloads %}<h2>Reloads of the accounts</h2>
<table id="reloads">
{% for name, value in reloads %}<tr><td>{{ name }}</td><td>{{ value }}</td></tr>
{% end %}</table>
{% end %}
<h2>Downloads</h2>
<table id="downloads">
<tr><th>account</th><th>dc</th><th>parts window</th><th>in flight · least round trip</th><th>downloaded</th><th>pace</th><th>flood waits</th></tr>
{% for row in downloads %}<tr><td>{{ row[0] }}</td><td class="n">{{ row[1] }}</td><td class="n">{{ row[2] }}</td><td class="n">{{ row[3] }}</td><td class="n">{{ row[4] }}</td><td class="n">{{ row[5] }}</td><td class="n">{{ row[6] }}</td></tr>
{% end %}{% if not downloads %}<tr><td colspan="7">no downloads yet</td></tr>{% end %}
</table>

<h2>Queues</h2>
<table id="queues">
<tr><th>queue</th><th>now</th></tr>
{% for name, value in queues %}<tr><td>{{ name }}</td><td class="n">{{ value }}</td></tr>
{% end %}{% if not queues %}<tr><td colspan="2">no media processor, publisher or subscriber on this server</td></tr>{% end %}
</table>

<h2>Recent warnings and errors ({{ errors_total }} since start)</h2>
<table id="errors">
<tr><th>time (UTC)</th><th>level</th><th>logger</th><th>message</th></tr>
{% for at, level, logger, message in errors %}<tr><td>{{ at }}</td><td class="lvl-{{ level }}">{{ level }}</td><td>{{ logger }}</td><td class="msg">{{ message }}</td></tr>
{% end %}{% if not errors %}<tr><td colspan="4">none</td></tr>{% end %}
</table>

<h2>Throughput per minute</h2>
<table id="throughput">
<tr><th>minute (UTC)</th>{% for c in columns %}<th>{{ c }}</th>{% end %}</tr>
{% for minute, counts in throughput %}<tr><td>{{ minute }}</td>{% for c in columns %}<td class="n">{{ amount(c, counts.get(c, 0)) }}</td>{% end %}</tr>
{% end %}
</table>
</body></html>
""",
    name="status.html",
)
