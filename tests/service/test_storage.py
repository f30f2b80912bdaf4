"""service/storage.py: object names, the local folder, and streaming PUT to a real nginx."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler, stream_request_body

from common.utils import media_key
from service.storage import (
    HttpStorage,
    LocalStorage,
    StorageError,
    StorageMisconfigured,
    StorageUnavailable,
    object_name,
    split_credentials,
)
from tests.fixtures.nginx import NGINX_AUTH, Nginx, free_port

KEY = media_key("document", 42)


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def write_big(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))


# -- object names ------------------------------------------------------------------------


def test_object_name_is_key_prefix_and_extension() -> None:
    assert object_name(KEY, ".jpg") == f"{KEY[:2]}/{KEY}.jpg"
    assert object_name(KEY, ".MP4") == f"{KEY[:2]}/{KEY}.mp4"
    assert object_name(KEY, "") == f"{KEY[:2]}/{KEY}"


@pytest.mark.parametrize("key", ["../../etc/passwd", KEY[:31], KEY + "0", KEY.upper(), "", "a/" + KEY[2:]])
def test_object_name_refuses_anything_but_a_hex_key(key: str) -> None:
    with pytest.raises(StorageError):
        object_name(key, ".jpg")


@given(st.text(max_size=30))
def test_object_name_never_escapes_its_folder(ext: str) -> None:
    name = object_name(KEY, ext)
    assert name.startswith(f"{KEY[:2]}/{KEY}")
    assert name.count("/") == 1 and "\x00" not in name and ".." not in name


# -- LocalStorage ----------------------------------------------------------------------------


async def test_local_put_moves_the_file_under_its_key(tmp_path: Path) -> None:
    src = tmp_path / "spool" / f"{KEY}.part"
    src.parent.mkdir()
    data = write_random(src, 10_000)
    storage = LocalStorage(tmp_path / "media")

    url = await storage.put(src, KEY, ".pdf", len(data), "application/pdf")

    dest = tmp_path / "media" / KEY[:2] / f"{KEY}.pdf"
    assert url == dest.as_uri()
    assert dest.read_bytes() == data
    assert not src.exists()


async def test_local_put_is_idempotent_after_a_crash_between_move_and_state(tmp_path: Path) -> None:
    src = tmp_path / f"{KEY}.part"
    data = write_random(src, 1000)
    storage = LocalStorage(tmp_path / "media")
    first = await storage.put(src, KEY, ".bin", len(data), "")
    # The spool file is gone now; the processor, restarted, puts it again.
    assert await storage.put(src, KEY, ".bin", len(data), "") == first


async def test_local_put_without_spool_or_object_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await LocalStorage(tmp_path / "media").put(tmp_path / "nope", KEY, ".bin", 10, "")


async def test_local_put_refuses_a_file_of_the_wrong_size(tmp_path: Path) -> None:
    src = tmp_path / "x.part"
    write_random(src, 100)
    with pytest.raises(StorageError, match="expected 101"):
        await LocalStorage(tmp_path / "media").put(src, KEY, ".bin", 101, "")
    assert src.exists()


async def test_local_put_copies_across_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "x.part"
    data = write_random(src, 5000)
    real_replace = os.replace

    def replace(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        if str(a) == str(src):
            raise OSError(errno.EXDEV, "cross-device link")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    storage = LocalStorage(tmp_path / "media")
    await storage.put(src, KEY, ".bin", len(data), "")
    assert storage.path_for(KEY, ".bin").read_bytes() == data
    assert not src.exists()


async def test_local_put_into_a_blocked_folder_is_misconfigured_and_keeps_the_file(
    tmp_path: Path,
) -> None:
    src = tmp_path / "x.part"
    data = write_random(src, 1000)
    storage = LocalStorage(tmp_path / "media")
    blocker = storage.path_for(KEY, ".bin").parent
    blocker.parent.mkdir()
    blocker.write_bytes(b"")  # a file where the key's folder should be
    with pytest.raises(StorageMisconfigured, match=str(blocker)):
        await storage.put(src, KEY, ".bin", len(data), "")
    assert src.read_bytes() == data
    blocker.unlink()
    await storage.put(src, KEY, ".bin", len(data), "")
    assert storage.path_for(KEY, ".bin").read_bytes() == data


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.EACCES, StorageMisconfigured),
        (errno.EROFS, StorageMisconfigured),
        (errno.ENOSPC, StorageUnavailable),
        (errno.EIO, OSError),
    ],
)
async def test_local_put_errors_map_to_what_the_processor_should_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: type[Exception]
) -> None:
    src = tmp_path / "x.part"
    write_random(src, 100)

    def replace(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(kind) as e:
        await LocalStorage(tmp_path / "media").put(src, KEY, ".bin", 100, "")
    if kind is StorageUnavailable:
        assert not isinstance(e.value, StorageMisconfigured)
    if kind is OSError:
        assert not isinstance(e.value, StorageError)
    assert src.exists()


# -- HttpStorage against nginx ------------------------------------------------------------------


@pytest.fixture
async def http_storage(nginx_dav: Nginx) -> AsyncIterator[HttpStorage]:
    storage = HttpStorage(nginx_dav.base_url, timeout=5)
    yield storage
    await storage.close()


async def test_http_put_is_byte_exact_on_nginx(
    nginx_dav: Nginx, http_storage: HttpStorage, tmp_path: Path
) -> None:
    src = tmp_path / "f.part"
    data = write_random(src, 3 * 1024 * 1024 + 17)

    url = await http_storage.put(src, KEY, ".mp4", len(data), "video/mp4")

    assert url == f"{nginx_dav.base_url}/{KEY[:2]}/{KEY}.mp4"
    stored = nginx_dav.path_of(f"{KEY[:2]}/{KEY}.mp4")
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert src.exists()  # deleting the spool file is the processor's call


async def test_http_put_overwrites_and_puts_empty_files(
    nginx_dav: Nginx, http_storage: HttpStorage, tmp_path: Path
) -> None:
    src = tmp_path / "f.part"
    write_random(src, 1000)
    await http_storage.put(src, KEY, ".bin", 1000, "")
    data = write_random(src, 10)
    await http_storage.put(src, KEY, ".bin", 10, "")  # nginx answers 204 this time
    assert nginx_dav.path_of(f"{KEY[:2]}/{KEY}.bin").read_bytes() == data
    src.write_bytes(b"")
    await http_storage.put(src, KEY, "", 0, "")
    assert nginx_dav.path_of(f"{KEY[:2]}/{KEY}").read_bytes() == b""


async def test_http_put_when_nginx_is_down_is_retryable(
    nginx_dav: Nginx, http_storage: HttpStorage, tmp_path: Path
) -> None:
    src = tmp_path / "f.part"
    data = write_random(src, 1000)
    nginx_dav.stop()
    with pytest.raises(StorageUnavailable):
        await http_storage.put(src, KEY, ".bin", len(data), "")
    nginx_dav.start()
    await http_storage.put(src, KEY, ".bin", len(data), "")
    assert nginx_dav.path_of(f"{KEY[:2]}/{KEY}.bin").read_bytes() == data


async def test_http_put_streams_without_holding_the_file(
    nginx_dav: Nginx, http_storage: HttpStorage, tmp_path: Path
) -> None:
    size = 64 * 1024 * 1024
    src = tmp_path / "big.part"
    write_big(src, size)
    tracemalloc.start()
    try:
        await http_storage.put(src, KEY, ".bin", size, "")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert nginx_dav.path_of(f"{KEY[:2]}/{KEY}.bin").stat().st_size == size
    # A body held in memory would peak at 64 MB; streamed, a few read buffers at a time.
    assert peak < 8 * 1024 * 1024, peak


def test_http_storage_refuses_other_schemes() -> None:
    with pytest.raises(ValueError) as e:
        HttpStorage("ftp://me:hunter2@example.invalid")
    assert "hunter2" not in str(e.value)


# -- credentials in storage.url: basic auth, never shown -----------------------------------


def with_credentials(base_url: str, user: str, password: str) -> str:
    return base_url.replace("://", f"://{quote(user, safe='')}:{quote(password, safe='')}@", 1)


@pytest.mark.parametrize(
    ("url", "clean", "auth"),
    [
        ("http://h:8080/base", "http://h:8080/base", None),
        ("http://u:p@h:8080/base", "http://h:8080/base", ("u", "p")),
        ("https://u%40x:p%3A%40w@[::1]:443/b?q", "https://[::1]:443/b?q", ("u@x", "p:@w")),
        ("http://u@h/", "http://h/", ("u", "")),
        ("http://@h/", "http://h/", None),
    ],
)
def test_split_credentials(url: str, clean: str, auth: tuple[str, str] | None) -> None:
    assert split_credentials(url) == (clean, auth)


async def test_http_put_sends_url_credentials_as_basic_auth_and_never_shows_them(
    nginx_dav_auth: Nginx, tmp_path: Path
) -> None:
    user, password = NGINX_AUTH
    storage = HttpStorage(with_credentials(nginx_dav_auth.base_url, user, password), timeout=5)
    src = tmp_path / "f.part"
    data = write_random(src, 100_000)
    try:
        url = await storage.put(src, KEY, ".jpg", len(data), "image/jpeg")
    finally:
        await storage.close()
    assert url == f"{nginx_dav_auth.base_url}/{KEY[:2]}/{KEY}.jpg"
    assert nginx_dav_auth.path_of(f"{KEY[:2]}/{KEY}.jpg").read_bytes() == data
    assert storage.base_url == nginx_dav_auth.base_url
    for shown in (url, storage.base_url, repr(storage)):
        assert password not in shown and quote(password, safe="") not in shown


async def test_http_put_errors_never_show_the_url_credentials(
    nginx_dav_auth: Nginx, tmp_path: Path
) -> None:
    user, password = NGINX_AUTH
    src = tmp_path / "f.part"
    write_random(src, 1000)
    wrong = "wrong:P@ss-0"
    errors: list[StorageError] = []
    # Nginx asks for auth: with none or a wrong password the PUT is refused (so the
    # credentials are what made the upload above work).
    for base in (nginx_dav_auth.base_url, with_credentials(nginx_dav_auth.base_url, user, wrong)):
        storage = HttpStorage(base, timeout=5)
        try:
            with pytest.raises(StorageError) as refused:
                await storage.put(src, KEY, ".bin", 1000, "")
        finally:
            await storage.close()
        assert "401" in str(refused.value)
        errors.append(refused.value)
    # Down: retryable, and the message names the server without the password.
    storage = HttpStorage(with_credentials(nginx_dav_auth.base_url, user, password), timeout=5)
    nginx_dav_auth.stop()
    try:
        with pytest.raises(StorageUnavailable) as down:
            await storage.put(src, KEY, ".bin", 1000, "")
    finally:
        await storage.close()
    errors.append(down.value)
    assert f"127.0.0.1:{nginx_dav_auth.port}" in str(down.value)
    for error in errors:
        for secret in (password, wrong, quote(password, safe=""), quote(wrong, safe="")):
            assert secret not in str(error) and secret not in error.message


# -- status codes, from a server that answers what the test wants --------------------------


@stream_request_body
class _Answer(RequestHandler):
    def initialize(self, seen: list[tuple[str, int, str]], status: list[int]) -> None:
        self.seen, self.status, self.received = seen, status, 0

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)

    def put(self, path: str) -> None:
        self.seen.append((path, self.received, self.request.headers.get("Content-Type", "")))
        self.set_status(self.status[0])


@pytest.fixture
async def answering() -> AsyncIterator[tuple[str, list[tuple[str, int, str]], list[int]]]:
    seen: list[tuple[str, int, str]] = []
    status = [201]
    app = Application([(r"/(.*)", _Answer, {"seen": seen, "status": status})])
    server = HTTPServer(app, max_body_size=1 << 30)
    port = free_port()
    server.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}/base/", seen, status
    server.stop()
    await server.close_all_connections()


@pytest.mark.parametrize(
    ("code", "error"),
    [(500, StorageUnavailable), (503, StorageUnavailable), (429, StorageUnavailable),
     # The server is set up wrong: retried (the spool file kept) until someone fixes it.
     (401, StorageMisconfigured), (403, StorageMisconfigured), (404, StorageMisconfigured),
     (405, StorageMisconfigured), (409, StorageMisconfigured),
     # Never for this file: the item fails.
     (400, StorageError), (413, StorageError), (415, StorageError)],
)
async def test_http_status_decides_retry(
    answering: tuple[str, list[tuple[str, int, str]], list[int]],
    tmp_path: Path,
    code: int,
    error: type[StorageError],
) -> None:
    base, seen, status = answering
    src = tmp_path / "f.part"
    write_random(src, 5000)
    status[0] = code
    storage = HttpStorage(base, timeout=5)
    try:
        with pytest.raises(error) as raised:
            await storage.put(src, KEY, ".jpg", 5000, "image/jpeg")
    finally:
        await storage.close()
    assert type(raised.value) is error
    assert seen == [(f"base/{KEY[:2]}/{KEY}.jpg", 5000, "image/jpeg")]


async def test_http_put_sends_headers_and_size(
    answering: tuple[str, list[tuple[str, int, str]], list[int]], tmp_path: Path
) -> None:
    base, seen, _ = answering
    src = tmp_path / "f.part"
    write_random(src, 2 * 1024 * 1024)
    storage = HttpStorage(base, timeout=5, headers={"Authorization": "Bearer t"})
    try:
        results = await asyncio.gather(
            *(storage.put(src, media_key("photo", i), ".jpg", 2 * 1024 * 1024, "") for i in range(3))
        )
    finally:
        await storage.close()
    assert len(set(results)) == 3
    assert sorted(s[1] for s in seen) == [2 * 1024 * 1024] * 3
    assert {s[2] for s in seen} == {"application/octet-stream"}


# -- store-once across processes: find before a download, PUT with If-None-Match: * --------


async def test_local_find_is_a_stat_of_the_object(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "media")
    assert await storage.find(KEY, ".jpg", 1000) is None
    src = tmp_path / "f.part"
    write_random(src, 1000)
    url = await storage.put(src, KEY, ".jpg", 1000, "image/jpeg")
    # A second storage on the same folder (another process sharing it) finds it.
    other = LocalStorage(tmp_path / "media")
    assert await other.find(KEY, ".jpg", 1000) == url
    assert await other.find(KEY, ".jpg", 0) == url  # size unknown: any
    assert await other.find(KEY, ".jpg", 999) is None  # not this file whole
    assert await other.find(KEY, ".png", 1000) is None


async def test_http_find_is_a_head_of_the_object(
    nginx_dav: Nginx, http_storage: HttpStorage, tmp_path: Path
) -> None:
    assert await http_storage.find(KEY, ".bin", 1000) is None
    src = tmp_path / "f.part"
    write_random(src, 1000)
    url = await http_storage.put(src, KEY, ".bin", 1000, "")
    assert await http_storage.find(KEY, ".bin", 1000) == url
    assert await http_storage.find(KEY, ".bin", 0) == url
    assert await http_storage.find(KEY, ".bin", 1001) is None
    assert len(await nginx_dav.logged('"HEAD /', 4)) == 4
    nginx_dav.stop()
    with pytest.raises(StorageUnavailable):  # can't tell: the caller downloads
        await http_storage.find(KEY, ".bin", 1000)


async def test_http_find_sends_the_credentials(nginx_dav_auth: Nginx, tmp_path: Path) -> None:
    user, password = NGINX_AUTH
    base = nginx_dav_auth.base_url.replace("://", f"://{user}:{quote(password, safe='')}@")
    storage = HttpStorage(base, timeout=5)
    try:
        src = tmp_path / "f.part"
        write_random(src, 10)
        url = await storage.put(src, KEY, ".bin", 10, "")
        assert await storage.find(KEY, ".bin", 10) == url
        assert password not in url
    finally:
        await storage.close()
    refused = HttpStorage(nginx_dav_auth.base_url, timeout=5)
    try:
        with pytest.raises(StorageUnavailable) as e:  # 401: can't tell
            await refused.find(KEY, ".bin", 10)
        assert "401" in e.value.message
    finally:
        await refused.close()


async def test_a_put_of_an_object_there_already_is_412_and_taken_as_stored(
    nginx_dav_put_once: Nginx, tmp_path: Path
) -> None:
    """docs/deploy/storage-nginx.conf: the first object stays, the second is not written."""
    storage = HttpStorage(nginx_dav_put_once.base_url, timeout=5)
    try:
        src = tmp_path / "f.part"
        first = write_random(src, 1000)
        url = await storage.put(src, KEY, ".bin", 1000, "")
        write_random(src, 1000)  # another process's spool file (same key, same size)
        assert await storage.put(src, KEY, ".bin", 1000, "") == url
    finally:
        await storage.close()
    assert nginx_dav_put_once.path_of(f"{KEY[:2]}/{KEY}.bin").read_bytes() == first
    puts = await nginx_dav_put_once.logged('"PUT /', 2)
    assert [line.split('" ')[1].split()[0] for line in puts] == ["201", "412"]


async def test_plain_nginx_ignores_if_none_match_on_put(
    nginx_dav: Nginx, http_storage: HttpStorage, tmp_path: Path
) -> None:
    """What docs/deploy/storage-nginx.conf is for: without it nginx's WebDAV overwrites
    (answering 204) a PUT with If-None-Match: *; tgc's HEAD before a download is then the
    only guard."""
    src = tmp_path / "f.part"
    write_random(src, 100)
    await http_storage.put(src, KEY, ".bin", 100, "")
    second = write_random(src, 100)
    await http_storage.put(src, KEY, ".bin", 100, "")
    assert nginx_dav.path_of(f"{KEY[:2]}/{KEY}.bin").read_bytes() == second
    puts = await nginx_dav.logged('"PUT /', 2)
    assert len(puts) == 2 and " 204 " in puts[1]


async def test_http_find_gives_up_soon_on_a_storage_that_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A HEAD that gets no answer is no answer (the download goes ahead), within
    HEAD_TIMEOUT, not the upload's `timeout`."""
    import service.storage

    monkeypatch.setattr(service.storage, "HEAD_TIMEOUT", 0.3)
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    storage = HttpStorage(f"http://127.0.0.1:{port}", timeout=600)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(StorageUnavailable):
            await storage.find(KEY, ".bin", 10)
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await storage.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
