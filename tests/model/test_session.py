"""model/session.py: the session file's lock (one process per file) and EntitySession,
Telethon's session file written only when an entity changed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon import types
from telethon.sessions import SQLiteSession

from common.errors import ConfigError
from model.session import EntitySession, SessionLock
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
