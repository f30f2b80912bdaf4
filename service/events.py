"""The events of CONTRACT.md section 3, built: routing key, body and a stable `message_id`.

`make_event` is the one builder (the subscriber's message and subscription events go
through it); `media_stored_event` turns the media processor's `on_stored` record into the
`media.stored` event. service/publisher.py carries them to the broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.utils import utc_iso
from model.account import account_label

ROUTING_KEYS = (
    "message.new",
    "message.edited",
    "message.deleted",
    "subscription.changed",
    "media.stored",
)

# The media processor's record fields that say where a file came from: the event names
# them as its peer, message and account, not as fields of the media descriptor.
_MEDIA_ORIGIN = ("account", "peer_id", "msg_id")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its routing key, its JSON body and the id consumers drop duplicates by."""

    routing_key: str
    body: dict[str, Any]
    message_id: str


def make_event(
    event: str,
    peer: dict[str, Any],
    *,
    account: str,
    message: dict[str, Any] | None = None,
    at: float | datetime | None = None,
    extra: dict[str, Any] | None = None,
    id_suffix: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Event:
    """Builds an event as CONTRACT.md section 3 says.

    Body: `{"event", "peer", "message", "account", "at"}` (+ `extra` fields). `message_id` is
    `CHAT:MSG:EVENT[:EDIT_DATE]`, the same every time the same event is built, so that a
    consumer drops duplicates by it:

    - message.new ``-1001:55:message.new``; message.deleted ``-1001:55:message.deleted``
    - message.edited ``-1001:55:message.edited:1700000000`` (the edit date, unix seconds)
    - others have no message: MSG is 0 and `id_suffix` tells them apart, e.g.
      subscription.changed ``-1001:0:subscription.changed:acc1:kicked:1700000000`` and
      media.stored ``-1001:55:media.stored:KEY`` (with the message it belongs to).

    >>> make_event("message.new", {"id": -1001}, account="a", message={"id": 5}, at=0).message_id
    '-1001:5:message.new'
    """
    if event not in ROUTING_KEYS:
        raise ValueError(f"unknown event {event!r}")
    chat = peer["id"]
    msg_id = message["id"] if message else 0
    parts = [str(chat), str(msg_id), event]
    if event == "message.edited":
        edit_date = (message or {}).get("edit_date")
        if edit_date is None:
            raise ValueError("message.edited needs the message's edit_date")
        parts.append(str(_unix(edit_date)))
    if id_suffix is not None:
        parts.append(id_suffix)
    when = clock() if at is None else at
    body: dict[str, Any] = {"event": event, "peer": peer, "account": account, "at": utc_iso(when)}
    if message is not None:
        body["message"] = message
    if extra:
        body.update(extra)
    return Event(event, body, ":".join(parts))


def media_stored_event(record: Mapping[str, Any]) -> Event:
    """The media processor's `on_stored` record → the contract's `media.stored` event.

    The record is the media descriptor plus where the file came from (`account`,
    `peer_id`, `msg_id`); the descriptor becomes the event's `media` field."""
    media = {k: v for k, v in record.items() if k not in _MEDIA_ORIGIN}
    message = {"id": record["msg_id"]} if record.get("msg_id") else None
    return make_event(
        "media.stored",
        {"id": record["peer_id"]},
        # A record from before account labels names its account by the session stem, which
        # may be a phone number: masked like a label.
        account=account_label(record["account"]),
        message=message,
        extra={"media": media},
        id_suffix=record["key"],
    )


def _unix(value: float | int | str | datetime) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, str):
        return int(datetime.fromisoformat(value).timestamp())
    return int(value)
