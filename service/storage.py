"""Where stored media end up: a folder on this machine, or an HTTP server that takes PUT.

Both storages name an object `{key[:2]}/{key}{ext}`: the key is the media's mmh3 hex digest
and the extension one of a short safe set, so nothing a Telegram user chose (a file name)
ever becomes part of a path or a URL.

    StorageError                 the server refused this file: don't retry (400, 413, ...)
    └── StorageUnavailable       the server is down, timed out or answered 5xx: retry later
        └── StorageMisconfigured the server refused every file (401, 403, 404, 405, 407,
                                 409: credentials, permissions, WebDAV settings): a
                                 config mistake; retry, the spool file is kept, until fixed
                                 (for the local folder: no permission, read-only, a file
                                 where the folder should be; a full disk is Unavailable)

`HttpStorage` streams the spool file to the server with pycurl through Tornado's
`CurlAsyncHTTPClient`: that client has no `body_producer`, so the request's curl handle gets
a READFUNCTION reading the open file in chunks and INFILESIZE_LARGE (MEASURED.md: 1.2 GB/s
at ~35 MB RSS for 100 MB, where a body in memory costs the whole file).

Store-once across processes (docs/DEPLOY.md): the storage is the one truth of what is
stored. `find` asks it before a download (a HEAD for HTTP, a stat for a folder, which may
be a folder several processes share), and `HttpStorage` PUTs with `If-None-Match: *`, so a
server that honours it answers 412 instead of overwriting an object another process
stored meanwhile: that 412 is taken as stored. (Debian's nginx 1.22 WebDAV ignores the
header and overwrites; docs/deploy/storage-nginx.conf makes it answer 412.)

Credentials in the base URL (`http://user:pass@host/…`) are taken out of it: they go to curl
as HTTP basic auth (USERPWD), and the URL without them is what stored media's URLs, error
messages and logs show, so a password never reaches an API answer, an event or the log.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{32}$")
_EXT = re.compile(r"^\.[a-z0-9]{1,10}$")
# HTTP answers worth trying again: the server is busy, restarting or overloaded.
_RETRYABLE_STATUS = {408, 425, 429}
# Answers that say the server is set up wrong, not that this file is (credentials,
# permissions, a path or method WebDAV does not take, 409 for a missing parent folder
# without create_full_put_path): they end when someone fixes the server or the config, so
# they are retried and the spool file is kept. 400, 411, 413, 415… fail the file.
_MISCONFIGURED_STATUS = {401, 403, 404, 405, 407, 409}
# HEADs in flight at once (`find`, one per download about to start), and how long one may
# take: a storage that hangs must not hold every download for `timeout` (the download goes
# ahead when the HEAD gets no answer).
HEADS = 8
HEAD_TIMEOUT = 5.0


class StorageError(Exception):
    """The storage refused the file for good (a 4xx, a file that is not what it should be).

    Not a TgcError: it never reaches an HTTP answer, the processor turns it into the
    item's `failed` state (or, for StorageUnavailable, a retry)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StorageUnavailable(StorageError):
    """The storage can't take the file now (down, timed out, 5xx); the same put may succeed
    later."""


class StorageMisconfigured(StorageUnavailable):
    """The storage refuses every file (401, 403, 404, 405, 407, 409): its configuration or
    ours is wrong. Retried like StorageUnavailable (the spool file is kept), but worth an
    error in the log: it ends only when someone fixes it."""


class Storage(Protocol):
    async def put(self, path: Path, key: str, ext: str, size: int, mime: str) -> str:
        """Stores the file at `path` as the object of `key` and returns its URL.

        Raises StorageUnavailable (retry later; StorageMisconfigured: until someone fixes
        the server or the config), StorageError (don't), FileNotFoundError (no such spool
        file: download it again)."""
        ...

    async def find(self, key: str, ext: str, size: int) -> str | None:
        """The URL of `key`'s object when the storage already holds it whole (`size`
        bytes; 0: any size), else None. Raises StorageUnavailable when it can't tell."""
        ...

    async def close(self) -> None: ...


def object_name(key: str, ext: str) -> str:
    """`ab/ab12…ef.jpg`: the relative name of a media object; refuses anything but a hex key
    and drops an extension that is not a short lowercase alphanumeric one."""
    if not _KEY.match(key):
        raise StorageError(f"not a media key: {key[:40]!r}")
    safe_ext = ext.lower() if _EXT.match(ext.lower()) else ""
    return f"{key[:2]}/{key}{safe_ext}"


class LocalStorage:
    """Keeps media in a folder (`data.dir/media`): the spool file is moved into place."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).resolve()

    def path_for(self, key: str, ext: str) -> Path:
        return self.directory / object_name(key, ext)

    async def put(self, path: Path, key: str, ext: str, size: int, mime: str) -> str:
        dest = self.path_for(key, ext)
        try:
            # A cross-device copy of a large file must not run on the loop.
            await asyncio.to_thread(self._move, Path(path), dest, size)
        except OSError as e:
            raise _local_error(e, dest) from e
        return dest.as_uri()

    async def find(self, key: str, ext: str, size: int) -> str | None:
        dest = self.path_for(key, ext)
        try:
            # A stat on the loop could stall on a network mount (a shared folder).
            found = await asyncio.to_thread(dest.stat)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageUnavailable(f"{dest}: {e.strerror or e}") from e
        return dest.as_uri() if not size or found.st_size == size else None

    async def close(self) -> None:
        return None

    @staticmethod
    def _move(src: Path, dest: Path, size: int) -> None:
        if not src.exists():
            # A crash between the move and the state change: the object is already there.
            if dest.exists() and (not size or dest.stat().st_size == size):
                return
            raise FileNotFoundError(errno.ENOENT, "spool file is missing", str(src))
        _check_size(src, size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(src, dest)  # atomic: a reader sees the old object or the new one
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            # Named per process: a folder shared by several processes may get the same
            # object from two of them at once, and each must copy into its own file.
            tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            src.unlink()


# The folder refuses every file until someone fixes it (permissions, a read-only mount, a
# file where the folder should be): kept and retried, as a 403 from an HTTP server is.
_LOCAL_MISCONFIGURED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST}
# A full disk empties again (the spool drains, ops make room): retried.
_LOCAL_UNAVAILABLE = {errno.ENOSPC, errno.EDQUOT}


def _local_error(error: OSError, dest: Path) -> OSError | StorageError:
    """The storage error an OSError of the move stands for; other OSErrors stay themselves.

    A missing spool file (FileNotFoundError from `_move`) stays itself: the processor
    downloads the file again."""
    if isinstance(error, FileNotFoundError):
        return error
    where = f"{dest.parent}: {error.strerror or error}"
    if error.errno in _LOCAL_MISCONFIGURED:
        return StorageMisconfigured(where)
    if error.errno in _LOCAL_UNAVAILABLE:
        return StorageUnavailable(where)
    return error


class HttpStorage:
    """PUTs each file to `{base_url}/{key[:2]}/{key}{ext}` (nginx WebDAV, a PUT gateway…).

    `timeout` bounds connecting and any stall of the transfer (less than 1 KB/s for that
    long); a big file may take as long as it needs otherwise. `headers` go with every PUT
    (an Authorization header, for instance). `user:pass@` in `base_url` is sent as HTTP
    basic auth and dropped from `base_url` (and so from every URL and message).
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        *,
        max_clients: int = 4,
        headers: dict[str, str] | None = None,
        upload_buffer: int | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            # Only the scheme: the rest may carry a password.
            raise ValueError(f"storage url must be http(s)://…, not {base_url.split(':')[0]}:…")
        clean, self._auth = split_credentials(base_url)
        self.base_url = clean.rstrip("/")
        self.timeout = timeout
        self.max_clients = max_clients
        self.headers = dict(headers or {})
        self.upload_buffer = upload_buffer
        self._client: CurlAsyncHTTPClient | None = None
        self._head_client: CurlAsyncHTTPClient | None = None

    def url_for(self, key: str, ext: str) -> str:
        return f"{self.base_url}/{object_name(key, ext)}"

    async def put(self, path: Path, key: str, ext: str, size: int, mime: str) -> str:
        url = self.url_for(key, ext)
        # Opening reads no data (curl reads it in chunks); on the loop it also can't leak
        # the file the way a cancelled thread hop would.
        body, actual = _open_spool(Path(path), size)
        try:
            request = HTTPRequest(
                url,
                method="PUT",
                # Tornado insists on a body for PUT; the real one comes from READFUNCTION.
                body=b"",
                headers={
                    **self.headers,
                    "Content-Type": mime or "application/octet-stream",
                    # Another process may store the same key: a server that honours this
                    # keeps the first object (412), one that ignores it overwrites it with
                    # the same bytes.
                    "If-None-Match": "*",
                },
                auth_username=self._auth[0] if self._auth else None,
                auth_password=self._auth[1] if self._auth else None,
                auth_mode="basic",
                connect_timeout=self.timeout,
                request_timeout=self._request_timeout(actual),
                prepare_curl_callback=lambda curl: self._stream_from(curl, body, actual),
            )
            response = await self._http().fetch(request, raise_error=False)
        except (HTTPClientError, OSError) as e:
            # raise_error=False still raises for errors below HTTP (599: refused, reset,
            # timed out): the server is not there, try later.
            raise StorageUnavailable(f"PUT {url}: {e}") from e
        finally:
            body.close()
        if response.code == 412:  # If-None-Match: * honoured: the object is there already
            log.info("media %s: the storage holds it already (412), not overwritten", key)
            return url
        _raise_for(response, url)
        log.debug("stored %s (%d bytes) at %s", key, actual, url)
        return url

    async def find(self, key: str, ext: str, size: int) -> str | None:
        """A HEAD of the object: 200 with the right Content-Length is there, 404 or 410
        is not; anything else (down, refused) can't tell."""
        url = self.url_for(key, ext)
        request = HTTPRequest(
            url,
            method="HEAD",
            headers=dict(self.headers),
            auth_username=self._auth[0] if self._auth else None,
            auth_password=self._auth[1] if self._auth else None,
            auth_mode="basic",
            connect_timeout=min(self.timeout, HEAD_TIMEOUT),
            request_timeout=min(self.timeout, HEAD_TIMEOUT),
            prepare_curl_callback=self._quiet if self._auth else None,
        )
        try:
            response = await self._head_http().fetch(request, raise_error=False)
        except (HTTPClientError, OSError) as e:
            raise StorageUnavailable(f"HEAD {url}: {e}") from e
        if response.code in (404, 410):
            return None
        if response.code != 200:
            raise StorageUnavailable(f"HEAD {url}: {_describe(response)}")
        length = response.headers.get("Content-Length")
        if size and length is not None and length.isdigit() and int(length) != size:
            return None  # not this file whole: store it again
        return url

    async def close(self) -> None:
        for client in (self._client, self._head_client):
            if client is not None:
                client.close()
        self._client = self._head_client = None

    def _http(self) -> CurlAsyncHTTPClient:
        # Made on first use, so it binds to the loop that runs the uploads.
        if self._client is None:
            self._client = CurlAsyncHTTPClient(force_instance=True, max_clients=self.max_clients)
        return self._client

    def _head_http(self) -> CurlAsyncHTTPClient:
        # Its own connections: a HEAD before a download must not queue behind long PUTs.
        if self._head_client is None:
            self._head_client = CurlAsyncHTTPClient(force_instance=True, max_clients=HEADS)
        return self._head_client

    def _request_timeout(self, size: int) -> float:
        # A ceiling only (at 1 MB/s): stalls are caught sooner by LOW_SPEED_TIME.
        return self.timeout + size / 1_000_000

    def _stream_from(self, curl: pycurl.Curl, body: IO[bytes], size: int) -> None:
        def seek(offset: int, origin: int) -> int:
            body.seek(offset, origin)
            return int(pycurl.SEEKFUNC_OK)

        def read(size: int) -> bytes | int:
            try:
                return body.read(size)
            except ValueError:  # closed: the upload was cancelled (a stop) while curl ran
                return int(pycurl.READFUNC_ABORT)

        curl.setopt(pycurl.UPLOAD, True)
        curl.setopt(pycurl.READFUNCTION, read)
        curl.setopt(pycurl.SEEKFUNCTION, seek)
        curl.setopt(pycurl.INFILESIZE_LARGE, size)
        if self.upload_buffer:
            # libcurl's default (64 KB) measured faster to nginx here than 256 KB or 1 MB.
            curl.setopt(pycurl.UPLOAD_BUFFERSIZE, self.upload_buffer)
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1024)
        curl.setopt(pycurl.LOW_SPEED_TIME, max(1, int(self.timeout)))
        if self._auth:
            self._quiet(curl)

    @staticmethod
    def _quiet(curl: pycurl.Curl) -> None:
        # Tornado turns curl's verbose trace on when its logger is at DEBUG, and that
        # trace prints the Authorization header.
        curl.setopt(pycurl.VERBOSE, False)


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`http://user:pa%40ss@host/p` → (`http://host/p`, ("user", "pa@ss")); a URL without
    userinfo comes back as it is, with None."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit(parts._replace(netloc=host))
    if not parts.username and not parts.password:
        return clean, None  # "http://@host": an empty userinfo, nothing to send
    return clean, (unquote(parts.username or ""), unquote(parts.password or ""))


def _open_spool(path: Path, size: int) -> tuple[IO[bytes], int]:
    body = open(path, "rb")  # closed by the caller once curl is done with it
    try:
        return body, _check_size(path, size)
    except BaseException:
        body.close()
        raise


def _check_size(path: Path, size: int) -> int:
    actual = path.stat().st_size
    if size and actual != size:
        raise StorageError(f"spool file {path.name} has {actual} bytes, expected {size}")
    return actual


def _raise_for(response: HTTPResponse, url: str) -> None:
    code = response.code
    if 200 <= code < 300:
        return
    reason = _describe(response)
    if code == 599 or code >= 500 or code in _RETRYABLE_STATUS:
        raise StorageUnavailable(f"PUT {url}: {reason}")
    if code in _MISCONFIGURED_STATUS:
        raise StorageMisconfigured(f"PUT {url}: {reason}")
    raise StorageError(f"PUT {url}: {reason}")


def _describe(response: HTTPResponse) -> str:
    if response.code == 599 and response.error is not None:
        return str(response.error)
    return f"{response.code} {response.reason or ''}".strip()
