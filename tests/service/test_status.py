"""The /status page: who may see it, what it shows (escaped), the error ring, and the page
as headless Chromium draws it against the real stack (emulator, pool, processor, broker)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import bind_sockets

from model.joinmap import JoinMap
from service.cryptor import Cipher, Signer
from service.handler import make_app, make_server
from service.metrics import ServiceMetrics
from service.status import MESSAGE_MAX, ErrorLog, StatusPage
from tests.fixtures.ops import OpsStack, status_allow_from
from tests.fixtures.pools import DownloadingPool, reloaded_fleet
from tests.fixtures.wait import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class FakePool:
    def __init__(self, accounts: list[dict[str, Any]]) -> None:
        self._accounts = accounts

    def accounts(self) -> list[dict[str, Any]]:
        return self._accounts

    def usable(self) -> bool:
        return True


async def serve(app: Any) -> tuple[str, Callable[[], None]]:
    sockets = bind_sockets(0, "127.0.0.1")
    server = make_server(app, 1 << 20)
    server.add_sockets(sockets)
    return f"http://127.0.0.1:{sockets[0].getsockname()[1]}", server.stop


def small_app(allow: Callable[[str], bool] | None, accounts: list[dict[str, Any]]) -> Any:
    return make_app(
        pool=FakePool(accounts),  # type: ignore[arg-type]
        processor=None,
        joinmap=None,  # type: ignore[arg-type]
        subscriptions=None,
        signer=Signer("t"),
        cipher=Cipher.create("aes-256-gcm", "00" * 32),
        metrics=CollectorRegistry(),
        status_allow=allow,
    )


# --- who may see it -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidrs", "code"),
    [("127.0.0.0/8, ::1/128", 200), ("127.0.0.1/32", 200), ("127.9.0.0/16, ::2/128", 403)],
)
async def test_status_answers_only_the_allowed_networks(tmp_path: Path, cidrs: str, code: int) -> None:
    url, stop = await serve(small_app(status_allow_from(tmp_path, cidrs), []))
    try:
        response = await AsyncHTTPClient().fetch(url + "/status", raise_error=False)
    finally:
        stop()
    assert response.code == code
    if code == 403:
        assert orjson.loads(response.body)["error"]["code"] == "FORBIDDEN"
        assert b"<table" not in response.body
    else:
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src" not in response.headers["Content-Security-Policy"]
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_status_is_for_nobody_when_make_app_is_given_no_allow() -> None:
    url, stop = await serve(small_app(None, []))
    try:
        response = await AsyncHTTPClient().fetch(url + "/status", raise_error=False)
    finally:
        stop()
    assert response.code == 403


# --- what it shows --------------------------------------------------------------------------


def test_everything_on_the_page_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    pool = FakePool([{"name": evil, "phone": "+1***", "user_id": 7, "state": "ok"}])
    errors = ErrorLog()
    errors.handle(logging.makeLogRecord({"msg": "bad %s", "args": (evil,), "levelno": 30,
                                         "levelname": "WARNING", "name": "x"}))
    page = StatusPage(pool=pool, metrics=ServiceMetrics(CollectorRegistry()), errors=errors)
    html = page.render().decode()
    assert "<script>" not in html
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 2


def test_context_shows_accounts_by_state_and_no_queues_without_a_processor() -> None:
    pool = FakePool([{"name": "b", "state": "ok"}, {"name": "a", "state": "banned"}])
    context = StatusPage(pool=pool).context(draining=True)
    assert [a["name"] for a in context["accounts"]] == ["a", "b"]
    assert context["states"] == {"ok": 1, "banned": 1}
    assert context["queues"] == [] and context["draining"] is True


def test_queues_show_the_subscriber_counts_and_its_joined_chats(tmp_path: Path) -> None:
    joinmap = JoinMap(tmp_path / "joinmap.sqlite3")
    try:
        joinmap.record_join(-1002001, "acc1", type="channel")
        joinmap.record_join(-1002001, "acc2", type="channel")  # one chat, two accounts
        subscriber = SimpleNamespace(published=7, duplicates=2, polls=5, poll_found=1)
        page = StatusPage(pool=FakePool([]), subscriber=subscriber, joinmap=joinmap)
        assert page.context()["queues"] == [
            ("subscribed chats", "1"),
            ("subscriber events", "7"),
            ("subscriber duplicates dropped", "2"),
            ("chats polled", "5"),
            ("messages polls found (pushes missed)", "1"),
        ]
        subscriber.poll_found += 2  # read when the page is drawn, not kept
        assert '<td>messages polls found (pushes missed)</td><td class="n">3</td>' in (
            page.render().decode()
        )
    finally:
        joinmap.close()
    # A subscriptions service without the counters (a fake) adds no rows.
    bare = StatusPage(pool=FakePool([]), subscriber=SimpleNamespace(subscribe=None))
    assert bare.context()["queues"] == []


def test_the_error_log_keeps_the_message_only_bounded_and_from_warning_up() -> None:
    logger = logging.getLogger("tests.status.errorlog")
    logger.propagate = False
    errors = ErrorLog(capacity=3)
    logger.addHandler(errors)
    try:
        logger.info("not shown")
        try:
            raise ValueError("secret-in-the-exception")
        except ValueError:
            logger.exception("call failed for %s", "acc1")
        for i in range(3):
            logger.warning("w%d", i)
        logger.error("x" * (MESSAGE_MAX + 50))
    finally:
        logger.removeHandler(errors)
    recent = errors.recent()
    assert [e.message for e in recent[1:]] == ["w2", "w1"]
    assert len(recent[0].message) == MESSAGE_MAX and recent[0].message.endswith("…")
    assert errors.total == 5  # the exception's record counted, then pushed out
    errors2 = ErrorLog()
    logger.addHandler(errors2)
    try:
        try:
            raise ValueError("secret-in-the-exception")
        except ValueError:
            logger.exception("call failed for %s", "acc1")
    finally:
        logger.removeHandler(errors2)
    (only,) = errors2.recent()
    assert only.message == "call failed for acc1" and only.level == "ERROR"
    assert "secret" not in repr(only)


async def test_the_page_after_real_activity(ops_stack: OpsStack) -> None:
    s = ops_stack
    s.rpc.flood_wait("contacts.search", 30, times=1)
    assert (await s.api("/api/v1/search?q=tgc_")).status == 200
    assert (await s.api("/api/v1/messages?peer=@tgc_media&limit=20")).status == 200
    await wait_for(lambda: s.processor.stats()["in_progress"] == 0 and s.processor.uploaded_bytes > 0)
    response = await s.fetch("/status")
    assert response.code == 200
    html = response.body.decode()
    for name in ("acc1001", "acc1002"):
        assert f"<td>{name}</td>" in html
    assert '<td class="state-flood_wait">flood_wait</td>' in html
    assert "flood wait of 30 s on other requests" in html  # the pool's warning, from the log
    assert "media downloads queued" in html and "outbox events" in html
    # This minute's row counts the API requests answered before this page.
    first_row = html.split('<table id="throughput">')[1].split("</tr>")[1]
    cells = [c.split("<")[0] for c in first_row.split('<td class="n">')[1:]]
    assert int(cells[0]) >= 2  # requests
    assert cells[4].endswith(("KB", "MB", "B"))  # downloaded bytes


# --- headless Chromium ----------------------------------------------------------------------


def chromium_args(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
    ]


async def run_chromium(*args: str, within: float = 45.0) -> tuple[int, bytes, bytes]:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out, err


def png_pixels(data: bytes) -> tuple[int, int, set[bytes]]:
    """(width, height, distinct colours) of an 8-bit RGB or RGBA PNG: just enough of a
    decoder (zlib + the five scanline filters) to tell a drawn page from a blank one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, previous, bpp)
        colours.update(bytes(line[x : x + bpp]) for x in range(0, stride, bpp * 7))
        previous = line
    return width, height, colours


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    if kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
        elif kind == 4:
            corner = prev[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
            line[i] = (line[i] + pred) & 0xFF
        else:
            raise AssertionError(f"bad PNG filter {kind}")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
async def test_chromium_draws_the_page_with_its_tables(ops_stack: OpsStack, tmp_path: Path) -> None:
    s = ops_stack
    assert (await s.api("/api/v1/peer?peer=@tgc_news")).status == 200
    logging.getLogger("tests.status").warning("a warning for the page")
    url = s.url + "/status"

    shot = tmp_path / "s.png"
    code, _, err = await run_chromium(
        *chromium_args(tmp_path / "profile-shot"),
        f"--screenshot={shot}",
        "--window-size=1200,900",
        url,
    )
    assert code == 0 and shot.exists(), err.decode(errors="replace")[-2000:]
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    # A blank page is one colour; ours has a background, white tables, dark header rows,
    # coloured states and anti-aliased text.
    assert len(colours) > 20, len(colours)

    code, dom, err = await run_chromium(
        *chromium_args(tmp_path / "profile-dom"), "--dump-dom", url
    )
    assert code == 0, err.decode(errors="replace")[-2000:]
    html = dom.decode()
    for table in ("accounts", "queues", "throughput", "errors"):
        assert f'<table id="{table}">' in html
    assert "<td>acc1001</td>" in html and "a warning for the page" in html


def test_downloads_show_each_accounts_window_per_dc_and_its_pace() -> None:
    pool = DownloadingPool()
    pool.clients[0].name = "<b>busy</b>"
    # DC 4's window measured a round (its throughput shows); DC 2's none yet.
    pool.clients[0].media_connections.window(4, 8).rate = 12_500_000.0
    page = StatusPage(pool=pool)  # type: ignore[arg-type]
    rows = page.context()["downloads"]
    assert [r[:3] for r in rows] == [
        ("<b>busy</b>", "2", "8 of 16"),
        ("<b>busy</b>", "4", "8 of 8 · 12.5 MB/s"),
    ]
    downloaded, pace, floods = rows[0][4:]
    assert downloaded == "5.0 MB" and pace.endswith("(waiting 3 s)") and floods == "1"
    html = page.render().decode()
    assert '<table id="downloads">' in html and "&lt;b&gt;busy&lt;/b&gt;" in html
    assert "<b>busy" not in html
    assert "no downloads yet" in StatusPage(pool=FakePool([])).render().decode()


async def test_the_reloads_show_the_last_one_and_the_files_it_refused(tmp_path: Path) -> None:
    fleet = await reloaded_fleet(tmp_path)
    page = StatusPage(pool=FakePool([]), fleet=fleet)
    rows = dict(page.context()["reloads"])
    assert rows["reloads"] == "1"
    assert rows["last reload"].endswith("UTC: 0 added, 0 removed, 0 reconnected, 1 refused")
    assert "enabeld" in rows["refused: acc1"]
    html = page.render().decode()
    assert 'id="reloads"' in html and "refused: acc1" in html
    (tmp_path / "sessions").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError):
        await fleet.reload()
    rows = dict(page.context()["reloads"])
    assert rows["reloads"] == "1 (1 failed)" and "failed: FileNotFoundError" in rows["last reload"]
    # Without a fleet (a server built without one): no section.
    assert 'id="reloads"' not in StatusPage(pool=FakePool([])).render().decode()

