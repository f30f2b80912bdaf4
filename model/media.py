"""What a Telegram photo or document is, its stable key, and how one is read from Telethon.

A `Media` is built by `service/parser.py` from a Telethon `Photo` or `Document` seen by one
account. It carries what `upload.getFile` needs (ids, the account's access hash and file
reference, the data centre) and what the contract's media descriptor shows (type, size,
mime type, a sanitised file name, dimensions, duration).

Identity: `key` is `common.utils.media_key(kind, file_id, thumb_size)`: Telegram's file id
is the same for every account (only `access_hash` and `file_reference` are per account), so
the same file brought by two accounts or ten messages has one key and is stored once.

`file_name` comes from whoever uploaded the file: it is cleaned for display and for a
`Content-Disposition`, and is never used as a path; files are stored under their key.

The download itself (parts in flight, resume, the account's media connections) is
model/downloader.py's; `Media.download` is a shortcut to it.
"""

from __future__ import annotations

import base64
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson
from telethon.tl import types

from common.utils import media_key
from model.downloader import download_media

if TYPE_CHECKING:
    from model.downloader import MediaClient

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
        self, to_path: str | os.PathLike[str], *, client: MediaClient, **options: Any
    ) -> None:
        """Streams this file into `to_path` with `client`, the TeleClient of the account it
        is bound to (anything with its `media_connections`): `download_media(client, self,
        to_path, **options)` of model/downloader.py, whose docstring lists the options
        (parts in flight, resume, reference refresh) and what it raises. Queues, the spool
        and storage are service/mediaprocessor.py's."""
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
            # A signed link to the bytes on this server once stored; the API's answers fill
            # it in (service/files.py), events leave it null (it would expire unread).
            "content_url": None,
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
    return int(size.size)  # Telethon's types are untyped


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
