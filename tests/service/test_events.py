"""service/events.py: the events of CONTRACT.md section 3, their bodies and stable ids."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.events import make_event, media_stored_event

PEER = {"id": -1001234567890, "type": "channel", "title": "News", "username": "news"}


def test_make_event_ids_and_body() -> None:
    new = make_event("message.new", PEER, account="a1", message={"id": 5}, at=0)
    assert new.message_id == "-1001234567890:5:message.new"
    assert new.body == {
        "event": "message.new",
        "peer": PEER,
        "account": "a1",
        "at": "1970-01-01T00:00:00Z",
        "message": {"id": 5},
    }
    edited = make_event(
        "message.edited",
        PEER,
        account="a1",
        message={"id": 5, "edit_date": "2023-11-14T22:13:20Z"},
    )
    assert edited.message_id == "-1001234567890:5:message.edited:1700000000"
    same = make_event(
        "message.edited",
        PEER,
        account="a2",  # another account saw the same edit: same id
        message={"id": 5, "edit_date": datetime.fromtimestamp(1_700_000_000, UTC)},
    )
    assert same.message_id == edited.message_id
    deleted = make_event("message.deleted", PEER, account="a1", message={"id": 5})
    assert deleted.message_id == "-1001234567890:5:message.deleted"
    sub = make_event(
        "subscription.changed",
        PEER,
        account="a1",
        extra={"state": "kicked"},
        id_suffix="a1:kicked:1700000000",
    )
    assert sub.message_id == "-1001234567890:0:subscription.changed:a1:kicked:1700000000"
    assert sub.body["state"] == "kicked" and "message" not in sub.body
    with pytest.raises(ValueError):
        make_event("message.bogus", PEER, account="a1")
    with pytest.raises(ValueError):
        make_event("message.edited", PEER, account="a1", message={"id": 5})


def test_media_stored_event_follows_the_contract() -> None:
    record = {
        "key": "ab" * 16,
        "type": "photo",
        "state": "stored",
        "size": 10,
        "mime_type": "image/jpeg",
        "file_name": None,
        "url": "http://storage/ab/abab.jpg",
        "error": None,
        "updated_at": "2026-01-01T00:00:00Z",
        "account": "acc1",
        "peer_id": -1001,
        "msg_id": 55,
    }
    event = media_stored_event(record)
    assert event.routing_key == "media.stored"
    assert event.message_id == f"-1001:55:media.stored:{'ab' * 16}"
    assert event.body["peer"] == {"id": -1001} and event.body["message"] == {"id": 55}
    assert event.body["account"] == "acc1"
    assert event.body["media"]["url"] == "http://storage/ab/abab.jpg"
    assert "account" not in event.body["media"]


def test_a_media_record_named_by_a_phone_stem_is_masked_like_a_label() -> None:
    # Records from before account labels name the account by its session stem.
    record = {"key": "cd" * 16, "account": "15550001001", "peer_id": -1001, "msg_id": 0}
    event = media_stored_event(record)
    assert event.body["account"] == "+15*******01"
    assert "message" not in event.body  # no message id: the event has none
    assert event.message_id == f"-1001:0:media.stored:{'cd' * 16}"
