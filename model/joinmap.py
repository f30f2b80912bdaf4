"""The join map: which account is in which group or channel, since when, and in what state.

It changes through the service's joins and leaves and through Telegram's own updates (a kick,
an account banned), so the list of subscriptions is answered from here without asking Telegram.
It also remembers, per chat, the last message id published, from which the subscriber polls
`messages.getHistory(min_id=...)` for what the updates missed.

Two tables in a versioned SQLite schema (common/sqlite.py): `peers` (one row per chat, the
marked Bot-API id, its type, title, username, last_message_id, and the invite link hash it was
subscribed by, if any) and `memberships` (one row per chat and account: several accounts may
sit in one chat, each with its own state).

An orphaned chat is derived, not stored: nobody is in it, and its latest membership change is
banned_account (the account in it was banned or logged out and no other could take over).
It is still wanted: `orphaned()` lists it for the subscriber to join again, `subscriptions()`
shows it. A later left (a leave asked of the service) or kicked (the chat's admins)
ends that: such a chat is not joined again.

Ids only: this module knows nothing of Telethon; callers pass marked ids and plain strings.

Every statement here is a single-row or indexed one over a table of at most a few thousand
rows (accounts × 500), a few tens of microseconds with WAL and synchronous=NORMAL (no fsync at
commit), so the map is used directly on the event loop: a thread hop would cost more than the
statement. The two questions asked for every message of every subscribed chat, `get()` and
`last_message_id()`, are answered from memory (the map is small and this object is its one
writer), and the cursor may be written in batches (`set_last_message_id(persist=False)`,
then `flush()`): losing the last second of it in a crash only publishes those messages again.

Basic groups (type `group`) number their messages per account, so their cursor is kept per
membership (`memberships.last_message_id`, `member_last_message_id()`), in that account's own
ids; the subscription dicts show it as their `last_message_id`. Channels and megagroups keep
the per-chat one in `peers`. A third table, `group_messages`, maps each account's own ids
of basic-group messages to their chat (and the id their event carried), since Telegram's
updateDeleteMessages names no chat: the last GROUP_IDS_KEPT ids of each account, written
with the cursors (`note_group_message`, `group_message`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from common.sqlite import open_db, write
from common.utils import utc_iso

log = logging.getLogger(__name__)

# Telegram caps the channels and supergroups one account may be in: `channels_limit_default`
# = 500 for non-premium users (1000 with Premium, `channels_limit_premium`) in the client
# config, https://core.telegram.org/api/config#channels-limit-default; beyond it
# channels.joinChannel answers CHANNELS_TOO_MUCH
# (https://core.telegram.org/method/channels.joinChannel). The pool picks only accounts below it.
CHANNELS_PER_ACCOUNT = 500


class State(StrEnum):
    JOINED = "joined"
    LEFT = "left"  # left through the API
    KICKED = "kicked"  # removed or banned from the chat by its admins, or the chat is gone
    BANNED_ACCOUNT = "banned_account"  # the account itself is banned or logged out


_MIGRATIONS = (
    """
    CREATE TABLE peers (
        peer_id INTEGER PRIMARY KEY,           -- Bot-API marked id (-100… for channels)
        type TEXT NOT NULL,                    -- channel, megagroup, group
        title TEXT NOT NULL DEFAULT '',
        username TEXT,
        last_message_id INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    CREATE TABLE memberships (
        peer_id INTEGER NOT NULL REFERENCES peers(peer_id),
        account TEXT NOT NULL,                 -- the TeleClient's name (session file stem)
        state TEXT NOT NULL CHECK (state IN ('joined', 'left', 'kicked', 'banned_account')),
        joined_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (peer_id, account)
    );
    CREATE INDEX memberships_account ON memberships (account, state)
    """,
    # 2: a cursor per membership, for basic groups (their message ids are per account).
    """
    ALTER TABLE memberships ADD COLUMN last_message_id INTEGER NOT NULL DEFAULT 0
    """,
    # 3: the invite link hash a chat was subscribed by: how another account joins a basic
    # group or a private channel when the one in it is banned (internal: never answered).
    """
    ALTER TABLE peers ADD COLUMN invite TEXT
    """,
    # 4: basic groups' messages by each account's own id: updateDeleteMessages names no
    # chat, only the account's ids (shared with its private chats); these rows tell which
    # basic group a deleted id was in, also after a restart.
    """
    CREATE TABLE group_messages (
        account TEXT NOT NULL,                 -- the TeleClient's name
        own_id INTEGER NOT NULL,               -- the id this account knows the message by
        peer_id INTEGER NOT NULL,              -- the basic group's marked id
        event_id INTEGER NOT NULL,             -- the id its message.new event carried
        PRIMARY KEY (account, own_id)
    ) WITHOUT ROWID
    """,
)

# Rows of group_messages kept per account: the ids within this many of its newest (an
# account's ids count its private chats' and every basic group's messages together).
GROUP_IDS_KEPT = 10_000

BASIC_GROUP = "group"  # the peer type whose message ids are per account

_SELECT = (
    "SELECT p.peer_id, p.type, p.title, p.username, p.last_message_id,"
    " m.account, m.state, m.joined_at, m.updated_at, m.last_message_id AS member_last"
    " FROM memberships m JOIN peers p ON p.peer_id = m.peer_id"
)

# Membership `m` is an orphaned chat's latest: banned_account, nobody joined, nothing newer (a
# left or kicked as new as it wins the tie, as in get()'s order).
_ORPHAN = (
    "m.state = 'banned_account' AND NOT EXISTS (SELECT 1 FROM memberships o"
    " WHERE o.peer_id = m.peer_id AND (o.state = 'joined' OR o.updated_at > m.updated_at"
    " OR (o.updated_at = m.updated_at AND o.state != 'banned_account')))"
)


class JoinMap:
    """The SQLite join map. One instance per process owns the file (one writer)."""

    def __init__(self, db_path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._conn: sqlite3.Connection = open_db(db_path, "joinmap", _MIGRATIONS)
        self._conn.row_factory = sqlite3.Row
        self._clock = clock
        self._subs: dict[int, dict[str, Any] | None] = {}  # get()'s answers, per chat
        self._last: dict[int, int] = {}  # last_message_id of known chats
        self._dirty: set[int] = set()  # chats whose last_message_id is not on disk yet
        # The same for the per-membership cursor of basic groups, by (chat, account).
        self._member_last: dict[tuple[int, str], int] = {}
        self._member_dirty: set[tuple[int, str]] = set()
        # group_messages rows not on disk yet: (account, own id) → (chat, event id).
        self._group_pending: dict[tuple[str, int], tuple[int, int]] = {}

    def close(self) -> None:
        self.flush()
        self._conn.close()

    # --- changes -------------------------------------------------------------------------

    def record_join(
        self,
        peer_id: int,
        account: str,
        *,
        type: str,
        title: str = "",
        username: str | None = None,
        invite: str | None = None,
    ) -> dict[str, Any]:
        """`account` is now in the chat; (re)sets joined_at. Returns the subscription.

        `invite`: the hash of the invite link it was joined by, kept for `invite()` (a join
        without one keeps the chat's last)."""
        now = self._clock()
        with write(self._conn) as c:
            self._upsert_peer(c, peer_id, type, title, username, invite, now)
            c.execute(
                "INSERT INTO memberships (peer_id, account, state, joined_at, updated_at)"
                " VALUES (?, ?, 'joined', ?, ?)"
                " ON CONFLICT (peer_id, account) DO UPDATE SET state = 'joined',"
                " joined_at = CASE WHEN state = 'joined' THEN joined_at ELSE excluded.joined_at END,"
                " updated_at = excluded.updated_at",
                (peer_id, account, now, now),
            )
        self._subs.pop(peer_id, None)
        log.info("join map: %s joined %s", account, peer_id)
        return self._one(peer_id, account)

    def record_leave(self, peer_id: int, account: str) -> dict[str, Any] | None:
        """The account left through the API. None if it was never in the chat."""
        return self.set_state(peer_id, account, State.LEFT)

    def record_kick(self, peer_id: int, account: str) -> dict[str, Any] | None:
        """The account was removed or banned from the chat, or the chat is gone."""
        return self.set_state(peer_id, account, State.KICKED)

    def set_state(self, peer_id: int, account: str, state: State | str) -> dict[str, Any] | None:
        """Sets one membership's state; None if the account was never in the chat."""
        state = State(state)
        with write(self._conn) as c:
            cur = c.execute(
                "UPDATE memberships SET state = ?, updated_at = ? WHERE peer_id = ? AND account = ?",
                (state.value, self._clock(), peer_id, account),
            )
        self._subs.pop(peer_id, None)
        if cur.rowcount == 0:
            return None
        log.info("join map: %s in %s is now %s", account, peer_id, state.value)
        return self._one(peer_id, account)

    def record_account_banned(self, account: str) -> list[dict[str, Any]]:
        """The account is banned or logged out: each chat it was in changes to banned_account.

        Returns the subscriptions that changed (the ones to move to other accounts).
        """
        now = self._clock()
        with write(self._conn) as c:
            peers = [
                r[0]
                for r in c.execute(
                    "SELECT peer_id FROM memberships WHERE account = ? AND state = 'joined'",
                    (account,),
                )
            ]
            c.execute(
                "UPDATE memberships SET state = 'banned_account', updated_at = ?"
                " WHERE account = ? AND state = 'joined'",
                (now, account),
            )
        for p in peers:
            self._subs.pop(p, None)
        if peers:
            log.warning("join map: account %s unusable, %d chats to move", account, len(peers))
        return [self._one(p, account) for p in peers]

    def rename_account(self, old: str, new: str) -> int:
        """Moves `old`'s memberships to the name `new` (an account's session stem to its
        label, model/teleclient.py); a membership `new` already has wins. Returns how many
        moved."""
        self.flush()  # the cursors in memory are keyed by the old name
        with write(self._conn) as c:
            moved = c.execute(
                "UPDATE OR IGNORE memberships SET account = ? WHERE account = ?", (new, old)
            ).rowcount
            c.execute("DELETE FROM memberships WHERE account = ?", (old,))
        self._member_last = {k: v for k, v in self._member_last.items() if k[1] not in (old, new)}
        if moved:
            self._subs.clear()
            # Not `old`: a session stem may be a phone number.
            log.info("join map: %d memberships moved to account %s (its new name)", moved, new)
        return int(moved)

    def update_peer(
        self, peer_id: int, *, title: str | None = None, username: str | None = None
    ) -> None:
        """A chat's title or username changed (seen in an update or a fetched entity)."""
        with write(self._conn) as c:
            c.execute(
                "UPDATE peers SET title = COALESCE(?, title), username = COALESCE(?, username),"
                " updated_at = ? WHERE peer_id = ?",
                (title, username, self._clock(), peer_id),
            )
        self._subs.pop(peer_id, None)

    def set_last_message_id(self, peer_id: int, message_id: int, *, persist: bool = True) -> bool:
        """Remembers the newest message id published for the chat; never goes back.

        Returns True when it moved forward. With `persist=False` it is written by the next
        `flush()` (or `close()`), in one transaction with the others.
        """
        if message_id <= self.last_message_id(peer_id) or peer_id not in self._last:
            return False  # not newer, or a chat the map does not know
        self._last[peer_id] = message_id
        self._dirty.add(peer_id)
        if persist:
            self.flush()
        return True

    def set_member_last_message_id(
        self, peer_id: int, account: str, message_id: int, *, persist: bool = True
    ) -> bool:
        """The cursor of one membership (a basic group's, in the account's own ids): like
        `set_last_message_id`, never back, False for a membership the map does not know."""
        key = (peer_id, account)
        known = self.member_last_message_id(peer_id, account)  # loads it into _member_last
        if message_id <= known or key not in self._member_last:
            return False
        self._member_last[key] = message_id
        self._member_dirty.add(key)
        if persist:
            self.flush()
        return True

    def note_group_message(
        self, account: str, own_id: int, peer_id: int, event_id: int, *, persist: bool = True
    ) -> None:
        """Remembers that `account`'s message `own_id` is basic group `peer_id`'s, published
        as `event_id` (the first note of it wins). With `persist=False` it is written by the
        next `flush()`."""
        key = (account, own_id)
        if key not in self._group_pending:
            self._group_pending[key] = (peer_id, event_id)
        if persist:
            self.flush()

    def group_message(self, account: str, own_id: int) -> tuple[int, int] | None:
        """(basic group, event id) of `account`'s message `own_id`; None when none was noted
        (a private chat's id, or older than the GROUP_IDS_KEPT the account keeps)."""
        pending = self._group_pending.get((account, own_id))
        if pending is not None:
            return pending
        row = self._conn.execute(
            "SELECT peer_id, event_id FROM group_messages WHERE account = ? AND own_id = ?",
            (account, own_id),
        ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def flush(self) -> None:
        """Writes the last_message_id values and the noted group messages not on disk yet."""
        if not self._dirty and not self._member_dirty and not self._group_pending:
            return
        rows = [(self._last[p], p, self._last[p]) for p in self._dirty]
        members = [(self._member_last[k], *k, self._member_last[k]) for k in self._member_dirty]
        noted = [(a, i, p, e) for (a, i), (p, e) in self._group_pending.items()]
        newest: dict[str, int] = {}
        for account, own_id, _, _ in noted:
            newest[account] = max(newest.get(account, 0), own_id)
        with write(self._conn) as c:
            c.executemany(
                "INSERT OR IGNORE INTO group_messages (account, own_id, peer_id, event_id)"
                " VALUES (?, ?, ?, ?)",
                noted,
            )
            c.executemany(
                "DELETE FROM group_messages WHERE account = ? AND own_id <= ?",
                [(a, top - GROUP_IDS_KEPT) for a, top in newest.items()],
            )
            c.executemany(
                "UPDATE peers SET last_message_id = ? WHERE peer_id = ? AND last_message_id < ?",
                rows,
            )
            c.executemany(
                "UPDATE memberships SET last_message_id = ?"
                " WHERE peer_id = ? AND account = ? AND last_message_id < ?",
                members,
            )
        self._dirty.clear()
        self._member_dirty.clear()
        self._group_pending.clear()

    # --- questions -----------------------------------------------------------------------

    def last_message_id(self, peer_id: int) -> int:
        last = self._last.get(peer_id)
        if last is not None:
            return last
        row = self._conn.execute(
            "SELECT last_message_id FROM peers WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        if row is None:
            return 0
        self._last[peer_id] = int(row[0])
        return self._last[peer_id]

    def invite(self, peer_id: int) -> str | None:
        """The hash of the invite link the chat was last subscribed by, if any. Not part of
        the subscription dicts: a hash lets anyone join, so it stays inside the service."""
        row = self._conn.execute(
            "SELECT invite FROM peers WHERE peer_id = ?", (peer_id,)
        ).fetchone()
        return str(row[0]) if row and row[0] else None

    def member_last_message_id(self, peer_id: int, account: str) -> int:
        """One membership's cursor (basic groups: in the account's own ids); 0 if unknown."""
        key = (peer_id, account)
        last = self._member_last.get(key)
        if last is not None:
            return last
        row = self._conn.execute(
            "SELECT last_message_id FROM memberships WHERE peer_id = ? AND account = ?", key
        ).fetchone()
        if row is None:
            return 0
        self._member_last[key] = int(row[0])
        return self._member_last[key]

    def get(self, peer_id: int) -> dict[str, Any] | None:
        """The chat's subscription: a joined membership (the oldest) if any, else the latest
        (state banned_account here means an orphaned chat, see `orphaned()`)."""
        if peer_id not in self._subs:
            row = self._conn.execute(
                _SELECT + " WHERE m.peer_id = ?"
                " ORDER BY m.state = 'joined' DESC,"
                " CASE WHEN m.state = 'joined' THEN m.joined_at ELSE -m.updated_at END,"
                " m.state = 'banned_account' LIMIT 1",
                (peer_id,),
            ).fetchone()
            self._subs[peer_id] = self._to_dict(row) if row else None
        sub = self._subs[peer_id]
        if sub is None:
            return None
        # A copy (callers may change theirs) with the cursor as it is now.
        return {**sub, "peer": dict(sub["peer"]), "last_message_id": self._cursor(sub)}

    def _cursor(self, sub: dict[str, Any]) -> int:
        if sub["peer"]["type"] == BASIC_GROUP:
            return self.member_last_message_id(sub["peer"]["id"], sub["account"])
        return self.last_message_id(sub["peer"]["id"])

    def find_username(self, username: str) -> dict[str, Any] | None:
        """Like get(), by the chat's username (case-insensitive, as Telegram's are)."""
        row = self._conn.execute(
            "SELECT peer_id FROM peers WHERE username = ? COLLATE NOCASE", (username,)
        ).fetchone()
        return self.get(int(row[0])) if row else None

    def memberships(self, peer_id: int) -> list[dict[str, Any]]:
        """Every account's membership of the chat, joined first."""
        rows = self._conn.execute(
            _SELECT + " WHERE m.peer_id = ? ORDER BY m.state = 'joined' DESC, m.joined_at",
            (peer_id,),
        )
        return [self._to_dict(r) for r in rows]

    def joined_peers(self) -> list[int]:
        """Marked ids of the chats at least one account is in (what the poller walks)."""
        rows = self._conn.execute(
            "SELECT DISTINCT peer_id FROM memberships WHERE state = 'joined' ORDER BY peer_id"
        )
        return [int(r[0]) for r in rows]

    def orphaned(self) -> list[int]:
        """Marked ids of the orphaned chats: nobody in them, the latest change a ban or a
        logout of the account that was (the subscriber joins them with another account)."""
        rows = self._conn.execute(
            "SELECT DISTINCT m.peer_id FROM memberships m WHERE " + _ORPHAN + " ORDER BY m.peer_id"
        )
        return [int(r[0]) for r in rows]

    def by_account(
        self, account: str, state: State | str | None = State.JOINED
    ) -> list[dict[str, Any]]:
        if state is None:
            rows = self._conn.execute(
                _SELECT + " WHERE m.account = ? ORDER BY m.joined_at", (account,)
            )
        else:
            rows = self._conn.execute(
                _SELECT + " WHERE m.account = ? AND m.state = ? ORDER BY m.joined_at",
                (account, State(state).value),
            )
        return [self._to_dict(r) for r in rows]

    def count(self, account: str) -> int:
        """Chats the account is in now (to keep it below CHANNELS_PER_ACCOUNT)."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM memberships WHERE account = ? AND state = 'joined'", (account,)
        ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Joined chats per account, for every account that is in at least one."""
        rows = self._conn.execute(
            "SELECT account, COUNT(*) FROM memberships WHERE state = 'joined' GROUP BY account"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    def has_room(self, account: str, limit: int = CHANNELS_PER_ACCOUNT) -> bool:
        return self.count(account) < limit

    def subscriptions(self) -> list[dict[str, Any]]:
        """The subscriptions as the service lists them, oldest first: every joined membership,
        and each orphaned chat's latest (state banned_account: nobody is in it until an
        account can take it over)."""
        rows = self._conn.execute(
            _SELECT + " WHERE m.state = 'joined' OR (" + _ORPHAN + ")"
            " ORDER BY m.joined_at, m.peer_id, m.account"
        )
        return [self._to_dict(r) for r in rows]

    # Last in the class: a method named `list` shadows the builtin for the ones below it.
    def list(self, state: State | str | None = State.JOINED) -> list[dict[str, Any]]:
        """Subscriptions (one per chat and account), oldest first; `state=None` for all.

        The same dicts as `subscriptions()`.
        """
        if state is None:
            rows = self._conn.execute(_SELECT + " ORDER BY m.joined_at, m.peer_id, m.account")
        else:
            rows = self._conn.execute(
                _SELECT + " WHERE m.state = ? ORDER BY m.joined_at, m.peer_id, m.account",
                (State(state).value,),
            )
        return [self._to_dict(r) for r in rows]

    # --- inside --------------------------------------------------------------------------

    @staticmethod
    def _upsert_peer(
        c: sqlite3.Connection,
        peer_id: int,
        type: str,
        title: str,
        username: str | None,
        invite: str | None,
        now: float,
    ) -> None:
        c.execute(
            "INSERT INTO peers (peer_id, type, title, username, invite, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (peer_id) DO UPDATE SET type = excluded.type, title = excluded.title,"
            " username = excluded.username, invite = COALESCE(excluded.invite, invite),"
            " updated_at = excluded.updated_at",
            (peer_id, type, title, username, invite, now),
        )

    def _to_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        out = _to_dict(row)
        if row["type"] == BASIC_GROUP:
            key = (row["peer_id"], row["account"])
            out["last_message_id"] = max(row["member_last"], self._member_last.get(key, 0))
        else:
            out["last_message_id"] = max(out["last_message_id"], self._last.get(row["peer_id"], 0))
        return out

    def _one(self, peer_id: int, account: str) -> dict[str, Any]:
        row = self._conn.execute(
            _SELECT + " WHERE m.peer_id = ? AND m.account = ?", (peer_id, account)
        ).fetchone()
        return self._to_dict(row)


def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "peer": {
            "id": row["peer_id"],
            "type": row["type"],
            "title": row["title"],
            "username": row["username"],
        },
        "account": row["account"],
        "state": row["state"],
        "joined_at": utc_iso(row["joined_at"]),
        "updated_at": utc_iso(row["updated_at"]),
        "last_message_id": row["last_message_id"],
    }
