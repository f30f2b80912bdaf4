"""What a Telegram photo or document is, its stable key, and a fast download of it.

A `Media` is built by `service/parser.py` from a Telethon `Photo` or `Document` seen by one
account. It carries what `upload.getFile` needs (ids, the account's access hash and file
reference, the data centre) and what the contract's media descriptor shows (type, size,
mime type, a sanitised file name, dimensions, duration).

Identity: `key` is `common.utils.media_key(kind, file_id, thumb_size)`: Telegram's file id
is the same for every account (only `access_hash` and `file_reference` are per account), so
the same file brought by two accounts or ten messages has one key and is stored once.

`file_name` comes from whoever uploaded the file: it is cleaned for display and for a
`Content-Disposition`, and is never used as a path; files are stored under their key.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import unicodedata
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson
from telethon import errors
from telethon.network import ConnectionTcpFull, ConnectionTcpIntermediate, MTProtoSender
from telethon.tl import functions, types
from telethon.tl.alltlobjects import LAYER

from common.errors import AccountUnusable, FloodWait, TelegramError, TgcError
from common.utils import media_key
from model.tgerrors import account_fate, rpc_error_name

if TYPE_CHECKING:
    from telethon import TelegramClient

log = logging.getLogger(__name__)

# Every media type a descriptor may carry. "webpage_photo" is the photo of a link preview,
# "video_note" a round video message.
MEDIA_TYPES = frozenset(
    {
        "photo",
        "video",
        "video_note",
        "document",
        "audio",
        "voice",
        "sticker",
        "animation",
        "webpage_photo",
    }
)

# The one place an extension comes from: a fixed map of mime types. A name's own suffix is
# used only when it is one of these values, so an uploader can't choose what we write.
_EXT_BY_MIME: dict[str, str] = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/heic": ".heic",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "image/svg+xml": ".svg",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
    "video/mpeg": ".mpeg",
    "video/3gpp": ".3gp",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/aac": ".aac",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/x-rar-compressed": ".rar",
    "application/vnd.rar": ".rar",
    "application/x-7z-compressed": ".7z",
    "application/gzip": ".gz",
    "application/x-tar": ".tar",
    "application/json": ".json",
    "application/xml": ".xml",
    "application/msword": ".doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.ms-powerpoint": ".ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "application/vnd.android.package-archive": ".apk",
    "application/epub+zip": ".epub",
    "application/x-tgsticker": ".tgs",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "text/html": ".html",
}
_KNOWN_EXTS = frozenset(_EXT_BY_MIME.values()) | {".jpeg", ".mpg", ".oga", ".mka"}
_DEFAULT_EXT = {"photo": ".jpg", "webpage_photo": ".jpg", "sticker": ".webp", "voice": ".ogg"}

# Long enough for any real name, short enough for a header or a filesystem (255 bytes).
FILE_NAME_MAX = 200


def sanitize_file_name(name: str | None) -> str | None:
    """Cleans an uploader's file name for display; None when nothing usable is left.

    Removes control and format characters (NUL, newlines, bidi overrides), replaces path
    separators, drops leading dots and spaces (no hidden or relative names), and bounds the
    length while keeping a short suffix.

    >>> sanitize_file_name("../../etc/passwd")
    '_.._etc_passwd'
    >>> sanitize_file_name("a\\x00b.txt")
    'ab.txt'
    """
    if not name:
        return None
    text = unicodedata.normalize("NFC", name)
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co"))
    text = text.replace("/", "_").replace("\\", "_")
    text = text.strip().lstrip(". ").rstrip()
    text = _bound(text)
    return text or None


def _bound(text: str) -> str:
    if len(text) <= FILE_NAME_MAX:
        return text
    stem, dot, suffix = text.rpartition(".")
    if dot and stem and 0 < len(suffix) <= 10:
        return stem[: FILE_NAME_MAX - len(suffix) - 1] + "." + suffix
    return text[:FILE_NAME_MAX]


@dataclass(slots=True)
class Media:
    """One downloadable Telegram file as one account sees it.

    `kind` is "photo" or "document" (which `InputFileLocation` to use); `thumb_size` is the
    photo size type picked (the largest), "" for documents. `peer_id` (marked) and `msg_id`
    say where the account saw it, so the file reference can be refreshed by fetching that
    message again (`msg_id` is None for a peer's own photo: fetch the peer's full info).
    """

    type: str
    kind: str
    file_id: int
    access_hash: int
    file_reference: bytes
    dc_id: int
    size: int
    mime_type: str
    thumb_size: str = ""
    file_name: str | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    account: str = ""
    peer_id: int | None = None
    msg_id: int | None = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("photo", "document"):
            raise ValueError(f"kind must be photo or document, not {self.kind!r}")
        if self.type not in MEDIA_TYPES:
            raise ValueError(f"unknown media type {self.type!r}")
        self.file_name = sanitize_file_name(self.file_name)
        self.key = media_key(self.kind, self.file_id, self.thumb_size)

    def location(self) -> types.InputPhotoFileLocation | types.InputDocumentFileLocation:
        """The `upload.getFile` location, with this account's access hash and reference."""
        if self.kind == "photo":
            return types.InputPhotoFileLocation(
                id=self.file_id,
                access_hash=self.access_hash,
                file_reference=self.file_reference,
                thumb_size=self.thumb_size,
            )
        return types.InputDocumentFileLocation(
            id=self.file_id,
            access_hash=self.access_hash,
            file_reference=self.file_reference,
            thumb_size="",
        )

    async def download(
        self, to_path: str | os.PathLike[str], *, client: TelegramClient, **options: Any
    ) -> None:
        """Streams this file into `to_path` with `client`, the Telethon client of the account
        it is bound to: `download_media(client, self, to_path, **options)`, whose docstring
        lists the options (parts in flight, resume, reference refresh) and what it raises.
        Queues, the spool and storage are service/mediaprocessor.py's."""
        await download_media(client, self, to_path, **options)

    @property
    def extension(self) -> str:
        """ ".jpg", ".mp4", ...: from the mime type, else a known suffix of the name."""
        ext = _EXT_BY_MIME.get(self.mime_type.lower())
        if ext:
            return ext
        if self.file_name and "." in self.file_name:
            suffix = "." + self.file_name.rsplit(".", 1)[1].lower()
            if suffix in _KNOWN_EXTS:
                return suffix
        return _DEFAULT_EXT.get(self.type, ".bin")

    def descriptor(self, state: str = "pending", url: str | None = None) -> dict[str, Any]:
        """The contract's media descriptor."""
        return {
            "key": self.key,
            "type": self.type,
            "mime_type": self.mime_type,
            "size": self.size,
            "file_name": self.file_name,
            "width": self.width,
            "height": self.height,
            "duration": self.duration,
            "state": state,
            "url": url,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (the file reference as base64), for persistence."""
        data = asdict(self)
        data["file_reference"] = base64.b64encode(self.file_reference).decode("ascii")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Media:
        """The inverse of `to_dict`; checks the key still matches (a changed key scheme or a
        corrupted record must not silently store a file under another key)."""
        fields = dict(data)
        stored_key = fields.pop("key", None)
        fields["file_reference"] = base64.b64decode(fields.get("file_reference") or b"")
        media = cls(**fields)
        if stored_key is not None and stored_key != media.key:
            raise ValueError(f"stored key {stored_key} != computed {media.key}")
        return media

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Media:
        return cls.from_dict(orjson.loads(text))


def media_from_photo(
    photo: types.Photo,
    *,
    type: str = "photo",
    account: str = "",
    peer_id: int | None = None,
    msg_id: int | None = None,
) -> Media | None:
    """The largest downloadable size of a photo; None when it has none."""
    best = largest_photo_size(photo.sizes or [])
    if best is None:
        return None
    return Media(
        type=type,
        kind="photo",
        file_id=photo.id,
        access_hash=photo.access_hash,
        file_reference=photo.file_reference or b"",
        dc_id=photo.dc_id,
        size=_photo_size_bytes(best),
        mime_type="image/jpeg",
        thumb_size=best.type,
        width=best.w,
        height=best.h,
        account=account,
        peer_id=peer_id,
        msg_id=msg_id,
    )


_Downloadable: TypeAlias = types.PhotoSize | types.PhotoSizeProgressive | types.PhotoCachedSize
_DOWNLOADABLE = (types.PhotoSize, types.PhotoSizeProgressive, types.PhotoCachedSize)


def largest_photo_size(sizes: list[Any]) -> _Downloadable | None:
    """The size with the most pixels (then bytes); stripped and path sizes are previews
    embedded in the message, not files, and are skipped."""
    candidates = [s for s in sizes if isinstance(s, _DOWNLOADABLE)]
    if not candidates:
        return None
    return max(candidates, key=lambda s: (s.w * s.h, _photo_size_bytes(s)))


def _photo_size_bytes(size: _Downloadable) -> int:
    if isinstance(size, types.PhotoSizeProgressive):
        return max(size.sizes, default=0)
    if isinstance(size, types.PhotoCachedSize):
        return len(size.bytes)
    return size.size


def media_from_document(
    document: types.Document,
    *,
    account: str = "",
    peer_id: int | None = None,
    msg_id: int | None = None,
    hint: str | None = None,
) -> Media:
    """A document with its type told by its attributes (`hint` is the message's own flag:
    voice, round or video, which wins when the attributes agree it is audio/video)."""
    attrs = document.attributes or []
    name = next(
        (a.file_name for a in attrs if isinstance(a, types.DocumentAttributeFilename)), None
    )
    width = height = None
    duration: float | None = None
    for attr in attrs:
        if isinstance(attr, types.DocumentAttributeVideo | types.DocumentAttributeImageSize):
            width, height = attr.w, attr.h
        if isinstance(attr, types.DocumentAttributeVideo | types.DocumentAttributeAudio):
            duration = float(attr.duration) if attr.duration is not None else None
    return Media(
        type=document_type(attrs, hint),
        kind="document",
        file_id=document.id,
        access_hash=document.access_hash,
        file_reference=document.file_reference or b"",
        dc_id=document.dc_id,
        size=document.size,
        mime_type=clean_mime(document.mime_type),
        file_name=name,
        width=width,
        height=height,
        duration=duration,
        account=account,
        peer_id=peer_id,
        msg_id=msg_id,
    )


def document_type(attrs: list[Any], hint: str | None = None) -> str:
    """sticker, animation, video_note, video, voice, audio or document."""
    kinds = {type(a) for a in attrs}
    if types.DocumentAttributeSticker in kinds:
        return "sticker"
    if types.DocumentAttributeAnimated in kinds:
        return "animation"
    for attr in attrs:
        if isinstance(attr, types.DocumentAttributeVideo):
            return "video_note" if attr.round_message or hint == "round" else "video"
        if isinstance(attr, types.DocumentAttributeAudio):
            return "voice" if attr.voice or hint == "voice" else "audio"
    return "document"


_SAFE_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,127}$")


def clean_mime(mime: str | None, default: str = "application/octet-stream") -> str:
    """A syntactically valid, lower-case mime type (it ends up in a Content-Type header)."""
    text = (mime or "").strip().lower()
    return text if _SAFE_MIME.match(text) else default


# -- downloading --------------------------------------------------------------------------
#
# Telethon's own download asks for one part at a time, so its speed is one part per round
# trip (~2.5 MB/s at 50 ms). Here `parts_in_flight` workers share one list of parts, each
# keeping one `upload.getFile` in flight on the same connection, and write every part at
# its offset with os.pwrite in a thread: speed ≈ bytes in flight ÷ round trip until the CPU
# is full, memory ≈ parts_in_flight × part_size, never the whole file.

MIB = 1 << 20
_PART_STEP = 4096
# FILE_REFERENCE_EXPIRED again and again means the refresh gives nothing usable.
_MAX_REFRESHES = 5
# A part that fails on a lost connection is asked again this many times, with backoff.
_CONNECTION_RETRIES = 5
_RETRY_DELAY = 0.5
_REFERENCE_ERRORS = (errors.FileReferenceExpiredError, errors.FilerefUpgradeNeededError)
# FLOOD_PREMIUM_WAIT_X is how Telegram slows non-premium accounts that download fast.
_FLOOD_ERRORS = (errors.FloodWaitError, errors.FloodPremiumWaitError)
_TRANSIENT_RPC = (errors.ServerError, errors.TimedOutError)
RefreshReference = Callable[[], Awaitable[bytes]]
OnPart = Callable[[int, int], None]


def part_count(size: int, part_size: int = MIB) -> int:
    """How many parts of `part_size` a file of `size` bytes has."""
    return -(-size // part_size)


def check_part_size(part_size: int) -> None:
    """Telegram's rule: a multiple of 4 KB that divides 1 MB (so no part crosses a 1 MB
    boundary when offsets are multiples of it)."""
    if part_size <= 0 or part_size % _PART_STEP or MIB % part_size:
        raise ValueError(f"part_size {part_size} must be a multiple of 4096 dividing 1 MiB")


async def download_media(
    client: TelegramClient,
    media: Media,
    path: str | os.PathLike[str],
    *,
    parts_in_flight: int = 8,
    part_size: int = MIB,
    done_parts: set[int] | None = None,
    refresh_reference: RefreshReference | None = None,
    on_part: OnPart | None = None,
    media_connection: bool = True,
) -> None:
    """Downloads `media` with `client` (the account it is bound to) into `path`.

    Part `i` covers bytes [i × part_size, (i + 1) × part_size) and is written at that
    offset; the file is created if missing and never truncated before the end, so a
    download resumes: `done_parts` names the parts already in the file (it is updated in
    place), and `on_part(index, nbytes)` is called after each part is written, for the
    caller to persist. Keep `part_size` the same across resumes.

    Raises `FloodWait` (the caller decides to wait; progress is kept), `AccountUnusable`
    (the account was banned or logged out meanwhile), `TelegramError` (any other Telegram
    refusal, FILE_REFERENCE_EXPIRED when `refresh_reference` is None or keeps failing), or
    `ConnectionError` when the connection stays down after retries. A dropped connection
    is otherwise survived: Telethon reconnects and resends, a part that failed is asked
    again.

    `refresh_reference()` is awaited on FILE_REFERENCE_EXPIRED (once, however many parts
    met it) and must return the file's new reference for the same account (fetch the
    message again); `media.file_reference` is updated and the download continues.

    A file of unknown size (`media.size` ≤ 0) is fetched until a short part; `done_parts`
    is ignored then.

    `media_connection`: a file on the account's home DC is fetched over a second
    connection with the same auth key (what Telegram's own apps do for media), so the
    account's API calls don't queue behind megabytes of parts (measured on the emulator,
    a loaded 2-core machine: get_messages took a median ~180–250 ms during a download on
    the shared connection, ~20–75 ms with the media connection, ~2 ms idle).
    Files on other DCs always use Telethon's exported sender.
    """
    check_part_size(part_size)
    if parts_in_flight < 1:
        raise ValueError("parts_in_flight must be at least 1")
    loop = asyncio.get_running_loop()
    # Opened inline: one syscall, and an fd opened in a thread would leak if we were
    # cancelled while waiting for it.
    fd = _open_spool(os.fspath(path))
    job = _Job(
        client, media, fd, part_size, done_parts, refresh_reference, on_part, media_connection
    )
    try:
        await job.borrow(media.dc_id)
        await job.run(parts_in_flight)
        await loop.run_in_executor(None, os.ftruncate, fd, job.total_size())
    finally:
        await job.settle_writes()
        await job.release()
        os.close(fd)


def _open_spool(path: str) -> int:
    # O_NOFOLLOW: the spool path is ours, a symlink planted there is not followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    return os.open(path, flags, 0o600)


# The home DC's media connection is ours, not one of Telethon's borrowed senders: Telethon
# holds `_borrow_sender_lock` while it connects to another DC and exports the authorization
# there (retries included, ~6 s when that DC is down), and every borrow or return waits on
# that lock; a home-DC download must not stall behind a foreign DC.
_MEDIA_IDLE_CLOSE = 60.0  # seconds unused before it closes (Telethon's exported senders: 60)
_home_senders: weakref.WeakKeyDictionary[Any, _HomeSender] = weakref.WeakKeyDictionary()
_ours: weakref.WeakSet[Any] = weakref.WeakSet()  # every home media sender ever opened


async def _borrow_home_sender(client: TelegramClient) -> Any:
    """A media connection to the home DC, shared by the client's home-DC downloads.

    Same auth key as the main connection (so nothing to export or import; Telegram allows
    several connections, each its own MTProto session, per key). Given back with
    `_return_sender`; closed after `_MEDIA_IDLE_CLOSE` s unused and when the client
    disconnects.
    """
    home = _home_senders.get(client)
    if home is None:
        home = _home_senders[client] = _HomeSender()
    return await home.borrow(client)


async def close_media_connection(client: TelegramClient) -> None:
    """Closes the client's home-DC media connection now, if it has one. `TeleClient.stop`
    calls it; otherwise it closes itself when idle or once the client disconnected."""
    home = _home_senders.pop(client, None)
    if home is not None:
        await home.close()


async def _return_sender(client: TelegramClient, sender: Any) -> None:
    """Gives back a sender from `_borrow_home_sender` or Telethon's `_borrow_exported_sender`."""
    if sender in _ours:
        home = _home_senders.get(client)
        if home is not None:
            home.give_back(sender)
        return
    await client._return_exported_sender(sender)


class _HomeSender:
    """One client's home-DC media connection: opened on the first borrow (under a lock of
    its own), counted, closed when idle or when the client disconnects."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.sender: Any = None
        self.borrows = 0
        self.idle: asyncio.TimerHandle | None = None
        self.watch: asyncio.Task[None] | None = None

    async def borrow(self, client: TelegramClient) -> Any:
        async with self.lock:
            if self.sender is None or not self.sender.is_connected():
                await self.open(client)
            if self.idle is not None:
                self.idle.cancel()
                self.idle = None
            self.borrows += 1
            return self.sender

    def give_back(self, sender: Any) -> None:
        if sender is not self.sender:
            return  # closed (client disconnected) since it was borrowed
        self.borrows -= 1
        if self.borrows == 0:
            loop = asyncio.get_running_loop()
            self.idle = loop.call_later(_MEDIA_IDLE_CLOSE, self.close_if_idle)

    async def open(self, client: TelegramClient) -> None:
        await self.close()  # a sender whose reconnects failed: start afresh
        dc_id = client.session.dc_id
        sender = MTProtoSender(client.session.auth_key, loggers=client._log)
        await sender.connect(_home_connection(client))
        try:
            client._init_request.query = functions.help.GetConfigRequest()
            await sender.send(functions.InvokeWithLayerRequest(LAYER, client._init_request))
        except BaseException:
            await sender.disconnect()
            raise
        sender.dc_id = dc_id
        _ours.add(sender)
        self.sender, self.borrows = sender, 0
        self.watch = asyncio.ensure_future(self.close_with(client, sender))

    async def close_with(self, client: TelegramClient, sender: Any) -> None:
        """Closes `sender` when the client disconnects (Telethon's disconnect closes only
        its own borrowed senders)."""
        try:
            await client.disconnected
        except Exception:
            pass  # the main connection failed for good: close ours all the same
        if self.sender is sender:
            self.detach()
        await sender.disconnect()

    def close_if_idle(self) -> None:
        self.idle = None
        if self.borrows == 0 and self.sender is not None:
            log.debug("closing the idle media connection to dc %s", self.sender.dc_id)
            # Detached now, not in the task: a borrow in between gets a new sender.
            task = asyncio.ensure_future(_disconnect(self.detach()))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    async def close(self) -> None:
        await _disconnect(self.detach())

    def detach(self) -> Any:
        """Drops the current sender and what watches it; returns it for the caller to close."""
        sender = self.sender
        if self.watch is not None and self.watch is not asyncio.current_task():
            self.watch.cancel()
        if self.idle is not None:
            self.idle.cancel()
        self.sender, self.borrows, self.watch, self.idle = None, 0, None, None
        return sender


async def _disconnect(sender: Any) -> None:
    if sender is not None:
        await sender.disconnect()


_closing: set[asyncio.Task[None]] = set()  # idle disconnects under way (keeps them referenced)


def _home_connection(client: TelegramClient) -> Any:
    session = client.session
    # The default TCP-full transport checksums every packet with CRC32, which MTProto's own
    # msg_key check makes redundant: intermediate saves ~8% of the client's CPU per MB.
    # Any other transport (an MTProxy's obfuscated one) is kept as the client has it.
    transport = client._connection
    if transport is ConnectionTcpFull:
        transport = ConnectionTcpIntermediate
    return transport(
        session.server_address,
        session.port,
        session.dc_id,
        loggers=client._log,
        proxy=client._proxy,
        local_addr=client._local_addr,
    )


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
    return len(data)


class _Job:
    """The state the part workers of one download share."""

    def __init__(
        self,
        client: TelegramClient,
        media: Media,
        fd: int,
        part_size: int,
        done_parts: set[int] | None,
        refresh_reference: RefreshReference | None,
        on_part: OnPart | None,
        media_connection: bool,
    ) -> None:
        self.client = client
        self.media = media
        self.fd = fd
        self.part_size = part_size
        self.sized = media.size > 0
        self.done = done_parts if done_parts is not None else set()
        self.refresh_reference = refresh_reference
        self.on_part = on_part
        self.media_connection = media_connection
        self.sender: Any = None
        self.borrowed = False  # from _borrow_home_sender or Telethon's: give it back
        self.refreshes = 0
        self.lock = asyncio.Lock()  # one reference refresh / DC switch at a time
        self.next_index = 0
        self.end_index: int | None = None  # unknown size: the short part's index
        self.end_bytes = 0
        self.writes: set[asyncio.Future[int]] = set()
        if self.sized:
            n = part_count(media.size, part_size)
            self.todo: Iterator[int] | None = iter([i for i in range(n) if i not in self.done])
        else:
            self.done.clear()
            self.todo = None

    # -- the connection -----------------------------------------------------------------

    async def borrow(self, dc_id: int) -> None:
        """A sender for the file's DC: Telethon's exported sender for another DC (the
        private API its own downloads use: auth exported once, the connection shared), and
        on the home DC a media connection of our own (`_borrow_home_sender`), or the main
        one. The new sender is in place before the old one is returned, so a part never
        sees none."""
        old, old_borrowed = self.sender, self.borrowed
        home = not dc_id or dc_id == self.client.session.dc_id
        if home and not self.media_connection:
            self.sender, self.borrowed = self.client._sender, False
        else:
            log.debug("file %s on dc %d: borrowing a sender", self.media.key, dc_id)
            try:
                if home:
                    sender = await _borrow_home_sender(self.client)
                else:
                    sender = await self.client._borrow_exported_sender(dc_id)
            except _FLOOD_ERRORS as e:
                raise FloodWait(e.seconds, account=self.media.account) from e
            except errors.RPCError as e:
                raise _domain_error(e, self.media.account) from e
            self.sender, self.borrowed = sender, True
        if old_borrowed and old is not None:
            await _return_sender(self.client, old)

    async def release(self) -> None:
        if self.borrowed and self.sender is not None:
            await _return_sender(self.client, self.sender)
        self.sender, self.borrowed = None, False

    async def settle_writes(self) -> None:
        """Waits for writes still running in threads: the fd must not be closed (and its
        number reused by another file) under a pwrite, even when the download is
        cancelled."""
        if self.writes:
            await asyncio.gather(*self.writes, return_exceptions=True)

    # -- the parts ----------------------------------------------------------------------

    def next_part(self) -> int | None:
        if self.todo is not None:
            return next(self.todo, None)
        if self.end_index is not None and self.next_index > self.end_index:
            return None
        index = self.next_index
        self.next_index += 1
        return index

    def total_size(self) -> int:
        if self.sized:
            return self.media.size
        return (self.end_index or 0) * self.part_size + self.end_bytes

    async def run(self, parts_in_flight: int) -> None:
        workers = [asyncio.create_task(self.worker()) for _ in range(parts_in_flight)]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while (index := self.next_part()) is not None:
            data = await self.fetch(index)
            if not self.accept(index, data):
                continue
            if data:
                offset = index * self.part_size
                write = loop.run_in_executor(None, _pwrite_all, self.fd, data, offset)
                self.writes.add(write)
                write.add_done_callback(self.writes.discard)
                # Shielded: a cancelled worker leaves its write running; settle_writes waits.
                await asyncio.shield(write)
            self.done.add(index)
            if self.on_part is not None:
                self.on_part(index, len(data))

    def accept(self, index: int, data: bytes) -> bool:
        """Checks a part's length: full, or the file's last part; False for a part past
        the end of a file of unknown size."""
        if self.sized:
            expected = min(self.part_size, self.media.size - index * self.part_size)
            if len(data) != expected:
                raise TelegramError(
                    "FILE_PART_SIZE",
                    f"FILE_PART_SIZE: part {index} has {len(data)} bytes, not {expected}",
                )
            return True
        if self.end_index is not None and index > self.end_index:
            return False
        if len(data) < self.part_size:
            self.end_index, self.end_bytes = index, len(data)
        return True

    async def fetch(self, index: int) -> bytes:
        """One part, surviving what can be survived (see download_media)."""
        failures = 0
        while True:
            reference, sender = self.media.file_reference, self.sender
            request = functions.upload.GetFileRequest(
                location=self.media.location(),
                offset=index * self.part_size,
                limit=self.part_size,
            )
            try:
                result = await self.client._call(sender, request)
            except _REFERENCE_ERRORS:
                await self.refresh(reference)
                continue
            except errors.FileMigrateError as e:
                await self.switch_dc(sender, e.new_dc)
                continue
            except _FLOOD_ERRORS as e:
                raise FloodWait(e.seconds, account=self.media.account) from e
            except _TRANSIENT_RPC as e:
                # Telethon's _call already retried these; a few more tries, then give up.
                failures += 1
                if failures > _CONNECTION_RETRIES:
                    raise _domain_error(e, self.media.account) from e
                log.info("file %s part %d: %s, retrying", self.media.key, index, type(e).__name__)
                await asyncio.sleep(_RETRY_DELAY * failures)
                continue
            except errors.RPCError as e:
                raise _domain_error(e, self.media.account) from e
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as e:
                failures += 1
                if failures > _CONNECTION_RETRIES:
                    raise ConnectionError(f"part {index}: {e!r}") from e
                log.info("file %s part %d: %r, retrying", self.media.key, index, e)
                await asyncio.sleep(_RETRY_DELAY * failures)
                continue
            if not isinstance(result, types.upload.File):
                # FileCdnRedirect: only sent to clients that set cdn_supported; we don't.
                name = type(result).__name__
                raise TelegramError("FILE_CDN_REDIRECT", f"FILE_CDN_REDIRECT: unexpected {name}")
            return bytes(result.bytes)

    async def refresh(self, used: bytes) -> None:
        async with self.lock:
            if self.media.file_reference != used:
                return  # another part already refreshed it
            if self.refresh_reference is None or self.refreshes >= _MAX_REFRESHES:
                raise TelegramError("FILE_REFERENCE_EXPIRED")
            self.refreshes += 1
            log.info("file %s: reference expired, refreshing", self.media.key)
            fresh = await self.refresh_reference()
            if not fresh or fresh == used:
                raise TelegramError(
                    "FILE_REFERENCE_EXPIRED",
                    "FILE_REFERENCE_EXPIRED: the refreshed reference is not new",
                )
            self.media.file_reference = bytes(fresh)

    async def switch_dc(self, used: Any, dc_id: int) -> None:
        async with self.lock:
            if self.sender is not used:
                return
            log.info("file %s lives on dc %d, not %d", self.media.key, dc_id, self.media.dc_id)
            self.media.dc_id = dc_id
            await self.borrow(dc_id)


def _domain_error(error: errors.RPCError, account: str) -> TgcError:
    name = rpc_error_name(error)
    fate = account_fate(error)
    if fate is not None:
        return AccountUnusable(account, fate, name)
    return TelegramError(name)
