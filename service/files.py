"""A stored file's bytes over plain HTTP: the signed `content_url` and `GET /files/KEY`.

CONTRACT.md section 1: a stored item's descriptor carries `content_url`,
`/files/KEY?exp=UNIX&sig=HEX` with `sig` = hex HMAC-SHA256(api.token, "files\\n" + KEY +
"\\n" + EXP), valid until `exp` (api.content_url_ttl after the answer that carried it).

- `ContentUrls`: makes and checks those links (constant-time compare).
- `LinkedMedia`: the media queue as the API's routes see it: a stored record, and so a
  stored descriptor in any answer, carries a fresh `content_url`. Events carry none (an event
  may be read long after any link would have expired; GET /api/v1/media/KEY gives one).
- `FileServing`: what the route needs (the links, the local storage folder, the bounds).
- `FilesHandler`: GET/HEAD /files/KEY on Tornado's StaticFileHandler, which already does
  byte ranges (206, 416 with `Content-Range: bytes */SIZE`), `If-None-Match`/
  `If-Modified-Since` (304), Content-Length and HEAD; here: the signature, the lookup in the
  media table, the headers (Content-Type from the record, Content-Disposition with the
  cleaned file name, the media key as the ETag), a 302 to an HTTP storage's URL.

The route is not signed like /api/v1 and not encrypted: the link is the credential. Its
bounds (nothing unauthenticated holds memory, descriptors or time without one): no body is
read; before the signature is checked nothing is opened; at most `max_streams` answers
stream at once (429 RATE_LIMITED beyond), each holding one descriptor and at most two
mapped windows (`WINDOW`); a client that reads nothing for `stall_timeout` s loses its
connection. The file is never read into memory: the socket sends from its page cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import mimetypes
import mmap
import os
import re
import time
import unicodedata
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

import tornado.web
from tornado.concurrent import Future, chain_future
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from common.errors import InvalidParam, NotFound, RateLimited, ShuttingDown
from model.media import Media
from service.basehandler import BaseHandler, Forbidden
from service.queries import MediaQueue

log = logging.getLogger(__name__)

FILES = "/files"
_KEY = re.compile(r"[0-9a-f]{32}")
_EXP = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[0-9a-f]{64}")
# A MIME type as RFC 6838 names them; anything else (Telegram's mime_type is the sender's
# choice) is served as application/octet-stream.
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# Shown in the browser rather than saved: media a browser can't run code in.
_INLINE = re.compile(r"(image/(?!svg)|audio/|video/).*")
FILE_NAME_MAX = 150
# The file goes out in windows mapped from the page cache (mmap): the socket copies from
# them, no read() copies first (~1.4x the MB/s of 256 KiB reads here, bench/files.py). At
# most two windows per answer are mapped at a time.
WINDOW = 1024 * 1024
MAX_STREAMS = 32
STALL_TIMEOUT = 60.0


class ContentUrls:
    """Signed links to stored files: `url(key)` valid for `ttl` s, `valid(key, exp, sig)`."""

    def __init__(self, token: str, ttl: int, *, clock: Callable[[], float] = time.time) -> None:
        self._key = token.encode()
        self.ttl = ttl
        self._clock = clock

    def url(self, key: str) -> str:
        exp = str(int(self._clock()) + self.ttl)
        return f"{FILES}/{key}?exp={exp}&sig={self.sign(key, exp)}"

    def sign(self, key: str, exp: str) -> str:
        message = f"files\n{key}\n{exp}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def valid(self, key: str, exp: str, sig: str) -> bool:
        """The link is ours and has not expired. The HMAC is compared in constant time."""
        if not (_EXP.fullmatch(exp) and _SIG.fullmatch(sig)):
            return False
        genuine = hmac.compare_digest(self.sign(key, exp), sig)
        return genuine and int(exp) >= self._clock()


class LinkedMedia:
    """`queue` as the API's routes use it: each stored record gets a fresh `content_url`
    (the others null)."""

    def __init__(self, queue: MediaQueue, urls: ContentUrls) -> None:
        self._queue = queue
        self._urls = urls

    def submit(self, media: Media) -> dict[str, Any]:
        return self._link(self._queue.submit(media))

    def get(self, key: str) -> dict[str, Any] | None:
        return self._link_optional(self._queue.get(key))

    def queue_now(self, key: str) -> dict[str, Any] | None:
        return self._link_optional(self._queue.queue_now(key))

    def _link_optional(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if record is None else self._link(record)

    def _link(self, record: dict[str, Any]) -> dict[str, Any]:
        key = record.get("key")
        link = None
        if record.get("state") == "stored" and isinstance(key, str):
            link = self._urls.url(key)
        return {**record, "content_url": link}


@dataclass
class FileServing:
    """What GET /files needs: the links, the folder of the local storage (files whose
    stored URL is a file:// path under it are served; others are 404), the bounds."""

    urls: ContentUrls
    root: Path
    stall_timeout: float = STALL_TIMEOUT
    max_streams: int = MAX_STREAMS
    streams: int = 0  # answers streaming now


class BadSignature(Forbidden):
    """A /files link that is not ours or has expired: 403 with no body."""


class FilesHandler(BaseHandler, tornado.web.StaticFileHandler):
    """GET and HEAD /files/KEY?exp=&sig=. StaticFileHandler's `head` calls this `get`."""

    route = FILES + "/{key}"

    def initialize(self) -> None:  # type: ignore[override]
        super().initialize(str(self.serving.root))
        self._record: dict[str, Any] = {}
        self._streaming = False
        self._window: memoryview | None = None  # written, not flushed yet
        self._sending: asyncio.Future[None] | None = None  # the window being sent

    @property
    def serving(self) -> FileServing:
        serving: FileServing = self.settings["tgc_files"]  # make_app routes /files only then
        return serving

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # Cacheable by the crawler that fetched it (the ETag revalidates), by no proxy.
        self.set_header("Cache-Control", "private, no-cache")
        # The bytes are whatever a Telegram user sent: never sniffed into something
        # runnable, and a document opened in a browser gets an origin of its own.
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "sandbox; default-src 'none'")

    async def get(self, key: str, include_body: bool = True) -> None:
        if self.draining:
            raise ShuttingDown("the server is shutting down")
        self._check_link(key)
        relative = self._local_path(key)
        if relative is None:  # redirected
            return
        serving = self.serving
        if serving.streams >= serving.max_streams:
            raise RateLimited(1, f"{serving.max_streams} files are being served already")
        serving.streams += 1
        self._streaming = True
        try:
            await super().get(relative, include_body)
        finally:
            serving.streams -= 1

    def _check_link(self, key: str) -> None:
        values: dict[str, str] = {}
        for name, given in self.request.query_arguments.items():
            if name not in ("exp", "sig"):
                raise InvalidParam(name, "unknown parameter")
            if len(given) != 1:
                raise InvalidParam(name, "given more than once")
            values[name] = given[0].decode("latin-1")
        if not self.serving.urls.valid(key, values.get("exp", ""), values.get("sig", "")):
            raise BadSignature("the link is not valid or has expired")

    def _local_path(self, key: str) -> str | None:
        """The stored file's path under the storage folder; None after a 302 to an HTTP
        storage's URL."""
        record = self.processor.get(key) if self.processor and _KEY.fullmatch(key) else None
        if record is None or record.get("state") != "stored" or not record.get("url"):
            raise NotFound(f"no stored file with key {key}")
        url: str = record["url"]
        if url.startswith(("http://", "https://")):
            self.redirect(url)
            return None
        parts = urlsplit(url)
        root = self.serving.root.resolve()
        path = Path(url2pathname(parts.path)).resolve()
        if parts.scheme != "file" or not path.is_relative_to(root):
            log.warning("media %s: stored at %s, outside %s: not served", key, url, root)
            raise NotFound(f"no stored file with key {key}")
        self._record = record
        return str(path.relative_to(root))

    # --- StaticFileHandler's hooks --------------------------------------------------------

    def compute_etag(self) -> str | None:
        # The key is a hash of the Telegram file: the same key, the same bytes.
        key = self._record.get("key")
        return f'"{key}"' if key else None

    def get_content_type(self) -> str:
        mime = str(self._record.get("mime_type") or "").lower()
        if _MIME.fullmatch(mime):
            return mime
        guessed, _ = mimetypes.guess_type(self.absolute_path or "")
        return guessed or "application/octet-stream"

    def set_extra_headers(self, path: str) -> None:
        fallback = f"{self._record['key']}{Path(path).suffix}"
        name = clean_file_name(self._record.get("file_name"), fallback)
        self.set_header(
            "Content-Disposition", content_disposition(self.get_content_type(), name)
        )

    @classmethod
    def get_content(  # type: ignore[override]  # views, not bytes: see write()
        cls, abspath: str, start: int | None = None, end: int | None = None
    ) -> Generator[memoryview, None, None]:
        """Bytes [start, end) as views of WINDOW-sized maps of the file. Only the kernel
        reads them (the socket's send): a file cut short meanwhile fails that send, it
        can't fault this process."""
        with open(abspath, "rb") as file:
            position = start or 0
            stop = os.fstat(file.fileno()).st_size if end is None else end
            while position < stop:
                base = position - position % mmap.ALLOCATIONGRANULARITY
                length = min(WINDOW, stop - base)
                window = mmap.mmap(file.fileno(), length, offset=base, access=mmap.ACCESS_READ)
                # Unmapped once the last view is dropped (sent, and the next one yielded).
                yield memoryview(window)[position - base :]
                position = base + length

    def write(self, chunk: str | bytes | dict[str, Any] | memoryview) -> None:
        """StaticFileHandler.get writes each window, then flushes it: a window goes to the
        connection as it is (RequestHandler.write would copy it into bytes)."""
        if isinstance(chunk, memoryview):
            self._window = chunk
            return
        super().write(chunk)

    def flush(self, include_footers: bool = False) -> Future[None]:
        """Sends the pending window (after the headers, the first time). Each must leave
        within `stall_timeout`, or the connection is closed and StaticFileHandler.get stops
        as for a client gone."""
        window, self._window = self._window, None
        if window is None:
            flushed = super().flush(include_footers)
        else:
            flushed = Future()
            self._sending = asyncio.ensure_future(self._send(window))
            chain_future(self._sending, flushed)
        if flushed.done() or not self._streaming:
            return flushed
        timer = asyncio.get_running_loop().call_later(
            self.serving.stall_timeout, self._stalled, flushed
        )
        flushed.add_done_callback(lambda _: timer.cancel())
        return flushed

    async def _send(self, window: memoryview) -> None:
        await super().flush()  # the headers the first time; an empty write after that
        connection = self.request.connection
        assert connection is not None  # a request being answered has one
        await connection.write(window)  # type: ignore[arg-type]  # bytes or a buffer

    def _stalled(self, flushed: Future[None]) -> None:
        log.info(
            "GET %s: the client read nothing for %g s: connection closed",
            self.route,
            self.serving.stall_timeout,
        )
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.close()
        # Closing drops the connection's pending write future without resolving it
        # (HTTP1Connection._clear_callbacks): end the wait here, and the window's send.
        if self._sending is not None:
            self._sending.cancel()
        if not flushed.done():
            flushed.set_exception(StreamClosedError())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs["exc_info"][1] if kwargs.get("exc_info") else None
        if isinstance(exc, BadSignature):
            self.failure = exc
            self.set_status(403)
            self.clear_header("Content-Type")
            self.finish()
            return
        if isinstance(exc, tornado.web.HTTPError) and exc.status_code == 403:
            # StaticFileHandler's "outside the root" or "not a regular file": not served.
            exc = NotFound("no stored file with this key")
            kwargs = {"exc_info": (type(exc), exc, None)}
        super().write_error(status_code, **kwargs)


def clean_file_name(name: str | None, fallback: str) -> str:
    """A file name safe to offer a browser or a crawler: its last path component, without
    control or format characters (bidi overrides included), no leading dots, at most
    FILE_NAME_MAX characters; `fallback` when nothing is left."""
    base = unicodedata.normalize("NFC", (name or "").replace("\\", "/").rsplit("/", 1)[-1])
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(".").strip()[:FILE_NAME_MAX].strip()
    return base or fallback


def content_disposition(mime_type: str, name: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients and the exact one as `filename*`."""
    kind = "inline" if _INLINE.fullmatch(mime_type) else "attachment"
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
