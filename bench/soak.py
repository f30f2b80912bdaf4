"""The whole-system soak (issue 11): every real part, a bounded load, a fault every minute.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 20] [--concurrency 8]
        [--push-every 1.0] [--seed 1] [--workdir DIR] [--keep] [--json FILE]

What runs (bench/soak_rig.py): the DC emulator in its own process (two DCs, the demo world
plus the soak's chats, its control channel for pushes and faults), the server
(`start.py serve` through tests/fakedc/launch.py, so it reaches DC 2) on a fixed port and
one data dir for all its lives, nginx WebDAV as its storage, RabbitMQ behind a TCP proxy
that cuts and refuses, and a consumer on the server's queue (straight to the broker).

Before the clock starts: the three push chats are subscribed, the media channel's page is
read and its files stored. Then for --minutes:
- the load: --rate requests/s at most --concurrency in flight, a weighted mix of every
  endpoint (peers, history pages, ids, the media channel's page and the pushed chats' pages,
  participants, search, media records, accounts, subscriptions, a subscribe/unsubscribe
  churn, /healthz, /metrics, /status) and bad requests (signature, timestamp, unknown
  parameter and path, a limit too big, a wrong method, an unknown peer, a body too large, a
  query too short, a multipart Content-Type on /healthz), signed and decrypted by
  service/apiclient.py;
- a post every --push-every seconds into a subscribed chat, every third with a file (new
  documents and photos, some on DC 2, now and then one posted before);
- one fault per slot, in rotation: a flood wait (2 of 3 accounts), a burst of 500 INTERNAL
  (every call of one account), a latency spike (+1.5 s on every answer), storage down
  (nginx stopped), the broker connection cut (the proxy drops it and refuses new ones);
  once, in the middle slot, SIGKILL and a restart on the same data dir. A slot is a minute (for runs of
  8 minutes and more; shorter runs compress it to a run's eighth: 15 s at --minutes 2, so
  each kind occurs once); a fault lasts a third of its slot; the first and last slots are
  quiet;
- the server's RSS and open descriptors (/proc/PID) sampled every second.
Then the load and the posts stop, every post's `message.new` and every file are awaited
(bounded), the server gets SIGTERM, and the checks run.

Targets (issue 11), each printed PASS/FAIL, exit status 1 if any fails:
- RSS from minute 2 (the second slot) to the end within +10% (each slot's median), for
  each life of the server (the one after the SIGKILL from its first whole slot);
- descriptors flat: each slot's lowest count (what stays open between requests) within
  +10% (or 5) of the same first slot's, per life;
- 0 posts lost; duplicates of `message.new` only across the SIGKILL and the broker cut
  (counted apart: at-least-once, docs/EVENTS.md);
- every file seen stored, byte-exact; 0 stored twice (a second PUT of a file whose first
  one the SIGKILL or the storage outage kept from the server is counted apart);
- no 5xx but the documented 503s; every answer readable; no request over 30 s;
- every fault recovered from (a signed request answered 200) before the next;
- SIGTERM exits 0; no traceback in the server's log (ERROR lines without one are listed).
A failure with a cause issue 11 names (an item fixed elsewhere) says which item.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import soak_rig as rig
from soak_checks import Results, check_all, print_report
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from service.apiclient import ApiClient, ApiError
from tests.fixtures.nginx import Nginx
from tests.fixtures.rabbitmq import BROKER_URL, BrokerProxy, Consumer, Rabbit
from tests.fixtures.server_config import AES_KEY, TOKEN


@dataclass(frozen=True)
class Plan:
    """The run's shape, from the command line."""

    minutes: float
    rate: float
    concurrency: int
    push_every: float
    seed: int

    @property
    def duration(self) -> float:
        return self.minutes * 60

    @property
    def slot(self) -> float:
        """One fault per slot: a minute, or an eighth of a run shorter than 8 minutes."""
        return min(60.0, self.duration / 8)

    @property
    def slots(self) -> int:
        return max(1, round(self.duration / self.slot))

    @property
    def poll_interval(self) -> int:
        return max(5, min(60, round(self.slot)))


def server_props(
    port: int, nginx: Nginx, proxy: BrokerProxy, rabbit: Rabbit, plan: Plan
) -> dict[str, str]:
    """The server's config: the shipped defaults but for the parts' addresses, the test
    secrets, and the waits that set how soon it comes back after a fault (a retry or
    reconnect at most 3-10 s away, the gap poll every slot), a 64 KB body limit (a 413
    costs little) and 20 s to stop."""
    return {
        "server.port": str(port),
        "server.shutdown_timeout": "20",
        "server.max_body_bytes": "64K",
        "api.token": TOKEN,
        "api.aes_key": AES_KEY,
        "telegram.api_id": str(rig.API_ID),
        "telegram.api_hash": rig.API_HASH,
        "telegram.sessions_dir": "sessions",
        "telegram.reconnect_max_delay": "10",
        "data.dir": "data",
        "log.dir": "logs",
        "storage.url": nginx.base_url,
        "storage.retry_max_delay": "3",
        "rabbitmq.url": proxy.url,
        "rabbitmq.exchange": rabbit.exchange,
        "rabbitmq.queue": rabbit.queue,
        "rabbitmq.reconnect_max_delay": "3",
        "subscriptions.poll_interval": str(plan.poll_interval),
    }


class Soak:
    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.rng = random.Random(plan.seed)
        self.world = rig.world_dict()
        self.source = rig.FileSource.of_world(self.world)
        self.mix = rig.Mix(self.rng)
        self.res = Results(plan.duration, plan.slot, plan.slots)
        self.emulator = rig.Emulator(workdir, self.world)
        self.nginx = Nginx(workdir / "nginx")
        self.proxy = BrokerProxy()
        tag = uuid.uuid4().hex[:10]
        self.rabbit = Rabbit(BROKER_URL, f"tgc.soak.{tag}", f"tgc.soak.{tag}.events")
        self.server: rig.Server | None = None
        self.api: ApiClient | None = None
        self.raw = AsyncHTTPClient(force_instance=True, max_clients=plan.concurrency)
        self.t0 = 0.0

    # --- the whole run ----------------------------------------------------------------------

    async def run(self) -> Results:
        """The whole run; a part that breaks it (a life that does not start, a warm-up that
        never ends) is recorded in `fatal`, and the checks still run on what was seen."""
        try:
            control = await self.emulator.start()
            await asyncio.to_thread(self.nginx.start)
            await self.proxy.accept()
            async with self.rabbit.consumer() as consumer:
                self.res.consumer = consumer
                await self._start_server()
                assert self.server is not None and self.api is not None
                pushes = rig.Pushes(control, self.source, self.rng)
                self.res.pushes = pushes
                parts = rig.Rig(control, self.server, self.nginx, self.proxy)
                await self._warm_up()
                await self._measured(parts, pushes)
                await rig.undo_all(parts)
                await self._drain(consumer, pushes)
                code, took = await self.server.terminate(limit=40)
                self.res.sigterm = (code, took)
                self.res.tail = self.server.tail() if code != 0 else ""
        except Exception as e:
            self.res.fatal = f"{type(e).__name__}: {e}"
            (self.workdir / "fatal.txt").write_text(traceback.format_exc())
        finally:
            await self._cleanup()
        self.res.storage_files = self.nginx.files()
        return self.res

    async def _start_server(self) -> None:
        folder = self.workdir / "server"
        folder.mkdir()
        self.emulator.make_sessions(folder / "sessions")
        port = rig.free_port()
        self.server = rig.Server(
            folder, server_props(port, self.nginx, self.proxy, self.rabbit, self.plan)
        )
        await self.server.start()
        self.api = ApiClient(self.server.url, TOKEN, AES_KEY, timeout=60,
                             max_clients=self.plan.concurrency + 4)  # fmt: skip

    async def _warm_up(self) -> None:
        """Before the clock: every account ok, the push chats subscribed, the media channel's
        files stored, each endpoint asked once (the numbers of minute 1 are the server's
        first minute of work, not its start)."""
        api = self.api
        assert api is not None
        await self._until_ok(
            "GET",
            "/api/v1/accounts",
            60,
            lambda d: all(a["state"] == "ok" for a in d["accounts"]) and len(d["accounts"]) == 3,
        )
        for username in rig.FEEDS.values():
            answer = await api.request("POST", "/api/v1/subscriptions", {"peer": f"@{username}"})
            if not answer.ok and answer.code != "ALREADY_SUBSCRIBED":
                raise RuntimeError(f"subscribing @{username}: {answer.status} {answer.error}")
        page = await self._until_ok("GET", "/api/v1/messages?peer=@tgc_media&limit=20", 30)
        keys = {d["key"] for d in rig.descriptors(page)}
        self.mix.keys.extend(sorted(keys))
        for key in sorted(keys):
            await self._until_ok("GET", f"/api/v1/media/{key}", 90,
                                 lambda d: d["state"] in ("stored", "failed"))  # fmt: skip
        for req in self.mix.every():
            await self._send(req, record=False)

    async def _until_ok(self, method: str, uri: str, limit: float, done: Any = None) -> Any:
        assert self.api is not None
        deadline = time.monotonic() + limit
        while True:
            answer = await self.api.request(method, uri)
            if answer.ok and (done is None or done(answer.data)):
                return answer.data
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {uri}: not ready in {limit:.0f} s: {answer}")
            await asyncio.sleep(0.2)

    async def _measured(self, parts: rig.Rig, pushes: rig.Pushes) -> None:
        self.t0 = time.time()
        self.res.t0 = self.t0
        end = self.t0 + self.plan.duration
        tasks = [
            asyncio.ensure_future(self._load(end)),
            asyncio.ensure_future(self._push(pushes, end)),
            asyncio.ensure_future(self._faults(parts, end)),
            asyncio.ensure_future(self._sample(end)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    # --- the load ---------------------------------------------------------------------------

    async def _load(self, end: float) -> None:
        slots = asyncio.Semaphore(self.plan.concurrency)
        gap = 1 / self.plan.rate
        running: set[asyncio.Task[None]] = set()
        next_at = time.time()
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            await slots.acquire()
            task = asyncio.ensure_future(self._one(self.mix.next(), slots))
            running.add(task)
            task.add_done_callback(running.discard)
            next_at = max(next_at + gap, time.time() - 1)  # no burst to catch up after a stall
        if running:
            await asyncio.gather(*running)

    async def _one(self, req: rig.Req, slots: asyncio.Semaphore) -> None:
        try:
            await self._send(req)
        finally:
            slots.release()

    async def _send(self, req: rig.Req, record: bool = True) -> rig.Outcome:
        assert self.api is not None
        at, t = time.time(), time.perf_counter()
        status: int | str
        code: str | None = None
        try:
            if req.raw:
                status = await self._raw(req)
            else:
                answer = await self.api.request(req.method, req.uri, req.body, headers=req.headers)
                status, code = answer.status, answer.code
                if answer.ok:
                    self._note_media(answer.data)
        except ConnectionRefusedError:
            status = rig.REFUSED
        except ConnectionResetError:
            status = rig.RESET
        except TimeoutError:
            status = rig.TIMEOUT
        except ApiError as e:
            status, code = rig.BAD_ANSWER, str(e)[:80]
        outcome = rig.Outcome(at, time.perf_counter() - t, req.label, status, code)
        if record:
            self.res.outcomes.append(outcome)
        return outcome

    async def _raw(self, req: rig.Req) -> int:
        """An unsigned request (/healthz, /metrics, /status): its status."""
        assert self.server is not None
        request = HTTPRequest(self.server.url + req.uri, method=req.method,
                              headers=req.headers, request_timeout=60)  # fmt: skip
        try:
            response = await self.raw.fetch(request, raise_error=False)
        except HTTPTimeoutError as e:
            raise TimeoutError(str(e)) from e
        except ConnectionRefusedError:
            raise
        except (HTTPClientError, OSError) as e:  # closed before an answer
            raise ConnectionResetError(str(e)) from e
        return int(response.code)

    def _note_media(self, data: Any) -> None:
        for d in rig.descriptors(data):
            if d["key"] not in self.res.api_keys:
                self.res.api_keys.add(d["key"])
                self.mix.keys.append(d["key"])

    # --- pushes, faults, samples --------------------------------------------------------------

    async def _push(self, pushes: rig.Pushes, end: float) -> None:
        next_at = time.time()
        while next_at < end:
            await asyncio.sleep(max(0.0, next_at - time.time()))
            await pushes.post_one()
            next_at += self.plan.push_every

    async def _faults(self, parts: rig.Rig, end: float) -> None:
        kinds = rig.schedule(self.plan.slots - 2)
        for n, kind in enumerate(kinds, start=1):
            start = self.t0 + n * self.plan.slot
            await asyncio.sleep(max(0.0, start - time.time()))
            fault = rig.Fault(kind, time.time())
            self.res.faults.append(fault)
            if kind == rig.SIGKILL:
                await parts.server.kill()
                fault.note = f"killed; restarted in {await parts.server.start():.1f} s"
            else:
                window = rig.fault_window(kind, self.plan.slot)
                fault.note = await rig.fault_start(parts, kind, window)
                await asyncio.sleep(max(0.0, fault.start + window - time.time()))
                await rig.fault_end(parts, kind)
            fault.end = time.time()
            fault.recovered = await self._recovered(kind, min(end, start + self.plan.slot))

    async def _recovered(self, kind: str, until: float) -> float | None:
        """When the server works again (None: not before `until`): a call that needs
        Telegram answered 200, and after the storage outage a file uploaded since, after the
        broker cut the publisher connected and an event confirmed since."""
        assert self.api is not None
        counter = {"storage down": "tgc_media_uploaded_bytes", "broker cut": "tgc_events_published"}
        name = counter.get(kind)
        before = rig.metric(await self._metrics(), name) if name else 0.0
        while time.time() < until:
            with contextlib.suppress(OSError, ApiError):
                answer = await self.api.request("GET", "/api/v1/messages?peer=@tgc_news&limit=1")
                if answer.ok:
                    text = await self._metrics() if name else ""
                    if name is None or (
                        rig.metric(text, name) > before
                        and (kind != "broker cut" or rig.metric(text, "tgc_publisher_connected"))
                    ):
                        return time.time()
            await asyncio.sleep(0.25)
        return None

    async def _metrics(self) -> str:
        assert self.server is not None
        with contextlib.suppress(OSError, HTTPClientError):
            response = await self.raw.fetch(self.server.url + "/metrics", raise_error=False)
            if response.code == 200:
                return response.body.decode()
        return ""

    async def _sample(self, end: float) -> None:
        assert self.server is not None
        while time.time() < end:
            pid = self.server.pid
            figures = rig.proc_figures(pid) if pid is not None else None
            if figures is not None:
                self.res.samples.append((time.time(), self.server.lives, *figures))
            await asyncio.sleep(1.0)

    # --- the end ----------------------------------------------------------------------------

    async def _drain(self, consumer: Consumer, pushes: rig.Pushes) -> None:
        """Waits (bounded) for each post's message.new and for every file to be stored."""
        t = time.time()
        expected = {p.event_id for p in pushes.posted}
        limit = 60 + 2 * self.plan.poll_interval
        with contextlib.suppress(TimeoutError):
            await consumer.wait_until(
                lambda c: expected <= {m.message_id for m in c.messages}, within=limit
            )
        self.res.drain_events = time.time() - t
        keys = self.res.expected_keys()
        t = time.time()
        pending = set(keys)
        while pending and time.time() - t < 120:
            for key in sorted(pending):
                with contextlib.suppress(OSError, ApiError):
                    assert self.api is not None
                    answer = await self.api.request("GET", f"/api/v1/media/{key}")
                    state = answer.data.get("state") if answer.ok else answer.code
                    self.res.media_state[key] = state
                    if state in ("stored", "failed"):
                        pending.discard(key)
            if pending:
                await asyncio.sleep(0.5)
        self.res.drain_media = time.time() - t
        if self.server is not None and self.server.pid is not None:
            figures = rig.proc_figures(self.server.pid)
            if figures is not None:
                self.res.idle = figures

    async def _cleanup(self) -> None:
        if self.api is not None:
            self.api.close()
        self.raw.close()
        if self.server is not None:
            self.server.ensure_dead()
            self.res.log_files = sorted(self.server.log_file.parent.glob("tgc.log*"))
        await self.proxy.close()
        await asyncio.to_thread(self.nginx.stop)
        await self.emulator.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(15), self.rabbit.channel() as channel:
                await channel.queue_delete(self.rabbit.queue)
                await channel.exchange_delete(self.rabbit.exchange)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="the measured run (≥ 1)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s at most")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    parser.add_argument("--push-every", type=float, default=1.0, help="seconds between posts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the workdir even on PASS")
    parser.add_argument("--json", type=Path, help="also write the figures and checks here")
    args = parser.parse_args()
    if args.minutes < 1:
        parser.error("--minutes: at least 1")
    plan = Plan(args.minutes, args.rate, args.concurrency, args.push_every, args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tgc-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"soak: {plan.minutes:g} min, a fault every {plan.slot:.0f} s "
          f"({plan.slots - 2} faults), {plan.rate:g} req/s at most {plan.concurrency} in flight, "
          f"a post every {plan.push_every:g} s; workdir {workdir}", flush=True)  # fmt: skip
    soak = Soak(plan, workdir)
    results = asyncio.run(soak.run())
    checks = check_all(results, soak.source, soak.nginx)
    summary = print_report(results, checks)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    passed = all(c.ok for c in checks)
    if passed and not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not passed:
        print(f"workdir kept: {workdir}")
    print("SOAK PASS" if passed else "SOAK FAIL", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
