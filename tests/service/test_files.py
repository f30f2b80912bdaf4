"""service/files.py: the signed links, the file name and disposition, and GET /files on the
app of service/handler.py (tests/fixtures/handler_app.py's fakes, a real folder): the links
in the API's answers, a 302, the 404s, and the bounds of an unauthenticated route (a reader
that stalls loses its connection; at most `max_streams` at once, 429 beyond).

The whole flow on the real server (ranges, 403s, 416, POST media) is tests/test_files_server.py.
"""

from __future__ import annotations

import asyncio
import os
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.files import (
    FILE_NAME_MAX,
    ContentUrls,
    FileServing,
    clean_file_name,
    content_disposition,
)
from tests.fixtures.handler_app import TOKEN, Api, serving_api
from tests.fixtures.wait import wait_for

KEY = "ab" * 16
NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_a_link_is_valid_until_exp_then_refused() -> None:
    clock = Clock()
    urls = ContentUrls(TOKEN, 3600, clock=clock)
    link = urls.url(KEY)
    exp = str(int(NOW) + 3600)
    assert link == f"/files/{KEY}?exp={exp}&sig={urls.sign(KEY, exp)}"
    sig = link.rsplit("sig=", 1)[1]
    assert urls.valid(KEY, exp, sig)
    clock.now = NOW + 3600  # the last second it is valid
    assert urls.valid(KEY, exp, sig)
    clock.now += 1
    assert not urls.valid(KEY, exp, sig)


def test_a_link_changed_anywhere_or_signed_with_another_token_is_refused() -> None:
    urls = ContentUrls(TOKEN, 60, clock=Clock())
    exp = str(int(NOW) + 60)
    sig = urls.sign(KEY, exp)
    assert not urls.valid("cd" * 16, exp, sig)
    assert not urls.valid(KEY, str(int(exp) + 1), sig)
    assert not urls.valid(KEY, "0" + exp, sig)  # the text is signed, not the number
    assert not urls.valid(KEY, exp, sig.upper())
    assert not urls.valid(KEY, exp, sig[:-1])
    assert not urls.valid(KEY, exp, "")
    assert not urls.valid(KEY, "", sig)
    assert not ContentUrls("another-token-0123", 60, clock=Clock()).valid(KEY, exp, sig)


@given(exp=st.text(max_size=14), key=st.text(max_size=40))
def test_only_the_signature_of_digits_not_yet_past_is_valid(exp: str, key: str) -> None:
    urls = ContentUrls(TOKEN, 60, clock=Clock())
    expected = exp.isascii() and exp.isdigit() and len(exp) <= 12 and int(exp) >= NOW
    assert urls.valid(key, exp, urls.sign(key, exp)) == expected


@given(name=st.one_of(st.none(), st.text(max_size=400)))
def test_a_clean_file_name_is_one_short_plain_component(name: str | None) -> None:
    clean = clean_file_name(name, "fallback.bin")
    assert clean and len(clean) <= FILE_NAME_MAX
    assert "/" not in clean and "\\" not in clean and not clean.startswith(".")
    assert all(unicodedata.category(ch)[0] != "C" for ch in clean)
    header = content_disposition("application/pdf", clean)
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert unquote(header.rsplit("''", 1)[1]) == clean


def test_file_names_as_telegram_users_send_them() -> None:
    assert clean_file_name("../../etc/passwd", "x") == "passwd"
    assert clean_file_name("C:\\Users\\me\\report.pdf", "x") == "report.pdf"
    assert clean_file_name("evil\u202egpj.exe", "x") == "evilgpj.exe"  # no bidi override
    assert clean_file_name("..", "key.bin") == "key.bin"
    assert clean_file_name(".bashrc", "x") == "bashrc"
    assert clean_file_name(None, "key.jpg") == "key.jpg"
    assert content_disposition("image/jpeg", "a.jpg").startswith('inline; filename="a.jpg"')
    assert content_disposition("image/svg+xml", "a.svg").startswith("attachment;")
    assert content_disposition("text/html", "a.html").startswith("attachment;")
    assert content_disposition("video/mp4", 'привет "x".mp4') == (
        "inline; filename=\"?????? _x_.mp4\"; "
        "filename*=UTF-8''%D0%BF%D1%80%D0%B8%D0%B2%D0%B5%D1%82%20%22x%22.mp4"
    )


# --- the route, in-process ---------------------------------------------------------------

BIG = 64 * 1024 * 1024  # sparse: far more than the socket buffers hold


@pytest.fixture
async def files_api(tmp_path: Path) -> AsyncIterator[tuple[Api, FileServing]]:
    root = tmp_path / "media"
    (root / KEY[:2]).mkdir(parents=True)
    path = root / KEY[:2] / f"{KEY}.bin"
    with path.open("wb") as f:
        f.truncate(BIG)
    serving = FileServing(ContentUrls(TOKEN, 60), root, stall_timeout=0.5, max_streams=1)
    async with serving_api("aes-256-gcm", files=serving) as api:
        api.processor.records[KEY] = {
            "key": KEY,
            "state": "stored",
            "url": path.as_uri(),
            "mime_type": "application/octet-stream",
            "file_name": None,
        }
        yield api, serving


async def test_a_stored_record_carries_a_content_url_and_others_none(
    files_api: tuple[Api, FileServing],
) -> None:
    api, serving = files_api
    answer = await api.call("GET", f"/api/v1/media/{KEY}")
    link = answer.data["content_url"]
    exp, sig = link.split("?", 1)[1].replace("exp=", "").split("&sig=")
    assert link.startswith(f"/files/{KEY}?") and serving.urls.valid(KEY, exp, sig)
    api.processor.records[KEY]["state"] = "uploading"
    assert (await api.call("GET", f"/api/v1/media/{KEY}")).data["content_url"] is None
    # POST: the record, queued again (the fake's retry)
    api.processor.records[KEY]["state"] = "failed"
    posted = await api.call("POST", f"/api/v1/media/{KEY}")
    assert posted.ok and posted.data["state"] == "pending"
    assert (await api.call("POST", "/api/v1/media/" + "0" * 32)).status == 404
    # The file is not stored any more: its link is 404.
    answer = await api.raw("GET", serving.urls.url(KEY))
    assert answer.code == 404


async def test_an_http_storage_url_is_a_302_and_a_path_outside_the_folder_404(
    files_api: tuple[Api, FileServing], tmp_path: Path
) -> None:
    api, serving = files_api
    record = api.processor.records[KEY]
    record["url"] = "http://127.0.0.1:1/ab/x.bin"
    answer = await api.http.fetch(
        api.url + serving.urls.url(KEY), follow_redirects=False, raise_error=False
    )
    assert answer.code == 302 and answer.headers["Location"] == "http://127.0.0.1:1/ab/x.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    record["url"] = outside.as_uri()
    assert (await api.raw("GET", serving.urls.url(KEY))).code == 404
    (serving.root / KEY[:2] / "link.bin").symlink_to(outside)
    record["url"] = (serving.root / KEY[:2] / "link.bin").as_uri()
    assert (await api.raw("GET", serving.urls.url(KEY))).code == 404
    unknown = await api.raw("GET", serving.urls.url(KEY) + "&download=1")
    assert unknown.code == 400


async def test_a_reader_that_stalls_loses_its_connection_and_its_slot(
    files_api: tuple[Api, FileServing],
) -> None:
    api, serving = files_api
    port = int(api.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Nothing read (the stream reader stops at its buffer's limit): the server's writes
    # stall once the sockets' buffers are full.
    writer.write(f"GET {serving.urls.url(KEY)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await wait_for(lambda: serving.streams == 1, within=5, what="the stream started")
    # The one slot is taken: the next reader is told to come back.
    busy = await api.raw("GET", serving.urls.url(KEY))
    assert busy.code == 429 and busy.headers["Retry-After"] == "1"
    await wait_for(lambda: serving.streams == 0, within=5, what="the stalled stream dropped")
    received = 0
    while chunk := await reader.read(1024 * 1024):  # what the kernel held, then the end
        received += len(chunk)

    writer.close()
    assert 0 < received < BIG
    whole = await api.raw("GET", serving.urls.url(KEY))  # the slot is free again
    assert whole.code == 200 and len(whole.body) == BIG


async def test_while_draining_files_are_503(files_api: tuple[Api, FileServing]) -> None:
    api, serving = files_api
    api.lifecycle.draining = True
    answer = await api.raw("GET", serving.urls.url(KEY))
    assert answer.code == 503


async def test_a_file_cut_short_while_served_ends_that_answer_only(
    files_api: tuple[Api, FileServing],
) -> None:
    # The bytes go out from a map of the file: a truncated file fails the socket's send
    # (EFAULT), it must not bring the process down (SIGBUS) or leave the slot taken.
    api, serving = files_api
    path = serving.root / KEY[:2] / f"{KEY}.bin"
    port = int(api.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {serving.urls.url(KEY)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await wait_for(lambda: serving.streams == 1, within=5, what="the stream started")
    os.truncate(path, 0)
    received = 0
    while chunk := await reader.read(1024 * 1024):
        received += len(chunk)
    writer.close()
    assert 0 < received < BIG
    await wait_for(lambda: serving.streams == 0, within=5, what="the slot given back")
    path.write_bytes(b"whole again")
    answer = await api.raw("GET", serving.urls.url(KEY))
    assert answer.code == 200 and answer.body == b"whole again"
