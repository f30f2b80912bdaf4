"""Finding a file again through Telegram, from the message (or peer) its `Media` came from.

- `refetch_reference`: the file reference expired (FILE_REFERENCE_EXPIRED): the account the
  file is bound to fetches the message again (or the peer, for its own photo) and takes
  the new reference of the same file;
- `rebind_through(pool)`: the account is banned or logged out: another account fetches the
  same message, and its own copy of the file (its access hash and reference, the same key)
  continues the download.

Both read the Media's `peer_id`, a Bot-API marked id, with `PeerRef.from_marked_id` (the
one reading: -100123 is basic group 100123, -1000000000123 is channel 123).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.errors import AccountUnusable, TelegramError, TgcError
from common.utils import PeerRef
from model.media import Media
from service.parser import fresh_reference, parse_message
from service.ports import Pool, TeleClientLike

log = logging.getLogger(__name__)

# The hook for a banned/logged-out account: the same file bound to another account that can
# see it, or None to fail the item.
Rebind = Callable[[Media, TgcError], Awaitable[Media | None]]


async def refetch_reference(tele: TeleClientLike, media: Media) -> bytes:
    """The file's new reference for `tele`, from its message (or its peer's full info).

    Raises TelegramError FILE_REFERENCE_EXPIRED when the Media says nowhere to look, or the
    message no longer has this file; the account's own errors as `tele` raises them."""
    if media.peer_id is None:
        raise TelegramError("FILE_REFERENCE_EXPIRED", "nowhere to refresh the reference from")
    ref = PeerRef.from_marked_id(media.peer_id)
    if media.msg_id is not None:
        _, messages = await tele.get_messages(ref, [media.msg_id])
        found: list[Any] = [m for m in messages if m is not None]
    else:  # a peer's own photo
        _, full = await tele.get_full(ref)
        found = [full]
    reference = next((r for r in (fresh_reference(o, media) for o in found) if r is not None), None)
    if reference is None:
        raise TelegramError("FILE_REFERENCE_EXPIRED", "the message no longer has this file")
    return reference


def rebind_through(pool: Pool) -> Rebind:
    """The `rebind` hook over the pool: when the account a file is bound to is banned or
    logged out, another account fetches the same message, and its own copy of the file (its
    access hash and reference, the same key) continues the download.

    Only accounts that can reach the peer by id are asked (the Media does not keep the
    username); a file whose message is gone, or seen by no other account, fails as before.
    """

    async def rebind(media: Media, error: TgcError) -> Media | None:
        if media.peer_id is None or media.msg_id is None:
            return None
        ref = PeerRef.from_marked_id(media.peer_id)
        msg_id = media.msg_id

        async def fetch(tele: TeleClientLike) -> tuple[Any, list[Any]]:
            if tele.name == media.account:
                # The pool does not know yet; this makes it try the next account.
                raise AccountUnusable(tele.name, "unusable", "it can't download this file")
            return await tele.get_messages(ref, [msg_id])

        try:
            (_, messages), tele = await pool.run(fetch, ref)
        except TgcError as e:
            log.info("media %s: no other account can fetch it (%s)", media.key, e.code)
            return None
        for message in messages:
            if message is None:
                continue
            _, found = parse_message(message, tele.name)
            for other in found:
                if other.key == media.key:
                    return other
        return None

    return rebind
