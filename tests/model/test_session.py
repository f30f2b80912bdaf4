"""model/session.py: the session file's lock (one process per file) and EntitySession,
Telethon's session file written only when an entity changed."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon import types
from telethon.crypto import AuthKey
from telethon.sessions import SQLiteSession

from common.errors import ConfigError
from model.session import (
    SEALED_MAGIC,
    EntitySession,
    SessionLock,
    SessionSeal,
    convert_session,
    is_sealed,
)
from model.telethon_internals import UpdateState


def user(
    uid: int, username: str | None = "alice", access_hash: int = 11, name: str = "Alice"
) -> types.User:
    return types.User(id=uid, access_hash=access_hash, username=username, first_name=name)


def channel(cid: int, title: str = "News", username: str | None = "news") -> types.Channel:
    return types.Channel(
        id=cid,
        title=title,
        photo=types.ChatPhotoEmpty(),
        date=datetime(2026, 1, 1, tzinfo=UTC),
        access_hash=22,
        username=username,
        broadcast=True,
    )


def update_with(*entities: object) -> types.contacts.ResolvedPeer:
    # What Telethon's update loop hands the session (client/updates.py _preprocess_updates).
    users = [e for e in entities if isinstance(e, types.User)]
    chats = [e for e in entities if not isinstance(e, types.User)]
    return types.contacts.ResolvedPeer(None, users, chats)


def rows(path: Path) -> list[tuple[object, ...]]:
    plain = SQLiteSession(str(path))  # Telethon's own class reads the same file
    try:
        c = plain._cursor()
        return sorted(c.execute("select id, hash, username, name from entities").fetchall())
    finally:
        plain.close()


def test_an_unchanged_entity_is_written_once(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    s = EntitySession(str(path))
    for _ in range(100):
        s.process_entities(update_with(user(1), channel(5)))
    s.save()
    assert s.skipped == 198
    assert rows(path) == [(-1000000000005, 22, "news", "News"), (1, 11, "alice", "Alice")]
    s.close()


def test_a_change_is_written(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    s = EntitySession(str(path))
    s.process_entities(update_with(user(1)))
    s.process_entities(update_with(user(1, username="alice2")))
    s.process_entities(update_with(user(1, username="alice2", access_hash=99, name="A.")))
    s.save()
    assert rows(path) == [(1, 99, "alice2", "A.")]
    s.close()


def test_a_lookup_that_evicts_a_username_forgets_what_was_written(tmp_path: Path) -> None:
    """Two ids claim one username: Telethon clears the older row's username at lookup. When
    the older entity comes again still claiming it, its row must be written again."""
    path = tmp_path / "acc.session"
    s = EntitySession(str(path))
    s.process_entities(update_with(user(1, username="taken")))
    s._execute("update entities set date = 1 where id = 1")  # the older of the two
    s.process_entities(update_with(user(2, username="taken")))
    assert s.get_entity_rows_by_username("taken")[0] == 2
    s.process_entities(update_with(user(1, username="taken")))
    s.save()
    assert [r[:3] for r in rows(path)] == [(1, 11, "taken"), (2, 11, "taken")]  # as Telethon
    s.close()


def test_save_entities_off_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    s = EntitySession(str(path))
    s.save_entities = False
    s.process_entities(update_with(user(1)))
    s.save()
    assert rows(path) == []
    s.close()


def test_a_commit_does_not_wait_for_the_disk_and_telethon_still_reads_the_file(
    tmp_path: Path,
) -> None:
    from model.telethon_internals import session_execute

    path = tmp_path / "acc.session"
    stock = SQLiteSession(str(path))  # a file as `start.py login` or Telethon wrote it
    stock.set_dc(2, "127.0.0.1", 443)
    stock.save()
    stock.close()
    session = EntitySession(str(path))
    assert session_execute(session, "pragma journal_mode")[0] == "wal"
    assert session_execute(session, "pragma synchronous")[0] == 1  # NORMAL: no fsync a commit
    session.process_entities([channel(77, username="news")])
    session.save()
    reader = SQLiteSession(str(path))  # while ours is open: WAL readers see the commit
    try:
        assert reader.get_entity_rows_by_username("news") is not None
        assert reader.dc_id == 2
    finally:
        reader.close()
    session.close()
    assert not Path(f"{path}-wal").exists()  # a clean close folds the log back in


def test_the_memory_is_bounded(tmp_path: Path) -> None:
    s = EntitySession(str(tmp_path / "acc.session"), remember=10)
    for uid in range(1, 26):
        s.process_entities(update_with(user(uid, username=f"u{uid}")))
    assert len(s._written) <= 10
    s.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.sampled_from([None, "a", "b"]), st.integers(1, 3)),
        max_size=30,
    )
)
def test_the_file_ends_as_telethons_own_would(tmp_path_factory, seq) -> None:  # type: ignore[no-untyped-def]
    """Whatever the sequence of entity sightings, the rows are those plain SQLiteSession
    writes (dates aside)."""
    d = tmp_path_factory.mktemp("s")
    ours, theirs = EntitySession(str(d / "ours.session")), SQLiteSession(str(d / "theirs.session"))
    for uid, username, h in seq:
        for s in (ours, theirs):
            s.process_entities(update_with(user(uid, username=username, access_hash=h)))
    for s in (ours, theirs):
        s.save()
        s.close()
    assert rows(d / "ours.session") == rows(d / "theirs.session")


def test_a_session_file_is_locked_by_one_owner_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    first, second = SessionLock(path), SessionLock(path)
    first.acquire()
    first.acquire()  # taking it again is harmless
    assert first.path == tmp_path / "acc.session.lock"
    with pytest.raises(ConfigError, match="in use by another process") as caught:
        second.acquire()  # flock: another open file, even in this process, is refused
    assert caught.value.key == "telegram.sessions_dir"
    first.release()
    first.release()  # and so is releasing twice
    second.acquire()
    second.release()


# -- the update state -------------------------------------------------------------------------


def saved_states(path: Path) -> dict[int, tuple[int, int, int, int]]:
    """{id: (pts, qts, date, seq)} as stock Telethon reads them at connect."""
    plain = SQLiteSession(str(path))
    try:
        return {
            i: (s.pts, s.qts, int(s.date.timestamp()), s.seq) for i, s in plain.get_update_states()
        }
    finally:
        plain.close()


def test_the_update_state_is_ours_to_write_not_telethons(tmp_path: Path) -> None:
    """Telethon writes its update state each minute and at disconnect, maybe past what the
    consumer was handed: ignored. save_update_state writes it (a row per channel, the rows of
    channels no longer tracked deleted), in the table stock Telethon loads."""
    path = tmp_path / "acc.session"
    s = EntitySession(str(path))
    when = datetime(2026, 1, 2, tzinfo=UTC)
    s.set_update_state(0, types.updates.State(99, 0, when, 0, 0))  # as Telethon would
    s.save()
    assert saved_states(path) == {}
    s.save_update_state(UpdateState(7, 0, when, 1, {5: 40, 6: 50}))
    stamp = int(when.timestamp())
    assert saved_states(path) == {0: (7, 0, stamp, 1), 5: (40, 0, stamp, 0), 6: (50, 0, stamp, 0)}
    s.save_update_state(UpdateState(8, 0, when, 1, {5: 41}))
    assert saved_states(path) == {0: (8, 0, stamp, 1), 5: (41, 0, stamp, 0)}
    s.close()
    # A new process starts from what the file holds: rows it did not write are dropped too.
    other = SQLiteSession(str(path))
    other.set_update_state(9, types.updates.State(1, 0, when, 0, 0))
    other.save()
    other.close()
    s = EntitySession(str(path))
    s.save_update_state(UpdateState(8, 0, when, 1, {5: 42}))
    s.close()
    assert saved_states(path) == {0: (8, 0, stamp, 1), 5: (42, 0, stamp, 0)}


# -- sealed sessions --------------------------------------------------------------------------

KEY = SessionSeal(bytes(range(32)))
OTHER_KEY = SessionSeal(bytes(range(1, 33)))
PLAIN_KEY = bytes(range(256))  # an auth key's 256 bytes, easy to look for in the file


def auth_column(path: Path) -> bytes:
    with contextlib.closing(sqlite3.connect(path)) as db:
        (column,) = db.execute("select auth_key from sessions").fetchone()
    return bytes(column)


def a_session(path: Path, seal: SessionSeal | None) -> None:
    """A session file with PLAIN_KEY as its auth key, on DC 2, holding one entity."""
    s = EntitySession(str(path), seal=seal)
    s.set_dc(2, "127.0.0.2", 443)
    s.auth_key = AuthKey(PLAIN_KEY)
    s.process_entities(update_with(user(1)))
    s.save()
    s.close()


def test_a_sealed_session_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    a_session(path, KEY)
    column = auth_column(path)
    assert is_sealed(column) and PLAIN_KEY not in path.read_bytes()
    s = EntitySession(str(path), seal=KEY)
    assert s.auth_key.key == PLAIN_KEY and (s.dc_id, s.server_address) == (2, "127.0.0.2")
    s.set_dc(2, "127.0.0.3", 443)  # Telethon writes the row and reads it back
    assert s.auth_key.key == PLAIN_KEY
    s.close()
    assert is_sealed(auth_column(path)) and auth_column(path) != column  # a fresh nonce
    # Everything else is Telethon's own file: stock Telethon reads the entity rows.
    assert rows(path) == [(1, 11, "alice", "Alice")]


@pytest.mark.parametrize(
    ("written", "opened", "reason"),
    [
        (KEY, None, "is sealed and telegram.session_key is not set"),
        (KEY, OTHER_KEY, "does not open with this key"),
        (None, KEY, "is not sealed: seal it with `python start.py sessions seal`"),
    ],
)
def test_a_key_that_does_not_fit_refuses_the_file(
    tmp_path: Path, written: SessionSeal | None, opened: SessionSeal | None, reason: str
) -> None:
    path = tmp_path / "acc.session"
    a_session(path, written)
    before = path.read_bytes()
    with pytest.raises(ConfigError) as caught:
        EntitySession(str(path), seal=opened)
    assert caught.value.key == "telegram.session_key" and caught.value.file == str(path)
    assert reason in str(caught.value)
    assert path.read_bytes() == before  # nothing rewritten


def test_a_sealed_column_is_never_a_plain_key() -> None:
    assert not is_sealed(PLAIN_KEY) and not is_sealed(b"") and not is_sealed(None)
    assert not is_sealed(SEALED_MAGIC + bytes(248))  # 256 bytes: a (very unlucky) real key
    assert is_sealed(KEY.seal(PLAIN_KEY)) and len(KEY.seal(PLAIN_KEY)) == 292


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 291))
def test_an_altered_sealed_key_does_not_open(plain: bytes, flip: int) -> None:
    sealed = bytearray(KEY.seal(plain))
    assert KEY.open(bytes(sealed), "f") == plain
    at = flip % len(sealed)
    sealed[at] ^= 0x01
    if at < len(SEALED_MAGIC):
        assert not is_sealed(bytes(sealed))  # no longer taken for a sealed key at all
    else:
        with pytest.raises(ConfigError):
            KEY.open(bytes(sealed), "f")


def test_seal_then_unseal_converts_the_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    a_session(path, None)
    assert convert_session(path, KEY, "seal") is True
    assert is_sealed(auth_column(path)) and PLAIN_KEY not in path.read_bytes()
    assert convert_session(path, KEY, "seal") is False  # sealed already
    s = EntitySession(str(path), seal=KEY)
    assert s.auth_key.key == PLAIN_KEY
    s.close()
    assert rows(path) == [(1, 11, "alice", "Alice")]
    with pytest.raises(ConfigError, match="does not open"):
        convert_session(path, OTHER_KEY, "unseal")
    with pytest.raises(ConfigError, match="does not open"):
        convert_session(path, OTHER_KEY, "seal")  # sealed with another key: said, not skipped
    assert convert_session(path, KEY, "unseal") is True
    assert auth_column(path) == PLAIN_KEY
    plain = SQLiteSession(str(path))  # stock Telethon takes it back
    assert plain.auth_key.key == PLAIN_KEY and plain.dc_id == 2
    plain.close()
    assert convert_session(path, KEY, "unseal") is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.session"]


def test_a_crash_mid_conversion_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "acc.session"
    a_session(path, None)
    before = path.read_bytes()

    def crash(self: Path, target: Path) -> None:
        raise OSError("the power went out")

    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(OSError):
        convert_session(path, KEY, "seal")
    monkeypatch.undo()
    assert path.read_bytes() == before  # the original, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.session"]
    # A copy half-made by a killed process is only a leftover: the next run starts over.
    (tmp_path / ".acc.session.seal-tmp").write_bytes(b"half a file")
    assert convert_session(path, KEY, "seal") is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.session"]
    s = EntitySession(str(path), seal=KEY)
    assert s.auth_key.key == PLAIN_KEY
    s.close()


def test_a_file_moved_away_under_the_session_keeps_its_writes_and_calls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session file renamed while its account runs (before a reload retires it): in WAL
    mode SQLite keeps writing (into the old name's WAL), so calls never fail; at close
    that WAL is folded into the moved file and nothing is left at the old name, where a
    stale WAL would be replayed into a new session file (a re-login)."""
    path = tmp_path / "15550001001.session"
    s = EntitySession(str(path))
    s.process_entities(update_with(user(1)))
    s.save()
    path.rename(tmp_path / "elsewhere.session")
    s.process_entities(update_with(user(2)))  # no "attempt to write a readonly database"
    s.save_update_state(UpdateState(8, 0, datetime(2026, 1, 2, tzinfo=UTC), 1, {5: 41}))
    s.process_entities(update_with(user(3)))
    s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.session"]
    assert [r[0] for r in rows(tmp_path / "elsewhere.session")] == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "+15*******01" in warnings[0]  # once, never the number
    # A new session file at the old name (a re-login) starts clean.
    again = EntitySession(str(path))
    again.process_entities(update_with(user(4)))
    again.close()
    assert [r[0] for r in rows(path)] == [4]


def test_a_deleted_session_file_leaves_no_wal_behind(tmp_path: Path) -> None:
    path = tmp_path / "acc.session"
    s = EntitySession(str(path))
    s.process_entities(update_with(user(1)))
    s.save()
    path.unlink()
    s.process_entities(update_with(user(2)))
    s.close()
    assert list(tmp_path.iterdir()) == []
