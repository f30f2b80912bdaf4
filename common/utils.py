"""Small pure helpers shared by several modules: peer strings and marked ids, phone masking,
media keys, the service's one date format."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import mmh3

from common.errors import InvalidParam

# Telegram usernames: a letter first, then letters, digits and underscores; 5..32 long
# (4-letter collectible usernames exist too, so 4 is accepted).
_USERNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{3,31}$")
_INVITE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_TME_HOSTS = {"t.me", "telegram.me", "telegram.dog", "www.t.me"}
_DIGITS = re.compile(r"[0-9]{1,20}")  # ASCII only: str.isdigit() also takes "²"
_MAX_ID = 2**53


@dataclass(frozen=True, slots=True)
class PeerRef:
    """A peer as the crawler named it.

    Exactly one of `username`, `id` or `invite` is set. `id` is the bare Telegram id;
    `kind` is "channel" (-100… or a t.me/c/ link), "chat" (-id), "user" (a positive id
    given as such) or None when a plain positive number could be a user or a channel.
    """

    raw: str
    username: str | None = None
    id: int | None = None
    kind: str | None = None
    invite: str | None = None

    def __str__(self) -> str:
        return self.raw

    @classmethod
    def from_marked_id(cls, marked: int) -> PeerRef:
        """The peer a Bot-API marked id names: positive a user, below -10**12 a channel,
        between the two a basic group (Telethon's `resolve_id` rule; -100123 is basic group
        100123, not channel 123)."""
        text = str(marked)
        if marked > 0:
            return cls(text, id=marked, kind="user")
        if marked < -(10**12):
            return cls(text, id=-marked - 10**12, kind="channel")
        if marked == 0:
            raise ValueError("0 is not a marked id")
        return cls(text, id=-marked, kind="chat")

    def marked_ids(self) -> list[int]:
        """Bot-API marked ids this reference may stand for, most likely first."""
        if self.id is None:
            return []
        if self.kind == "channel":
            return [-(10**12) - self.id]
        if self.kind == "chat":
            return [-self.id]
        if self.kind == "user":
            return [self.id]
        return [self.id, -(10**12) - self.id, -self.id]


def parse_peer(value: str | int | None, param: str = "peer") -> PeerRef:
    """Parses `@name`, `name`, `t.me/name` links, numeric and marked ids.

    >>> parse_peer("@durov").username
    'durov'
    >>> parse_peer("-1001234567890").id, parse_peer("-1001234567890").kind
    (1234567890, 'channel')
    """
    if value is None:
        raise InvalidParam(param, "is required")
    raw = str(value).strip()
    if not raw:
        raise InvalidParam(param, "is empty")
    if len(raw) > 256:
        raise InvalidParam(param, "is too long")
    number = _parse_number(raw)
    if number is not None:
        return _from_number(raw, number, param)
    if raw.startswith("@"):
        return _from_username(raw, raw[1:], param)
    link = _parse_link(raw)
    if link is not None:
        return _from_link(raw, link, param)
    return _from_username(raw, raw, param)


def _parse_number(raw: str) -> int | None:
    if re.fullmatch(r"-?[0-9]{1,20}", raw):
        return int(raw)
    return None


def _from_number(raw: str, number: int, param: str) -> PeerRef:
    if number == 0:
        raise InvalidParam(param, "0 is not a Telegram id")
    if number > 0:
        return PeerRef(raw, id=_bare_id(number, param), kind=None)
    # Telethon's resolve_id rule: below -10**12 is a channel, above it a basic group.
    if -number > 10**12:
        return PeerRef(raw, id=_bare_id(-number - 10**12, param), kind="channel")
    return PeerRef(raw, id=_bare_id(-number, param), kind="chat")


def _bare_id(value: int, param: str) -> int:
    # Telegram ids fit 53 bits; a bigger one would reach the session's SQLite lookup and
    # overflow there (a 500) instead of being the crawler's mistake.
    if not 0 < value < _MAX_ID:
        raise InvalidParam(param, "id out of range")
    return value


def _from_username(raw: str, name: str, param: str) -> PeerRef:
    if not _USERNAME.match(name):
        raise InvalidParam(param, f"{raw!r} is not a username, link or id")
    return PeerRef(raw, username=name.lower())


def _parse_link(raw: str) -> list[str] | None:
    text = raw if "://" in raw else "https://" + raw
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if (parts.hostname or "").lower() not in _TME_HOSTS:
        return None
    return [p for p in parts.path.split("/") if p]


def _from_link(raw: str, path: list[str], param: str) -> PeerRef:
    if not path:
        raise InvalidParam(param, "link names no peer")
    head = path[0]
    if head == "s" and len(path) > 1:
        return _from_username(raw, path[1], param)
    if head == "c" and len(path) > 1 and _DIGITS.fullmatch(path[1]):
        return PeerRef(raw, id=_bare_id(int(path[1]), param), kind="channel")
    if head == "joinchat" and len(path) > 1 and _INVITE.match(path[1]):
        return PeerRef(raw, invite=path[1])
    if head.startswith("+") and _INVITE.match(head[1:]):
        return PeerRef(raw, invite=head[1:])
    return _from_username(raw, head, param)


def mask_phone(phone: str) -> str:
    """Keeps the country code and the last two digits: +441234567890 → +44*******90."""
    digits = phone.lstrip("+")
    if len(digits) <= 4:
        return "+" + "*" * len(digits)
    return "+" + digits[:2] + "*" * (len(digits) - 4) + digits[-2:]


def media_key(kind: str, file_id: int, variant: str = "") -> str:
    """The stable key of a Telegram file: the same from any account that sees it.

    `kind` is "photo" or "document", `file_id` Telegram's id of it (not the per-account
    access hash), `variant` the photo size or thumb type where one file has several.
    """
    data = f"{kind}:{file_id}:{variant}".encode()
    return format(mmh3.hash128(data, signed=False), "032x")


def is_basic_group(marked: int) -> bool:
    """A basic group's marked id: -1 … -999999999999 (channels are below, users positive)."""
    return -(10**12) < marked < 0


def utc_iso(value: dt.datetime | float | None) -> str | None:
    """The service's one date format: ISO 8601 in UTC, whole seconds, a Z suffix.

    Takes an aware datetime (naive ones are UTC) or a Unix time; None stays None.

    >>> utc_iso(0)
    '1970-01-01T00:00:00Z'
    """
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    elif value.tzinfo is not None and value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    # Formatted by hand: strftime is ~3x slower, and a page of messages has hundreds of dates.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )
