"""The parts bench/soak.py runs and what it knows of them: the soak's world, the emulator
and the server as processes, the load mix, the pushes and the faults.

Every part here is a real process or a real connection on 127.0.0.1: the DC emulator
(`python -m tests.fakedc serve` with its control channel, tests/fakedc/control.py), the
server (`python -m tests.fakedc.launch serve`, start.py with the emulator's RSA key so it can
reach DC 2), nginx WebDAV (tests/fixtures/nginx.py) and RabbitMQ behind a TCP proxy that cuts
and refuses (tests/fixtures/rabbitmq.py BrokerProxy). Times are wall-clock (`time.time()`),
so nginx's access log and the broker consumer's arrivals line up with the faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.utils import media_key  # noqa: E402
from tests.fakedc import demo_world as dw  # noqa: E402
from tests.fakedc import render  # noqa: E402
from tests.fakedc.control import ControlClient  # noqa: E402
from tests.fakedc.world import DEFAULT_DATE, default_photo_sizes  # noqa: E402

API_ID, API_HASH = 12345, "0123456789abcdef0123456789abcdef"
ACCOUNTS = (dw.ACCOUNT_A, dw.ACCOUNT_B, dw.ACCOUNT_C)
# The soak's own chats: three the accounts are subscribed to for the whole run (posts are
# pushed into them), one the load mix subscribes and unsubscribes.
FEEDS = {3001: "soak_feed_a", 3002: "soak_feed_b", 3003: "soak_talk"}
CHURN = (3004, "soak_churn")
FIRST_DOC, FIRST_PHOTO = 100_000, 200_000
# Outcomes that are not an HTTP status.
REFUSED, RESET, TIMEOUT, BAD_ANSWER = "refused", "reset", "timeout", "bad answer"
# The 503s docs/API.md lists (and /healthz's, which is plain JSON with a `status`).
DOCUMENTED_503 = frozenset({"NO_ACCOUNT_AVAILABLE", "SHUTTING_DOWN", "UNAVAILABLE"})


def marked(chat_id: int) -> int:
    """A channel's Bot-API id, as events name it."""
    return -(10**12) - chat_id


# --- the world ---------------------------------------------------------------------------


def world_dict() -> dict[str, Any]:
    """The demo world plus the soak's chats (no account in them until the server joins)."""
    data = dw.demo_dict()
    for chat_id, username in [*FEEDS.items(), CHURN]:
        kind = "megagroup" if username == "soak_talk" else "broadcast"
        data["chats"].append({
            "id": chat_id, "kind": kind, "title": username.replace("_", " ").title(),
            "username": username, "creator_id": dw.USER_ALICE,
            "members": {str(dw.USER_ALICE): DEFAULT_DATE, str(dw.USER_BOB): DEFAULT_DATE},
        })  # fmt: skip
        data["messages"].append({"chat": chat_id, "text": f"{username} opens"})
    return data


@dataclass
class FileSource:
    """Where the bytes of each media key come from: key → (the emulator's file key, size)."""

    files: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_photo(self, photo: dict[str, Any]) -> None:
        sizes = photo.get("sizes") or [vars(s) for s in default_photo_sizes(photo["id"])]
        for s in sizes:
            key = media_key("photo", photo["id"], s["type"])
            self.files[key] = (render.photo_file_key(photo["id"], s["type"]), s["size"])

    def add_document(self, doc: dict[str, Any]) -> None:
        size = int(doc.get("size", 10_000))
        self.files[media_key("document", doc["id"], "")] = (
            render.document_file_key(doc["id"]),
            size,
        )
        if doc.get("thumb"):
            thumb = (render.thumb_file_key(doc["id"], "m"), 9_000 + doc["id"] % 500)
            self.files[media_key("document", doc["id"], "m")] = thumb

    @classmethod
    def of_world(cls, data: dict[str, Any]) -> FileSource:
        source = cls()
        for photo in data.get("photos", []):
            source.add_photo(photo)
        for doc in data.get("documents", []):
            source.add_document(doc)
        return source


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_figures(pid: int) -> tuple[float, int] | None:
    """(RSS in MB, open descriptors) of a live process, from /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024, fds
    return None


class Emulator:
    """`python -m tests.fakedc serve` with a control channel, in its own process."""

    def __init__(self, workdir: Path, world: dict[str, Any]) -> None:
        self.workdir = workdir
        self.world_file = workdir / "world.json"
        self.world_file.write_text(json.dumps(world), encoding="utf-8")
        self.keys = workdir / "fakedc.keys"
        self.ready_file = workdir / "fakedc.ready"
        self.out = (workdir / "fakedc.out").open("wb")
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.control: ControlClient | None = None

    async def start(self) -> ControlClient:
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited on below
            [sys.executable, "-m", "tests.fakedc", "serve", "--port", str(free_port()),
             "--world", str(self.world_file), "--keys", str(self.keys), "--control-port", "0",
             "--ready-file", str(self.ready_file), "--log-level", "WARNING"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.out,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start: {self.tail()}")
            await asyncio.sleep(0.05)
        ready = json.loads(self.ready_file.read_text())
        self.ports = {dc: int(port) for dc, port in ready["dcs"].items()}
        self.control = ControlClient(int(ready["control"]))
        await self.control.call("ping")
        return self.control

    def make_sessions(self, folder: Path) -> None:
        from tests.fakedc.session import make_session

        for user_id in ACCOUNTS:
            make_session(folder / f"acc{user_id}", 1, "127.0.0.1", self.ports["1"], user_id,
                         keys_file=self.keys)  # fmt: skip

    def tail(self) -> str:
        self.out.flush()
        return Path(self.out.name).read_text(errors="replace")[-2000:]

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


class Server:
    """The server (`start.py serve` through tests/fakedc/launch.py) on a fixed port and
    one data dir for all its lives; `kill()` is SIGKILL, `terminate()` the graceful stop."""

    def __init__(self, folder: Path, props: dict[str, str]) -> None:
        from common.const import load_settings

        self.folder = folder
        self.config = folder / "config.properties"
        self.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.settings = load_settings(self.config, env={})
        self.url = f"http://127.0.0.1:{props['server.port']}"
        self.run_dir = self.settings.run_dir
        self.log_file = self.settings.log.file
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0
        self.serving = False

    @property
    def pid(self) -> int | None:
        """The serving life's pid (None while one starts, and once it is gone)."""
        alive = self.proc is not None and self.proc.poll() is None
        return self.proc.pid if alive and self.proc is not None and self.serving else None

    async def start(self, limit: float = 60.0) -> float:
        """Starts a life and returns once it serves (its url file written); the seconds it took."""
        self.lives += 1
        self.serving = False
        t0 = time.time()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TGC_")}
        with (self.folder / f"server-{self.lives}.out").open("wb") as sink:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; waited on below
                [sys.executable, "-m", "tests.fakedc.launch", "serve", "--config",
                 str(self.config), "--no-console"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
            )  # fmt: skip
        proc = self.proc
        while not self._serving(proc.pid):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited {proc.returncode}: {self.tail()}")
            if time.time() - t0 > limit:
                raise RuntimeError(f"the server did not serve in {limit:.0f} s: {self.tail()}")
            await asyncio.sleep(0.05)
        self.serving = True
        return time.time() - t0

    def _serving(self, pid: int) -> bool:
        # A killed life leaves its pid file: serving is this pid's file and a url file (start
        # removes the old one, and writes its own once it listens).
        try:
            held = int((self.run_dir / "tgc.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return False
        return held == pid and (self.run_dir / "tgc.url").exists()

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await asyncio.to_thread(self.proc.wait)

    async def terminate(self, limit: float) -> tuple[int | None, float]:
        """SIGTERM; (exit code or None if it did not exit in `limit` s, seconds taken)."""
        assert self.proc is not None
        t0 = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, time.time() - t0
        return code, time.time() - t0

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self) -> str:
        out = self.folder / f"server-{self.lives}.out"
        text = out.read_text(errors="replace")[-1500:] if out.exists() else ""
        log = self.log_file.read_text(errors="replace")[-1500:] if self.log_file.exists() else ""
        return f"\n--- output ---\n{text}\n--- log ---\n{log}"


# --- the load mix --------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    """One request of the mix: signed through the reference client unless `raw`."""

    label: str
    method: str
    uri: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    raw: bool = False


@dataclass
class Outcome:
    at: float  # time.time() when sent
    seconds: float
    label: str
    status: int | str  # the HTTP status, or REFUSED / RESET / TIMEOUT / BAD_ANSWER
    code: str | None = None

    @property
    def server_error(self) -> bool:
        """A 5xx the docs don't list (every 5xx but the documented 503s)."""
        if not isinstance(self.status, int) or self.status < 500:
            return False
        health = self.label.startswith("healthz")  # /healthz's 503 names no code
        return not (self.status == 503 and (self.code in DOCUMENTED_503 or health))


class Mix:
    """The bounded load: every endpoint, media and subscriptions, and bad requests."""

    HISTORY_PEERS = ("@tgc_news", "@tgc_chat")
    PEERS = ("@tgc_news", "@tgc_media", "@alice_w", "@tgc_chat", "-1000000002001", "@helper_bot",
             "@soak_feed_a", "@soak_talk")  # fmt: skip

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.keys: list[str] = []  # media keys seen in answers, for GET /api/v1/media/KEY
        self._churn_joined = False
        self._table: list[tuple[float, Callable[[], Req]]] = [
            (3, self._peer), (4, self._history), (1, self._media_page), (2, self._ids),
            (2, self._feed), (2, self._participants), (1, self._search), (3, self._media),
            (1, lambda: Req("accounts", "GET", "/api/v1/accounts")),
            (1, lambda: Req("subscriptions", "GET", "/api/v1/subscriptions")),
            (0.5, self._churn), (1, self._ops), (2.5, self._bad),
        ]  # fmt: skip
        self._weights = [w for w, _ in self._table]

    def every(self) -> list[Req]:
        """One request of each kind (the warm-up)."""
        return [make() for _, make in self._table]

    def next(self) -> Req:
        (make,) = self.rng.choices([m for _, m in self._table], self._weights)
        return make()

    def _peer(self) -> Req:
        return Req("peer", "GET", f"/api/v1/peer?peer={self.rng.choice(self.PEERS)}")

    def _history(self) -> Req:
        r = self.rng
        peer = r.choice(self.HISTORY_PEERS)
        uri = f"/api/v1/messages?peer={peer}&limit={r.randint(1, 50)}&offset_id={r.randint(0, 150)}"
        return Req("history", "GET", uri)

    def _media_page(self) -> Req:
        return Req("media page", "GET", "/api/v1/messages?peer=@tgc_media&limit=20")

    def _ids(self) -> Req:
        ids = ",".join(str(i) for i in self.rng.sample(range(1, 160), 3))  # some past the end
        return Req("ids", "GET", f"/api/v1/messages?peer=@tgc_news&ids={ids}")

    def _feed(self) -> Req:
        peer = self.rng.choice(list(FEEDS.values()))
        return Req("feed", "GET", f"/api/v1/messages?peer=@{peer}&limit=10")

    def _participants(self) -> Req:
        offset = self.rng.randrange(0, 300, 50)
        return Req(
            "participants", "GET", f"/api/v1/participants?peer=@tgc_chat&limit=50&offset={offset}"
        )

    def _search(self) -> Req:
        q = self.rng.choice(("news", "soak", "media", "chat"))
        return Req("search", "GET", f"/api/v1/search?q={q}&limit=10")

    def _media(self) -> Req:
        if not self.keys:
            return self._media_page()
        return Req("media", "GET", f"/api/v1/media/{self.rng.choice(self.keys)}")

    def _churn(self) -> Req:
        self._churn_joined = not self._churn_joined
        if self._churn_joined:
            return Req("subscribe", "POST", "/api/v1/subscriptions", body={"peer": "@soak_churn"})
        return Req("unsubscribe", "DELETE", "/api/v1/subscriptions?peer=@soak_churn")

    def _ops(self) -> Req:
        path = self.rng.choice(("/healthz", "/metrics", "/status"))
        return Req(path.lstrip("/"), "GET", path, raw=True)

    def _bad(self) -> Req:
        r = self.rng.randrange(10)
        news = "/api/v1/messages?peer=@tgc_news"
        bad: list[Req] = [
            Req("bad signature", "GET", "/api/v1/accounts", headers={"X-Signature": "0" * 64}),
            Req("stale timestamp", "GET", "/api/v1/accounts", headers={"X-Timestamp": "1000000000"}),
            Req("unknown param", "GET", f"{news}&offsetid=5"),
            Req("limit too big", "GET", f"{news}&limit=1000"),
            Req("unknown path", "GET", "/api/v1/nope"),
            Req("wrong method", "PUT", "/api/v1/peer?peer=@tgc_news", body={}),
            Req("unknown peer", "GET", "/api/v1/peer?peer=-1000009999999"),
            Req("body too large", "POST", "/api/v1/subscriptions", body={"peer": "x" * 70_000}),
            Req("query too short", "GET", "/api/v1/search?q=ab"),
            # A form's Content-Type on a route that takes none (issue 11 item 5: was a 500).
            Req("healthz multipart", "GET", "/healthz", raw=True,
                headers={"Content-Type": "multipart/form-data; boundary=soak"}),
        ]  # fmt: skip
        return bad[r]


def descriptors(data: Any) -> list[dict[str, Any]]:
    """Every media descriptor (a dict with `key` and `state`) in an answer, at any depth."""
    found: list[dict[str, Any]] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("key"), str) and "state" in item:
                found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


# --- pushes --------------------------------------------------------------------------------


@dataclass
class Posted:
    at: float
    chat: int
    msg_id: int
    key: str | None  # the media key of its file, if it has one

    @property
    def event_id(self) -> str:
        return f"{marked(self.chat)}:{self.msg_id}:message.new"


class Pushes:
    """Posts into the subscribed chats through the emulator: every third with a file, new
    ones (documents of several kinds and sizes, some on DC 2, photos) and now and then one
    posted before (the same key: it must be stored once)."""

    def __init__(self, control: ControlClient, source: FileSource, rng: random.Random) -> None:
        self.control = control
        self.source = source
        self.rng = rng
        self.posted: list[Posted] = []
        self.errors: list[str] = []
        self._docs: list[tuple[str, dict[str, int]]] = []  # (key, media) posted so far
        self._next_doc = FIRST_DOC
        self._next_photo = FIRST_PHOTO
        self._n = 0

    async def post_one(self) -> None:
        self._n += 1
        chat = list(FEEDS)[self._n % len(FEEDS)]
        media: dict[str, int] | None = None
        key: str | None = None
        if self._n % 3 == 0:
            key, media = await self._file()
        try:
            info = await self.control.call(
                "post_message", chat_id=chat, text=f"soak post {self._n}", media=media
            )
        except Exception as e:  # the run goes on; the report lists it
            self.errors.append(f"post {self._n}: {e}")
            return
        self.posted.append(Posted(time.time(), chat, int(info["id"]), key))

    async def _file(self) -> tuple[str, dict[str, int]]:
        r = self.rng
        if self._docs and r.random() < 0.15:
            return r.choice(self._docs)
        key: str
        media: dict[str, int]
        if r.random() < 0.25:
            photo_id = self._next_photo
            self._next_photo += 1
            spec = {"id": photo_id, "dc_id": 2 if r.random() < 0.3 else 1}
            answer = await self.control.call("add_photo", spec=spec)
            sizes = [{"type": t, "size": s} for t, s in answer["sizes"].items()]
            self.source.add_photo({"id": photo_id, "sizes": sizes})
            best = max(sizes, key=lambda s: int(s["size"]))["type"]
            key, media = media_key("photo", photo_id, str(best)), {"photo": photo_id}
        else:
            doc_id = self._next_doc
            self._next_doc += 1
            kind = r.choice(("file", "video", "audio", "animation", "voice"))
            doc = {"id": doc_id, "kind": kind, "size": r.randint(20_000, 1_500_000),
                   "dc_id": 2 if r.random() < 0.2 else 1}  # fmt: skip
            await self.control.call("add_document", spec=doc)
            self.source.add_document(doc)
            key, media = media_key("document", doc_id, ""), {"document": doc_id}
        self._docs.append((key, media))
        return key, media


# --- faults --------------------------------------------------------------------------------

FAULT_KINDS = ("flood wait", "rpc errors", "latency spike", "storage down", "broker cut")
SIGKILL = "sigkill+restart"


@dataclass
class Fault:
    kind: str
    start: float
    end: float = 0.0  # when it was undone (SIGKILL: when the new life served)
    recovered: float | None = None  # when a signed request succeeded again after it
    note: str = ""


def schedule(slots: int) -> list[str]:
    """The kinds in rotation, one per slot, with the one SIGKILL in the middle slot."""
    kinds = [FAULT_KINDS[i % len(FAULT_KINDS)] for i in range(slots - 1)]
    kinds.insert(slots // 2, SIGKILL)
    return kinds[:slots]


@dataclass
class Rig:
    """What the fault actions reach."""

    control: ControlClient
    server: Server
    nginx: Any  # tests.fixtures.nginx.Nginx
    proxy: Any  # tests.fixtures.rabbitmq.BrokerProxy


def fault_window(kind: str, slot: float) -> float:
    """How long a fault lasts: a third of its slot; a burst of INTERNAL at least 10 s (a call
    outlives a shorter one through Telethon's own retries, 2 s apart), leaving 4 s of the
    slot to recover."""
    window = slot / 3
    if kind == "rpc errors":
        window = min(max(window, 10.0), slot - 4)
    return window


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in Prometheus text (a counter's `_total` included)."""
    total = 0.0
    for line in text.splitlines():
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        if sample in (name, f"{name}_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def fault_start(rig: Rig, kind: str, window: float) -> str:
    """Breaks one thing; returns what it did, for the report."""
    c = rig.control
    if kind == "flood wait":
        seconds = max(4, round(window))
        for user_id in ACCOUNTS[:2]:  # the third account serves meanwhile
            for method in ("messages.getHistory", "channels.getFullChannel",
                           "channels.getParticipants", "upload.getFile"):  # fmt: skip
                await c.call("flood_wait", method=method, seconds=seconds, times=None,
                             user_id=user_id)  # fmt: skip
        return f"FLOOD_WAIT_{seconds} on 4 methods for 2 of 3 accounts"
    if kind == "rpc errors":
        # Every call of one account fails for the window (Telegram's INTERNAL is a DC's or
        # a connection's trouble, not the whole pool's): the others can serve meanwhile.
        await c.call("fail", method="*", code=500, message="INTERNAL", times=10**9,
                     user_id=ACCOUNTS[0])  # fmt: skip
        return "500 INTERNAL to every call of one account (of 3)"
    if kind == "latency spike":
        await c.call("set_latency", latency={"*": 1.5})
        return "+1.5 s on every answer"
    if kind == "storage down":
        await asyncio.to_thread(rig.nginx.stop)
        return "nginx stopped"
    if kind == "broker cut":
        await rig.proxy.cut()
        return "broker connections cut, new ones refused"
    raise ValueError(kind)


async def fault_end(rig: Rig, kind: str) -> None:
    if kind in ("flood wait", "rpc errors"):
        await rig.control.call("clear_faults")
    elif kind == "latency spike":
        await rig.control.call("set_latency", latency={"*": 0.0})
    elif kind == "storage down":
        await asyncio.to_thread(rig.nginx.start)
    elif kind == "broker cut":
        await rig.proxy.accept()


async def undo_all(rig: Rig) -> None:
    """Whatever fault was on when the run ended is off."""
    with contextlib.suppress(Exception):
        await rig.control.call("clear_faults")
        await rig.control.call("set_latency", latency={"*": 0.0})
    if not rig.nginx.running:
        await asyncio.to_thread(rig.nginx.start)
    await rig.proxy.accept()
