"""What bench/soak.py saw, the checks against issue 11's targets, and the report.

Every check is a `Check(name, ok, detail)`; where a failure has a cause issue 11 names (an
item another change fixes), the detail says which, so a FAIL on today's code reads as
"known, item N" rather than as the soak's own fault.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import soak_rig as rig

from tests.fakedc import files

RSS_GROWTH = 0.10  # RSS from minute 2 to the end within +10 %
FDS_GROWTH, FDS_SLACK = 0.10, 5
SLOW = 30.0  # no request over 30 s
# Failures issue 11 already names, by what they look like.
KNOWN = (
    ("put_nowait", "issue 11 item 12: an update pushed on the media connection"),
    ("TELEGRAM_ERROR", "issue 11 item 11: transient Telegram errors answered 502"),
    ("healthz multipart", "issue 11 item 5: a multipart Content-Type answered 500"),
)


def known(text: str) -> str:
    return next((f" [{why}]" for sign, why in KNOWN if sign in text), "")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Results:
    duration: float
    slot: float
    slots: int
    t0: float = 0.0
    outcomes: list[rig.Outcome] = field(default_factory=list)
    samples: list[tuple[float, int, float, int]] = field(default_factory=list)  # t, life, MB, fds
    faults: list[rig.Fault] = field(default_factory=list)
    pushes: rig.Pushes | None = None
    consumer: Any = None  # tests.fixtures.rabbitmq.Consumer
    api_keys: set[str] = field(default_factory=set)
    media_state: dict[str, Any] = field(default_factory=dict)
    drain_events: float = 0.0
    drain_media: float = 0.0
    sigterm: tuple[int | None, float] = (None, 0.0)
    idle: tuple[float, int] | None = None
    log_files: list[Path] = field(default_factory=list)
    storage_files: list[Path] = field(default_factory=list)
    tail: str = ""
    fatal: str = ""  # what ended the run early (its traceback: fatal.txt in the workdir)

    @property
    def posted(self) -> list[rig.Posted]:
        return self.pushes.posted if self.pushes is not None else []

    def received(self, routing_key: str | None = None) -> list[Any]:
        messages = self.consumer.messages if self.consumer is not None else []
        return [m for m in messages if routing_key is None or m.routing_key == routing_key]

    def expected_keys(self) -> set[str]:
        """Every file the server was shown: in API answers, in posts, in events."""
        keys = set(self.api_keys) | {p.key for p in self.posted if p.key}
        for m in self.received("message.new"):
            keys |= {d["key"] for d in rig.descriptors(m.body.get("message"))}
        return keys

    def slot_name(self, slot: int) -> str:
        return f"minute {slot + 1}" if self.slot >= 60 else f"{slot * self.slot:.0f} s"

    def row(self, t: float) -> int:
        return min(self.slots - 1, max(0, int((t - self.t0) // self.slot)))

    def fault_at(self, t: float) -> str:
        """The fault on at `t`, or the one just over (its recovery), for a failure's line."""
        for f in reversed(self.faults):
            if f.start <= t <= f.end:
                return f"during {f.kind}"
            if f.end < t <= (f.recovered or f.end) + 2:
                return f"after {f.kind}"
        return "no fault"


# --- the per-slot table ------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(res: Results) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"slot": i, "t": round(i * res.slot), "fault": "", "req": 0, "2xx": 0, "4xx": 0,
         "503": 0, "5xx": 0, "conn": 0, "lat": [], "rss": [], "fds": [], "posts": 0, "new": 0,
         "stored": 0}
        for i in range(res.slots)
    ]  # fmt: skip
    for f in res.faults:
        rows[res.row(f.start)]["fault"] = f.kind
    for o in res.outcomes:
        r = rows[res.row(o.at)]
        r["req"] += 1
        if isinstance(o.status, str):
            r["conn"] += 1
            continue
        r["lat"].append(o.seconds)
        kind = "5xx" if o.server_error else "503" if o.status >= 500 else f"{o.status // 100}xx"
        r[kind if kind in r else "4xx"] += 1
    for t, _, rss, fds in res.samples:
        rows[res.row(t)]["rss"].append(rss)
        rows[res.row(t)]["fds"].append(fds)
    for p in res.posted:
        rows[res.row(p.at)]["posts"] += 1
    for m in res.received():
        if m.at < res.t0 + res.duration:
            key = {"message.new": "new", "media.stored": "stored"}.get(m.routing_key)
            if key:
                rows[res.row(m.at)][key] += 1
    for r in rows:
        lat = r.pop("lat")
        r["p50"], r["p99"], r["max"] = pct(lat, 0.5), pct(lat, 0.99), max(lat, default=0.0)
        r["rss"] = statistics.median(r["rss"]) if r["rss"] else None
        # The floor: what stays open between requests (a leak raises it; a burst of
        # connections in flight, as in a latency spike, does not).
        r["fds"] = min(r["fds"]) if r["fds"] else None
    return rows


def print_table(rows: list[dict[str, Any]], slot: float) -> None:
    unit = "min" if slot >= 60 else "s"
    print(
        f"\n{unit:>5} fault            req   2xx  4xx  503 5xx* conn  p50ms  p99ms   max s"
        "  RSS MB  fds  posts  new stored"
    )
    for r in rows:
        at = r["slot"] + 1 if unit == "min" else r["t"]
        rss = f"{r['rss']:7.1f}" if r["rss"] is not None else "      -"
        fds = f"{r['fds']:4.0f}" if r["fds"] is not None else "   -"
        print(f"{at:>5} {r['fault'] or '-':16} {r['req']:4} {r['2xx']:5} {r['4xx']:4} "
              f"{r['503']:4} {r['5xx']:4} {r['conn']:4} {r['p50'] * 1e3:6.0f} "
              f"{r['p99'] * 1e3:6.0f} {r['max']:7.2f} {rss} {fds} {r['posts']:6} {r['new']:4} "
              f"{r['stored']:6}")  # fmt: skip
    print(
        "  RSS: median of the slot; fds: its lowest (what stays open between requests); 5xx*:"
        " the 5xx the docs don't list; conn: refused, reset, timed out or unreadable"
    )


# --- the checks --------------------------------------------------------------------------


def check_all(res: Results, source: rig.FileSource, nginx: Any) -> list[Check]:
    done = Check("the run completed", not res.fatal, res.fatal or "warm-up, run, drain, stop")
    return [
        done,
        *memory_checks(res),
        *event_checks(res),
        *storage_checks(res, source, nginx),
        *http_checks(res),
        fault_check(res),
        sigterm_check(res),
        log_check(res),
    ]


def per_life(res: Results, index: int, reduce: Any) -> dict[int, dict[int, float]]:
    """life → slot → `reduce` of that life's samples in the slot (sample field `index`)."""
    found: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in res.samples:
        found[sample[1]][res.row(sample[0])].append(sample[index])
    return {life: {slot: reduce(v) for slot, v in slots.items()} for life, slots in found.items()}


def growth_check(res: Results, name: str, index: int, reduce: Any, bound: Any, unit: str) -> Check:
    """Each life of the server from its first whole slot (the first life: minute 2) to its
    end: never above `bound(first)`. Per life, so that a leak in the second life is not
    hidden by a first life that ran higher."""
    lives = per_life(res, index, reduce)
    ok, parts = bool(lives), []
    for life, slots in sorted(lives.items()):
        base_slot = 1 if life == 1 else min(slots) + 1
        measured = {slot: v for slot, v in sorted(slots.items()) if slot >= base_slot}
        if base_slot not in measured:
            ok = ok and life != 1  # a later life too short to judge is only named
            parts.append(f"life {life}: no whole slot")
            continue
        base, top, last = measured[base_slot], max(measured.values()), list(measured.values())[-1]
        ok = ok and top <= bound(base)
        parts.append(
            f"life {life} from {res.slot_name(base_slot)}: {base:.1f}{unit}, highest "
            f"{top:.1f} ({top / base - 1:+.1%}, bound {bound(base):.1f}), last {last:.1f}"
        )
    return Check(name, ok, "; ".join(parts) or "no samples")


def memory_checks(res: Results) -> list[Check]:
    return [
        growth_check(res, "RSS from minute 2 within +10%", 2, statistics.median,
                     lambda base: base * (1 + RSS_GROWTH), " MB"),
        growth_check(res, "descriptors flat", 3, min,
                     lambda base: max(base * (1 + FDS_GROWTH), base + FDS_SLACK), ""),
    ]  # fmt: skip


def event_checks(res: Results) -> list[Check]:
    arrivals: dict[str, list[float]] = defaultdict(list)
    for m in res.received("message.new"):
        arrivals[m.message_id].append(m.at)
    posted = res.posted
    lost = [p for p in posted if p.event_id not in arrivals]
    apart: Counter[str] = Counter()
    unexplained: list[str] = []
    for p in posted:
        times = sorted(arrivals.get(p.event_id, []))
        for again in times[1:]:
            cause = resend_cause(res, again)
            if cause:
                apart[cause] += 1
            else:
                unexplained.append(f"{p.event_id} x{len(times)} ({res.fault_at(again)})")
    once = sum(1 for p in posted if len(arrivals.get(p.event_id, [])) == 1)
    errors = res.pushes.errors if res.pushes is not None else []
    lost_detail = ", ".join(f"{p.event_id} ({res.fault_at(p.at)})" for p in lost[:5])
    return [
        Check("0 posts lost", not lost and not errors and bool(posted),
              f"{len(posted)} posted, {len(posted) - len(lost)} delivered ({once} exactly once) "
              f"in {res.drain_events:.0f} s of drain; lost {len(lost)}{': ' if lost else ''}"
              f"{lost_detail}{'; post errors: ' + '; '.join(errors[:3]) if errors else ''}"),
        Check("duplicates only across the SIGKILL and the broker cut", not unexplained,
              f"counted apart: {dict(apart) or 0}; others {len(unexplained)}"
              f"{': ' + ', '.join(unexplained[:5]) if unexplained else ''}"),
    ]  # fmt: skip


def resend_cause(res: Results, t: float) -> str | None:
    """The fault a second copy arriving at `t` comes from: the SIGKILL (the outbox sends
    again what the killed life had not seen confirmed; the gap poll finds again what it
    had not recorded) or the broker cut (unconfirmed publishes sent again)."""
    for f in reversed(res.faults):
        if f.start <= t:
            if f.kind in (rig.SIGKILL, "broker cut") and t <= (f.recovered or f.end) + res.slot:
                return f.kind
            return None
    return None


_PUT = re.compile(r'\[([^\]]+)\] "PUT /\w\w/(\w{32})\S* HTTP/[\d.]+" (\d{3}) ')


def successful_puts(nginx: Any) -> dict[str, list[float]]:
    log = nginx.tmp / "access.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    puts: dict[str, list[float]] = defaultdict(list)
    for when, key, status in _PUT.findall(text):
        if status in ("201", "204"):
            puts[key].append(datetime.strptime(when, "%d/%b/%Y:%H:%M:%S %z").timestamp())
    return puts


def cut_off(res: Results, t: float) -> bool:
    """A PUT at `t` whose answer a SIGKILL or the storage outage may have kept from the
    server (nginx logs whole seconds: a second's slack)."""
    return any(
        f.kind in (rig.SIGKILL, "storage down") and f.start - 2 <= t <= f.start + 1
        for f in res.faults
    )


def storage_checks(res: Results, source: rig.FileSource, nginx: Any) -> list[Check]:
    objects: dict[str, list[Path]] = defaultdict(list)
    for path in res.storage_files:
        objects[path.name[:32]].append(path)
    differ, unknown = [], []
    for key, paths in sorted(objects.items()):
        if key not in source.files:
            unknown.append(key)
            continue
        file_key, size = source.files[key]
        for path in paths:
            stored = nginx.path_of(str(path))
            if stored.stat().st_size != size or stored.read_bytes() != files.read(file_key, size):
                differ.append(str(path))
    expected = res.expected_keys()
    states = Counter(str(res.media_state.get(k)) for k in expected)
    missing = sorted(k for k in expected if k not in objects)
    failed = {k: s for k, s in res.media_state.items() if s == "failed"}
    twice_objects = [k for k, p in objects.items() if len(p) > 1]
    puts = successful_puts(nginx)
    again_apart, twice_puts = 0, []
    for key, times in puts.items():
        if len(times) > 1:
            if all(cut_off(res, t) for t in sorted(times)[:-1]):
                again_apart += 1
            else:
                twice_puts.append(key)
    return [
        Check("every file stored, byte-exact", not (missing or differ or unknown or failed),
              f"{len(objects)} stored for {len(expected)} seen (API {len(res.api_keys)}, "
              f"posts {len({p.key for p in res.posted if p.key})}); states {dict(states)} after "
              f"{res.drain_media:.0f} s of drain; missing {len(missing)}, failed {len(failed)}, "
              f"bytes differ {len(differ)}, unknown {len(unknown)}"),
        Check("0 stored twice", not (twice_objects or twice_puts),
              f"objects per key > 1: {len(twice_objects)}; PUTs per key > 1: {len(twice_puts)}"
              f"{' ' + str(twice_puts[:3]) if twice_puts else ''}; a second PUT after one the "
              f"SIGKILL or the outage cut off (counted apart): {again_apart}"),
    ]  # fmt: skip


def http_checks(res: Results) -> list[Check]:
    # Grouped by what was answered; with which requests and during which faults.
    requests: dict[str, Counter[str]] = defaultdict(Counter)
    when: dict[str, Counter[str]] = defaultdict(Counter)
    bound = 0
    for o in res.outcomes:
        if o.server_error and _account_bound_502(o, res.fault_at(o.at)):
            bound += 1
        elif o.server_error:
            what = f"{o.status} {o.code}" if o.code else f"{o.status} on {o.label}"
            requests[what][o.label] += 1
            when[what][res.fault_at(o.at)] += 1
    unreadable = Counter(f"{o.label}: {o.code}" for o in res.outcomes if o.status == rig.BAD_ANSWER)
    slow = [o for o in res.outcomes if o.seconds > SLOW or o.status == rig.TIMEOUT]
    answered = [o.seconds for o in res.outcomes if isinstance(o.status, int)]
    conn = Counter(str(o.status) for o in res.outcomes if isinstance(o.status, str))
    total = sum(sum(c.values()) for c in requests.values())
    listed = "; ".join(
        f"{sum(requests[w].values())} x {w}{known(w + ' ' + ' '.join(requests[w]))} "
        f"({', '.join(f'{label} {n}' for label, n in requests[w].most_common(5))}; "
        f"{', '.join(f'{n} {f}' for f, n in when[w].most_common(3))})"
        for w in sorted(requests, key=lambda w: -sum(requests[w].values()))
    )
    return [
        Check("no 5xx but the documented 503s", not total,
              f"{len(res.outcomes)} requests, {total} such 5xx{': ' + listed if listed else ''}"
              f"; counted apart, the documented 502 of a leave only the faulted account could "
              f"make (docs/API.md, 502): {bound}"),
        Check("every answer readable", not unreadable, f"{dict(unreadable) or 'all'}"),
        Check("no request over 30 s", not slow,
              f"max {max(answered, default=0):.2f} s, p99 {pct(answered, 0.99):.2f} s; "
              f"not answered: {dict(conn) or 0}"
              f"{'; over 30 s: ' + ', '.join(o.label for o in slow[:5]) if slow else ''}"),
    ]  # fmt: skip


def _account_bound_502(o: rig.Outcome, fault: str) -> bool:
    """A leave (DELETE /subscriptions) is made by the chat's member account and no other;
    while that account's every call fails with INTERNAL, no account can serve it, and
    docs/API.md documents the 502 for exactly that (issue 11 item 11: "only when none can
    serve does the crawler see 502"). Any other 502 still fails the check."""
    return (
        o.label == "unsubscribe"
        and o.status == 502
        and o.code == "TELEGRAM_ERROR"
        and fault == "during rpc errors"
    )


def fault_check(res: Results) -> Check:
    kinds = Counter(f.kind for f in res.faults)
    stuck = [f"{f.kind} at {f.start - res.t0:.0f} s" for f in res.faults if f.recovered is None]
    took = [f"{f.kind} {f.recovered - f.end:.1f}" for f in res.faults if f.recovered is not None]
    return Check("every fault recovered from before the next slot", bool(res.faults) and not stuck,
                 f"{len(res.faults)} faults {dict(kinds)}; seconds from each one's end to working again: "
                 f"{', '.join(took)}{'; not recovered: ' + ', '.join(stuck) if stuck else ''}")  # fmt: skip


def sigterm_check(res: Results) -> Check:
    code, took = res.sigterm
    return Check("SIGTERM exits 0", code == 0, f"exit {code} in {took:.1f} s{res.tail[-600:]}")


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+Z (\w+)\s+(\S+): (.*)$")


def server_errors(log_files: list[Path]) -> tuple[Counter[str], Counter[str]]:
    """ERROR and CRITICAL entries of the server's logs, by logger, message and (for one with
    a traceback) the exception: (those with a traceback, those without)."""
    traced: Counter[str] = Counter()
    plain: Counter[str] = Counter()
    for path in sorted(log_files):
        entry: str | None = None
        tail: list[str] = []
        for line in [
            *path.read_text(errors="replace").splitlines(),
            "0000-00-00T00:00:00Z END x: ",
        ]:
            m = _LOG_LINE.match(line)
            if m is None:
                tail.append(line.strip())  # a traceback's lines: the last names the exception
                continue
            if entry is not None:
                if any(t.startswith("Traceback") for t in tail):
                    traced[f"{entry} | {next(t for t in reversed(tail) if t)[:90]}"] += 1
                else:
                    plain[entry] += 1
            entry, tail = None, []
            if m[1] in ("ERROR", "CRITICAL"):
                entry = f"{m[2]}: {re.sub(r'[0-9]+', 'N', m[3])[:70]}"
    return traced, plain


def log_check(res: Results) -> Check:
    """A traceback is a failure (something went unhandled); an ERROR line without one is
    listed (a library's own report of a refused connection during the broker cut is one)."""
    traced, plain = server_errors(res.log_files)
    listed = "; ".join(f"{n} x {e}{known(e)}" for e, n in traced.most_common(4))
    others = "; ".join(f"{n} x {e}" for e, n in plain.most_common(3))
    return Check(
        "no traceback in the server's log",
        not traced,
        f"{sum(traced.values())} ERROR entries with a traceback{': ' + listed if listed else ''}"
        f"; {sum(plain.values())} without{': ' + others if others else ''}",
    )


# --- the report --------------------------------------------------------------------------


def summary(res: Results, rows: list[dict[str, Any]]) -> str:
    """The figures issue 11's note asks for, on one line."""
    rss = [r["rss"] for r in rows[1:] if r["rss"] is not None]
    fds = [r["fds"] for r in rows[1:] if r["fds"] is not None]
    answered = [o.seconds for o in res.outcomes if isinstance(o.status, int)]
    survived = sum(1 for f in res.faults if f.recovered is not None)
    stored = {m.message_id for m in res.received("media.stored")}
    new = {m.message_id for m in res.received("message.new")}
    delivered = sum(1 for p in res.posted if p.event_id in new)
    minutes = res.duration / 60
    return (
        f"{minutes:g} min, {len(res.outcomes)} requests; RSS {rss[0] if rss else 0:.1f} → "
        f"{rss[-1] if rss else 0:.1f} MB (highest {max(rss, default=0):.1f}); fds "
        f"{fds[0] if fds else 0:.0f} → {fds[-1] if fds else 0:.0f}; p99 "
        f"{pct(answered, 0.99):.2f} s, max {max(answered, default=0):.2f} s; faults survived "
        f"{survived}/{len(res.faults)}; files stored {len(res.storage_files)} "
        f"({len(stored)} media.stored events); message.new delivered for {delivered} of "
        f"{len(res.posted)} posts; events received {len(res.received())}"
    )


def print_report(res: Results, checks: list[Check]) -> dict[str, Any]:
    rows = table(res)
    print_table(rows, res.slot)
    print("\nfaults:")
    for f in res.faults:
        back = f"{f.recovered - f.end:.1f} s" if f.recovered is not None else "not recovered"
        print(
            f"  {f.start - res.t0:6.0f} s  {f.kind:16} {f.note}; over after "
            f"{f.end - f.start:.1f} s, recovered {back} later"
        )
    line = summary(res, rows)
    print(f"\nsummary: {line}")
    print("\nchecks:")
    for c in checks:
        print(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    labels = Counter(f"{o.label} {o.status}" for o in res.outcomes)
    print("\nanswers by request: " + ", ".join(f"{k} x{n}" for k, n in sorted(labels.items())))
    return {
        "summary": line,
        "rows": rows,
        "faults": [vars(f) for f in res.faults],
        "checks": [vars(c) for c in checks],
        "answers": dict(labels),
        "idle": res.idle,
    }
