"""A stored file's bytes through `content_url` (GET /files/KEY?exp=&sig=), and POST
/api/v1/media/KEY, on the real server: `start.py serve` as its own process (through
tests/fakedc/launch.py), the emulator (two DCs) in this process, nginx WebDAV for the 302.

- media.auto_download=false: a history page describes the files (state null) and queues
  nothing; POST /api/v1/media/KEY queues one, which ends stored; its `content_url` serves
  the emulator's bytes exactly, whole and in ranges (first, middle, last byte, a suffix,
  an open end; a range past the end 416), with its Content-Type, Content-Disposition and
  ETag (If-None-Match 304); HEAD; an expired, a forged and a missing `sig` 403 with no body;
  POST of a key no answer carried 404, of a malformed key 400;
- storage.url on nginx: `/files/...` answers 302 to the stored object's URL.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from common.utils import media_key
from service.apiclient import ApiClient
from tests.fakedc import demo_world as dw
from tests.fakedc import files, render
from tests.fixtures.nginx import Nginx
from tests.fixtures.server_config import AES_KEY, TOKEN, write_config
from tests.fixtures.server_process import ServerProcess
from tests.fixtures.wait import wait_for

PDF_SIZE = 250_000  # demo_world's FILE_PDF, "report.pdf"
PDF_KEY = media_key("document", dw.FILE_PDF, "")
PDF_BYTES = files.read(render.document_file_key(dw.FILE_PDF), PDF_SIZE)
PDF_PAGE = f"/api/v1/messages?peer=@tgc_media&ids={dw.MEDIA_IDS['file']}"


def _sessions(telegram_session: Callable[..., Path]) -> None:
    for user_id in (dw.ACCOUNT_A, dw.ACCOUNT_B):
        telegram_session(user_id, name=f"acc{user_id}")


@pytest.fixture
async def server(tmp_path: Path, telegram_session: Callable[..., Path]) -> Any:
    _sessions(telegram_session)
    s = ServerProcess(write_config(tmp_path, {"media.auto_download": "false"}))
    try:
        yield s
    finally:
        await s.stop()


async def stored_record(api: ApiClient, key: str) -> dict[str, Any]:
    record: dict[str, Any] = {}

    async def stored() -> bool:
        nonlocal record
        answer = await api.request("GET", f"/api/v1/media/{key}")
        assert answer.ok, answer
        record = answer.data
        assert record["state"] != "failed", record
        return bool(record["state"] == "stored")

    await wait_for(stored, within=20, what=f"{key} stored", step=0.05)
    return record


async def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> HTTPResponse:
    request = HTTPRequest(
        url, method=method, headers=headers or {}, follow_redirects=False, request_timeout=10
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


def signed(base: str, key: str, exp: int) -> str:
    sig = hmac.new(TOKEN.encode(), f"files\n{key}\n{exp}".encode(), hashlib.sha256).hexdigest()
    return f"{base}/files/{key}?exp={exp}&sig={sig}"


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_post_media_downloads_it_and_content_url_serves_the_bytes_in_ranges(
    server: ServerProcess,
) -> None:
    base = await server.start()
    async with ApiClient(base, TOKEN, AES_KEY) as api:
        # auto_download=false: described, not queued, nothing known at GET /media.
        page = await api.request("GET", PDF_PAGE)
        assert page.ok, page
        descriptor = page.data["messages"][0]["media"]
        assert descriptor["key"] == PDF_KEY and descriptor["state"] is None, descriptor
        assert descriptor["content_url"] is None
        assert (await api.request("GET", f"/api/v1/media/{PDF_KEY}")).status == 404

        queued = await api.request("POST", f"/api/v1/media/{PDF_KEY}")
        assert queued.ok and queued.data["state"] in ("pending", "downloading"), queued
        record = await stored_record(api, PDF_KEY)
        # A page now shows it stored, with a link of its own.
        page = await api.request("GET", PDF_PAGE)
        assert page.data["messages"][0]["media"]["content_url"].startswith(f"/files/{PDF_KEY}?")
        # POST again: nothing to do, the stored record.
        again = await api.request("POST", f"/api/v1/media/{PDF_KEY}", {})
        assert again.ok and again.data["state"] == "stored", again

        unknown = await api.request("POST", "/api/v1/media/" + "0" * 32)
        assert unknown.status == 404 and unknown.error["code"] == "NOT_FOUND", unknown
        bad = await api.request("POST", "/api/v1/media/XYZ")
        assert bad.status == 400 and bad.error["param"] == "key", bad

    link = base + record["content_url"]
    whole = await fetch(link)
    assert whole.code == 200 and whole.body == PDF_BYTES
    assert whole.headers["Content-Type"] == record["mime_type"]
    assert whole.headers["Content-Disposition"].startswith('attachment; filename="report.pdf"')
    assert whole.headers["ETag"] == f'"{PDF_KEY}"'
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert "X-Encryption" not in whole.headers

    ranges = {
        "bytes=0-0": (0, 1),  # the first byte
        "bytes=100000-100999": (100_000, 101_000),  # the middle
        f"bytes={PDF_SIZE - 1}-{PDF_SIZE - 1}": (PDF_SIZE - 1, PDF_SIZE),  # the last byte
        "bytes=-500": (PDF_SIZE - 500, PDF_SIZE),  # a suffix
        "bytes=249000-": (249_000, PDF_SIZE),  # an open end
    }
    for header, (start, end) in ranges.items():
        part = await fetch(link, headers={"Range": header})
        assert part.code == 206, (header, part.code)
        assert part.body == PDF_BYTES[start:end], header
        assert part.headers["Content-Range"] == f"bytes {start}-{end - 1}/{PDF_SIZE}"
    beyond = await fetch(link, headers={"Range": f"bytes={PDF_SIZE}-{PDF_SIZE + 10}"})
    assert beyond.code == 416 and beyond.headers["Content-Range"] == f"bytes */{PDF_SIZE}"

    cached = await fetch(link, headers={"If-None-Match": f'"{PDF_KEY}"'})
    assert cached.code == 304 and not cached.body
    head = await fetch(link, method="HEAD")
    assert head.code == 200 and int(head.headers["Content-Length"]) == PDF_SIZE

    expired = signed(base, PDF_KEY, int(time.time()) - 1)
    sig_at = link.index("sig=") + 4
    forged = link[:sig_at] + ("0" if link[sig_at] != "0" else "1") + link[sig_at + 1 :]
    missing = link[: link.index("&sig=")]
    other_key = signed(base, PDF_KEY, int(time.time()) + 60).replace(PDF_KEY, "f" * 32, 1)
    for refused in (expired, forged, missing, other_key):
        answer = await fetch(refused)
        assert answer.code == 403 and answer.body == b"", (refused, answer.code)
    # A valid link to a key not stored here: 404.
    nothing = await fetch(signed(base, "e" * 32, int(time.time()) + 60))
    assert nothing.code == 404


@pytest.fixture
async def nginx_server(
    tmp_path: Path, telegram_session: Callable[..., Path], nginx_dav: Nginx
) -> Any:
    _sessions(telegram_session)
    props = {"storage.url": nginx_dav.base_url, "storage.retry_max_delay": "1"}
    s = ServerProcess(write_config(tmp_path, props))
    try:
        yield s
    finally:
        await s.stop()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_content_url_redirects_to_the_http_storage(
    nginx_server: ServerProcess, nginx_dav: Nginx
) -> None:
    base = await nginx_server.start()
    async with ApiClient(base, TOKEN, AES_KEY) as api:
        assert (await api.request("GET", PDF_PAGE)).ok  # auto_download: queued
        record = await stored_record(api, PDF_KEY)
    assert record["url"].startswith(nginx_dav.base_url + "/")
    answer = await fetch(base + record["content_url"])
    assert answer.code == 302 and answer.headers["Location"] == record["url"]
    stored = await fetch(answer.headers["Location"])
    assert stored.code == 200 and stored.body == PDF_BYTES
