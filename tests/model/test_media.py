"""Media: identity, sanitising, persistence, building from Telethon objects."""

from __future__ import annotations

import datetime as dt
import unicodedata

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from telethon.tl import types

from common.utils import media_key
from model.media import (
    FILE_NAME_MAX,
    Media,
    clean_mime,
    document_type,
    largest_photo_size,
    media_from_document,
    media_from_photo,
    sanitize_file_name,
)

DATE = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def make_document(
    doc_id: int = 77,
    access_hash: int = 1,
    reference: bytes = b"ref",
    mime: str = "video/mp4",
    size: int = 5_000_000,
    attrs: list[object] | None = None,
    dc_id: int = 2,
) -> types.Document:
    return types.Document(
        id=doc_id,
        access_hash=access_hash,
        file_reference=reference,
        date=DATE,
        mime_type=mime,
        size=size,
        dc_id=dc_id,
        attributes=attrs if attrs is not None else [],
    )


def make_photo(photo_id: int = 55, access_hash: int = 1, reference: bytes = b"pref") -> types.Photo:
    return types.Photo(
        id=photo_id,
        access_hash=access_hash,
        file_reference=reference,
        date=DATE,
        sizes=[
            types.PhotoStrippedSize(type="i", bytes=b"\x01\x02"),
            types.PhotoSize(type="m", w=320, h=240, size=20_000),
            types.PhotoSizeProgressive(type="y", w=1280, h=960, sizes=[10_000, 90_000, 150_000]),
            types.PhotoSize(type="x", w=800, h=600, size=80_000),
        ],
        dc_id=4,
    )


def test_photo_picks_largest_size_and_stable_key() -> None:
    media = media_from_photo(make_photo(), account="a1", peer_id=-1001, msg_id=9)
    assert media is not None
    assert (media.kind, media.type, media.thumb_size) == ("photo", "photo", "y")
    assert (media.width, media.height, media.size) == (1280, 960, 150_000)
    assert media.dc_id == 4 and media.mime_type == "image/jpeg"
    assert media.key == media_key("photo", 55, "y")
    assert media.extension == ".jpg"
    loc = media.location()
    assert isinstance(loc, types.InputPhotoFileLocation)
    assert (loc.id, loc.access_hash, loc.file_reference, loc.thumb_size) == (55, 1, b"pref", "y")


def test_photo_without_downloadable_size_is_none() -> None:
    photo = make_photo()
    photo.sizes = [types.PhotoStrippedSize(type="i", bytes=b"x"), types.PhotoSizeEmpty(type="s")]
    assert media_from_photo(photo) is None
    assert largest_photo_size([]) is None


def test_same_file_from_two_accounts_has_one_key() -> None:
    a = media_from_document(make_document(access_hash=111, reference=b"a"), account="one")
    b = media_from_document(make_document(access_hash=222, reference=b"b"), account="two")
    assert a.key == b.key
    assert a.key != media_from_document(make_document(doc_id=78)).key
    pa = media_from_photo(make_photo(access_hash=1, reference=b"x"), account="one")
    pb = media_from_photo(make_photo(access_hash=2, reference=b"y"), account="two")
    assert pa is not None and pb is not None and pa.key == pb.key


@pytest.mark.parametrize(
    ("attrs", "hint", "expected"),
    [
        ([], None, "document"),
        ([types.DocumentAttributeFilename("a.pdf")], None, "document"),
        ([types.DocumentAttributeVideo(duration=3.5, w=640, h=360)], None, "video"),
        (
            [types.DocumentAttributeVideo(duration=3, w=240, h=240, round_message=True)],
            None,
            "video_note",
        ),
        ([types.DocumentAttributeVideo(duration=3, w=240, h=240)], "round", "video_note"),
        ([types.DocumentAttributeAudio(duration=30, title="t")], None, "audio"),
        ([types.DocumentAttributeAudio(duration=3, voice=True)], None, "voice"),
        ([types.DocumentAttributeAudio(duration=3)], "voice", "voice"),
        (
            [
                types.DocumentAttributeSticker(alt=":)", stickerset=types.InputStickerSetEmpty()),
                types.DocumentAttributeImageSize(w=512, h=512),
            ],
            None,
            "sticker",
        ),
        (
            [types.DocumentAttributeAnimated(), types.DocumentAttributeVideo(duration=1, w=2, h=2)],
            None,
            "animation",
        ),
    ],
)
def test_document_type(attrs: list[object], hint: str | None, expected: str) -> None:
    assert document_type(attrs, hint) == expected


def test_document_fields() -> None:
    doc = make_document(
        mime="Video/MP4",
        attrs=[
            types.DocumentAttributeVideo(duration=12.5, w=1920, h=1080),
            types.DocumentAttributeFilename("clip.mp4"),
        ],
    )
    media = media_from_document(doc, account="acc", peer_id=-100123, msg_id=5)
    assert media.type == "video" and media.kind == "document" and media.thumb_size == ""
    assert (media.width, media.height, media.duration) == (1920, 1080, 12.5)
    assert media.mime_type == "video/mp4" and media.file_name == "clip.mp4"
    assert media.extension == ".mp4"
    assert (media.account, media.peer_id, media.msg_id, media.dc_id) == ("acc", -100123, 5, 2)
    loc = media.location()
    assert isinstance(loc, types.InputDocumentFileLocation) and loc.thumb_size == ""


def test_descriptor_has_contract_fields() -> None:
    media = media_from_document(make_document())
    desc = media.descriptor()
    assert set(desc) == {
        "key", "type", "mime_type", "size", "file_name", "width", "height", "duration", "state", "url",
        "content_url",
    }  # fmt: skip
    assert desc["state"] == "pending" and desc["url"] is None and desc["content_url"] is None
    assert media.descriptor("stored", "http://x/y")["url"] == "http://x/y"
    orjson.dumps(desc)


def test_json_round_trip_keeps_bytes() -> None:
    media = media_from_document(
        make_document(
            reference=bytes(range(256)), attrs=[types.DocumentAttributeFilename("x.zip")]
        ),
        account="acc",
        peer_id=-5,
        msg_id=3,
    )
    again = Media.from_json(media.to_json())
    assert again == media
    assert again.file_reference == bytes(range(256))


def test_from_dict_refuses_a_key_that_does_not_match() -> None:
    data = media_from_document(make_document()).to_dict()
    data["key"] = "0" * 32
    with pytest.raises(ValueError, match="key"):
        Media.from_dict(data)


def test_bad_kind_or_type_refused() -> None:
    with pytest.raises(ValueError):
        Media(type="photo", kind="file", file_id=1, access_hash=1, file_reference=b"",
              dc_id=1, size=1, mime_type="image/jpeg")  # fmt: skip
    with pytest.raises(ValueError):
        Media(type="hologram", kind="photo", file_id=1, access_hash=1, file_reference=b"",
              dc_id=1, size=1, mime_type="image/jpeg")  # fmt: skip


@pytest.mark.parametrize(
    ("mime", "name", "ext"),
    [
        ("application/pdf", "x.exe", ".pdf"),
        ("application/octet-stream", "Report.PDF", ".pdf"),
        ("application/octet-stream", "evil.sh", ".bin"),
        ("application/octet-stream", "noext", ".bin"),
        ("application/octet-stream", "x.jpg/../../a", ".bin"),
    ],
)
def test_extension_only_from_fixed_map(mime: str, name: str, ext: str) -> None:
    media = media_from_document(
        make_document(mime=mime, attrs=[types.DocumentAttributeFilename(name)])
    )
    assert media.extension == ext


def test_clean_mime() -> None:
    assert clean_mime("image/PNG") == "image/png"
    assert clean_mime("text/html\r\nX-Evil: 1") == "application/octet-stream"
    assert clean_mime("") == "application/octet-stream"
    assert clean_mime(None) == "application/octet-stream"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "_.._etc_passwd"),
        ("/etc/passwd", "_etc_passwd"),
        ("..\\..\\win.ini", "_.._win.ini"),
        ("a\x00b.txt", "ab.txt"),
        ("line\nbreak.txt", "linebreak.txt"),
        ("\u202etxt.exe", "txt.exe"),
        (".hidden", "hidden"),
        ("...", None),
        ("", None),
        (None, None),
        ("  spaced  ", "spaced"),
        ("ok name (1).pdf", "ok name (1).pdf"),
    ],
)
def test_sanitize_examples(name: str | None, expected: str | None) -> None:
    assert sanitize_file_name(name) == expected


def test_sanitize_long_name_keeps_suffix() -> None:
    out = sanitize_file_name("a" * 5000 + ".pdf")
    assert out is not None and len(out) <= FILE_NAME_MAX and out.endswith(".pdf")


@given(st.text(max_size=2000))
def test_sanitized_names_are_safe(name: str) -> None:
    out = sanitize_file_name(name)
    if out is None:
        return
    assert out
    assert len(out) <= FILE_NAME_MAX
    assert "/" not in out and "\\" not in out and "\x00" not in out
    assert not out.startswith(".") and not out.startswith(" ")
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co") for c in out)
    assert out not in (".", "..")
    assert len(out.encode("utf-8")) <= 4 * FILE_NAME_MAX


@given(st.text(max_size=300), st.integers(min_value=1, max_value=2**63 - 1))
def test_media_from_hostile_name_serialises(name: str, doc_id: int) -> None:
    media = media_from_document(
        make_document(doc_id=doc_id, attrs=[types.DocumentAttributeFilename(name)])
    )
    assert media.file_name == sanitize_file_name(name)
    orjson.dumps(media.descriptor())
    assert Media.from_json(media.to_json()) == media
    assert media.extension.startswith(".") and "/" not in media.extension
