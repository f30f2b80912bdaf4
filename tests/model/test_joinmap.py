"""The join map: joins, leaves, kicks, banned accounts, counts and the gap-poll cursor."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.sqlite import schema_version
from model.joinmap import CHANNELS_PER_ACCOUNT, JoinMap, State

CHAN = -1001234567890
CHAN2 = -1009876543210
GROUP = -4001  # a basic group: message ids per account
CHAN3 = -1005555555555


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jm(tmp_path: Path, clock: Clock) -> JoinMap:
    m = JoinMap(tmp_path / "joinmap.db", clock=clock)
    yield m
    m.close()


def test_join_returns_the_subscription(jm: JoinMap) -> None:
    sub = jm.record_join(CHAN, "acc1", type="channel", title="News", username="news")
    assert sub == {
        "peer": {"id": CHAN, "type": "channel", "title": "News", "username": "news"},
        "account": "acc1",
        "state": "joined",
        "joined_at": "2023-11-14T22:13:20Z",
        "updated_at": "2023-11-14T22:13:20Z",
        "last_message_id": 0,
    }
    assert jm.get(CHAN) == sub
    assert jm.list() == [sub]


def test_find_by_username(jm: JoinMap) -> None:
    jm.record_join(CHAN, "acc1", type="channel", title="News", username="News_Daily")
    sub = jm.find_username("news_daily")
    assert sub is not None and sub["peer"]["id"] == CHAN
    assert jm.find_username("other") is None


def test_get_unknown_peer_is_none(jm: JoinMap) -> None:
    assert jm.get(CHAN) is None
    assert jm.record_leave(CHAN, "acc1") is None
    assert jm.record_kick(CHAN, "acc1") is None


def test_leave_and_kick_change_state_not_rows(jm: JoinMap, clock: Clock) -> None:
    jm.record_join(CHAN, "acc1", type="channel", title="A")
    jm.record_join(CHAN2, "acc1", type="megagroup", title="B")
    clock.now += 60
    left = jm.record_leave(CHAN, "acc1")
    kicked = jm.record_kick(CHAN2, "acc1")
    assert left is not None and left["state"] == "left"
    assert kicked is not None and kicked["state"] == "kicked"
    assert kicked["updated_at"] == "2023-11-14T22:14:20Z"
    assert jm.list() == []
    assert {s["state"] for s in jm.list(state=None)} == {"left", "kicked"}
    assert [s["peer"]["id"] for s in jm.list(State.KICKED)] == [CHAN2]


def test_rejoin_resets_joined_at_but_a_repeated_join_keeps_it(jm: JoinMap, clock: Clock) -> None:
    first = jm.record_join(CHAN, "acc1", type="channel")
    clock.now += 10
    again = jm.record_join(CHAN, "acc1", type="channel", title="renamed")
    assert again["joined_at"] == first["joined_at"]
    assert again["peer"]["title"] == "renamed"
    jm.record_leave(CHAN, "acc1")
    clock.now += 10
    back = jm.record_join(CHAN, "acc1", type="channel")
    assert back["joined_at"] == "2023-11-14T22:13:40Z"


def test_two_accounts_in_one_chat(jm: JoinMap, clock: Clock) -> None:
    jm.record_join(CHAN, "acc1", type="channel")
    clock.now += 1
    jm.record_join(CHAN, "acc2", type="channel")
    assert [m["account"] for m in jm.memberships(CHAN)] == ["acc1", "acc2"]
    assert jm.joined_peers() == [CHAN]
    jm.record_kick(CHAN, "acc1")
    # the chat is still subscribed through acc2, and get() says so
    sub = jm.get(CHAN)
    assert sub is not None and sub["account"] == "acc2" and sub["state"] == "joined"
    jm.record_kick(CHAN, "acc2")
    assert jm.joined_peers() == []
    sub = jm.get(CHAN)
    assert sub is not None and sub["state"] == "kicked"


def test_banned_account_marks_only_its_joined_rows(jm: JoinMap) -> None:
    jm.record_join(CHAN, "acc1", type="channel")
    jm.record_join(CHAN2, "acc1", type="channel")
    jm.record_join(CHAN2, "acc2", type="channel")
    jm.record_leave(CHAN, "acc1")
    moved = jm.record_account_banned("acc1")
    assert [(m["peer"]["id"], m["state"]) for m in moved] == [(CHAN2, "banned_account")]
    assert jm.memberships(CHAN)[0]["state"] == "left"  # not rewritten
    assert jm.by_account("acc1") == []
    assert len(jm.by_account("acc1", state=None)) == 2
    assert jm.counts() == {"acc2": 1}
    assert jm.record_account_banned("acc1") == []


def test_counts_for_the_channel_limit(jm: JoinMap) -> None:
    for i in range(5):
        jm.record_join(-1000000000000 - i, "acc1", type="channel")
    jm.record_join(CHAN, "acc2", type="channel")
    assert jm.count("acc1") == 5
    assert jm.count("nobody") == 0
    assert jm.counts() == {"acc1": 5, "acc2": 1}
    assert jm.has_room("acc1")
    assert not jm.has_room("acc1", limit=5)
    assert CHANNELS_PER_ACCOUNT == 500


def test_last_message_id_only_moves_forward(jm: JoinMap) -> None:
    assert jm.last_message_id(CHAN) == 0
    assert not jm.set_last_message_id(CHAN, 5)  # unknown chat: nothing to move
    jm.record_join(CHAN, "acc1", type="channel")
    assert jm.set_last_message_id(CHAN, 10)
    assert not jm.set_last_message_id(CHAN, 7)
    assert not jm.set_last_message_id(CHAN, 10)
    assert jm.last_message_id(CHAN) == 10
    assert jm.get(CHAN)["last_message_id"] == 10  # type: ignore[index]


def test_a_deferred_cursor_is_written_by_flush(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "j.db"
    a = JoinMap(path, clock=clock)
    a.record_join(CHAN, "acc1", type="channel")
    a.set_last_message_id(CHAN, 5)
    assert a.set_last_message_id(CHAN, 9, persist=False)
    assert a.last_message_id(CHAN) == 9 and a.get(CHAN)["last_message_id"] == 9  # type: ignore[index]
    assert a.list()[0]["last_message_id"] == 9
    on_disk = sqlite3.connect(path).execute("SELECT last_message_id FROM peers").fetchone()[0]
    assert on_disk == 5  # not yet
    a.flush()
    on_disk = sqlite3.connect(path).execute("SELECT last_message_id FROM peers").fetchone()[0]
    assert on_disk == 9
    a.set_last_message_id(CHAN, 12, persist=False)
    a.close()  # flushes
    b = JoinMap(path, clock=clock)
    assert b.last_message_id(CHAN) == 12
    b.close()


def test_a_basic_groups_cursor_is_per_membership(jm: JoinMap, clock: Clock) -> None:
    jm.record_join(GROUP, "acc1", type="group", title="Small")
    clock.now += 1
    jm.record_join(GROUP, "acc2", type="group", title="Small")
    assert jm.member_last_message_id(GROUP, "acc1") == 0
    assert jm.set_member_last_message_id(GROUP, "acc1", 10)
    assert jm.set_member_last_message_id(GROUP, "acc2", 4)  # the same chat, acc2's own ids
    assert not jm.set_member_last_message_id(GROUP, "acc1", 7)  # never back
    assert not jm.set_member_last_message_id(GROUP, "acc3", 5)  # not a member: nothing
    assert jm.member_last_message_id(GROUP, "acc3") == 0
    assert jm.last_message_id(GROUP) == 0  # the per-chat cursor is the channels'
    # Each subscription shows its own account's cursor.
    assert jm.get(GROUP)["last_message_id"] == 10  # type: ignore[index]
    assert [(m["account"], m["last_message_id"]) for m in jm.memberships(GROUP)] == [
        ("acc1", 10),
        ("acc2", 4),
    ]
    assert {s["account"]: s["last_message_id"] for s in jm.list()} == {"acc1": 10, "acc2": 4}


def test_a_memberships_cursor_is_flushed_and_survives_a_rename(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "j.db"
    a = JoinMap(path, clock=clock)
    a.record_join(GROUP, "15550001001", type="group")
    assert a.set_member_last_message_id(GROUP, "15550001001", 8, persist=False)
    assert a.get(GROUP)["last_message_id"] == 8  # type: ignore[index]

    def on_disk() -> list[tuple[str, int]]:
        rows = sqlite3.connect(path).execute("SELECT account, last_message_id FROM memberships")
        return [(str(r[0]), int(r[1])) for r in rows]

    assert on_disk() == [("15550001001", 0)]  # not yet
    a.flush()
    assert on_disk() == [("15550001001", 8)]
    a.set_member_last_message_id(GROUP, "15550001001", 9, persist=False)
    a.rename_account("15550001001", "acc1")  # the cursor moves with the membership
    assert a.member_last_message_id(GROUP, "acc1") == 9
    assert a.member_last_message_id(GROUP, "15550001001") == 0
    a.set_member_last_message_id(GROUP, "acc1", 11, persist=False)
    a.close()  # flushes
    b = JoinMap(path, clock=clock)
    assert b.member_last_message_id(GROUP, "acc1") == 11
    b.close()


def test_a_version_1_file_gets_the_membership_cursor(tmp_path: Path) -> None:
    from common.sqlite import open_db
    from model import joinmap

    path = tmp_path / "old.db"
    old = open_db(path, "joinmap", joinmap._MIGRATIONS[:1])
    old.execute(
        "INSERT INTO peers (peer_id, type, last_message_id, updated_at)"
        " VALUES (?, 'channel', 7, 0)",
        (CHAN,),
    )
    old.execute("INSERT INTO memberships VALUES (?, 'acc1', 'joined', 0, 0)", (CHAN,))
    old.close()
    jm = JoinMap(path)
    assert jm.last_message_id(CHAN) == 7 and jm.member_last_message_id(CHAN, "acc1") == 0
    assert jm.list()[0]["account"] == "acc1"
    jm.close()
    assert schema_version(sqlite3.connect(path), "joinmap") == 4


def test_a_version_2_file_gets_the_invite_column_and_keeps_its_rows(tmp_path: Path) -> None:
    from common.sqlite import open_db
    from model import joinmap

    path = tmp_path / "old.db"
    old = open_db(path, "joinmap", joinmap._MIGRATIONS[:2])
    old.execute(
        "INSERT INTO peers (peer_id, type, title, last_message_id, updated_at)"
        " VALUES (?, 'group', 'Small', 0, 0)",
        (GROUP,),
    )
    old.execute("INSERT INTO memberships VALUES (?, 'acc1', 'banned_account', 0, 0, 9)", (GROUP,))
    old.close()
    jm = JoinMap(path)
    assert jm.invite(GROUP) is None  # subscribed before invites were kept
    assert jm.member_last_message_id(GROUP, "acc1") == 9
    assert jm.orphaned() == [GROUP]
    assert [(s["peer"]["title"], s["account"]) for s in jm.subscriptions()] == [("Small", "acc1")]
    jm.close()
    assert schema_version(sqlite3.connect(path), "joinmap") == 4


def test_the_invite_a_chat_was_joined_by_is_kept_but_never_shown(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "j.db"
    a = JoinMap(path, clock=clock)
    sub = a.record_join(GROUP, "acc1", type="group", title="Small", invite="Hash4001aa")
    a.record_join(CHAN, "acc1", type="channel", username="news")
    assert a.invite(GROUP) == "Hash4001aa" and a.invite(CHAN) is None
    assert a.invite(CHAN2) is None  # unknown chat
    # A join without an invite (another account, a username) keeps it; a new one replaces it.
    a.record_join(GROUP, "acc2", type="group", title="Small")
    assert a.invite(GROUP) == "Hash4001aa"
    a.record_join(GROUP, "acc3", type="group", title="Small", invite="Hash4001bb")
    assert a.invite(GROUP) == "Hash4001bb"
    # Internal: in no subscription dict (API answers, events).
    shown = [sub, a.get(GROUP), *a.memberships(GROUP), *a.subscriptions(), *a.list(None)]
    assert all("Hash4001" not in repr(s) for s in shown)
    a.close()
    b = JoinMap(path, clock=clock)  # on disk
    assert b.invite(GROUP) == "Hash4001bb"
    b.close()


def test_get_answers_are_copies(jm: JoinMap) -> None:
    jm.record_join(CHAN, "acc1", type="channel", title="A")
    first = jm.get(CHAN)
    assert first is not None
    first["peer"]["title"] = "changed by a caller"
    first["state"] = "left"
    again = jm.get(CHAN)
    assert again is not None and again["peer"]["title"] == "A" and again["state"] == "joined"


def test_update_peer_keeps_what_is_not_given(jm: JoinMap) -> None:
    jm.record_join(CHAN, "acc1", type="channel", title="Old", username="old")
    jm.update_peer(CHAN, title="New")
    peer = jm.get(CHAN)["peer"]  # type: ignore[index]
    assert (peer["title"], peer["username"]) == ("New", "old")


def test_survives_reopen_and_schema_is_versioned(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "j.db"
    a = JoinMap(path, clock=clock)
    a.record_join(CHAN, "acc1", type="channel")
    a.set_last_message_id(CHAN, 42)
    a.close()
    b = JoinMap(path, clock=clock)  # migrations already applied: a no-op
    assert b.last_message_id(CHAN) == 42
    b.close()
    conn = sqlite3.connect(path)
    assert schema_version(conn, "joinmap") == 4
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    JoinMap(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO migrations VALUES ('joinmap', 99, 0)")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        JoinMap(path)


def test_invalid_state_is_refused(jm: JoinMap) -> None:
    jm.record_join(CHAN, "acc1", type="channel")
    with pytest.raises(ValueError):
        jm.set_state(CHAN, "acc1", "gone")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "leave", "kick", "ban"]),
            st.integers(0, 3),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=40,
    )
)
def test_counts_match_a_model(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    """Any sequence of changes: counts() and list() agree with a dict model."""
    jm = JoinMap(tmp_path_factory.mktemp("jm") / "j.db")
    model: dict[tuple[int, str], str] = {}
    try:
        for op, peer, account in ops:
            pid = -1000000000000 - peer
            if op == "join":
                jm.record_join(pid, account, type="channel")
                model[(pid, account)] = "joined"
            elif op == "leave":
                jm.record_leave(pid, account)
                if (pid, account) in model:
                    model[(pid, account)] = "left"
            elif op == "kick":
                jm.record_kick(pid, account)
                if (pid, account) in model:
                    model[(pid, account)] = "kicked"
            else:
                jm.record_account_banned(account)
                for key, state in model.items():
                    if key[1] == account and state == "joined":
                        model[key] = "banned_account"
        joined = [k for k, s in model.items() if s == "joined"]
        expected: dict[str, int] = {}
        for _, account in joined:
            expected[account] = expected.get(account, 0) + 1
        assert jm.counts() == expected
        assert sorted((s["peer"]["id"], s["account"]) for s in jm.list()) == sorted(joined)
        assert {
            (s["peer"]["id"], s["account"]): s["state"] for s in jm.list(state=None)
        } == model
    finally:
        jm.close()


def test_rename_account_moves_its_memberships(jm: JoinMap) -> None:
    # Rows from before account labels name the session stem (a phone number).
    jm.record_join(CHAN, "15550001001", type="channel", title="News")
    jm.record_join(CHAN2, "15550001001", type="channel", title="Other")
    jm.record_leave(CHAN2, "15550001001")
    jm.record_join(CHAN2, "acc2", type="channel", title="Other")
    assert jm.get(CHAN)["account"] == "15550001001"  # cached: the rename must drop it

    assert jm.rename_account("15550001001", "+15*******01") == 2

    assert jm.get(CHAN)["account"] == "+15*******01"
    assert {(m["peer"]["id"], m["account"], m["state"]) for m in jm.list(None)} == {
        (CHAN, "+15*******01", "joined"),
        (CHAN2, "+15*******01", "left"),
        (CHAN2, "acc2", "joined"),
    }
    assert jm.count("+15*******01") == 1 and jm.by_account("15550001001", None) == []
    assert jm.rename_account("15550001001", "+15*******01") == 0  # the next start: nothing


def test_rename_account_keeps_the_membership_the_new_name_has(jm: JoinMap) -> None:
    jm.record_join(CHAN, "old", type="channel")
    jm.record_join(CHAN, "new", type="channel")
    jm.record_leave(CHAN, "new")
    assert jm.rename_account("old", "new") == 0
    assert [(m["account"], m["state"]) for m in jm.memberships(CHAN)] == [("new", "left")]


def test_a_chat_nobody_is_in_since_a_ban_is_orphaned(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "orphans.db"
    jm = JoinMap(path, clock=clock)
    jm.record_join(CHAN, "acc1", type="channel")
    jm.record_join(CHAN2, "acc1", type="channel")
    jm.record_join(CHAN2, "acc2", type="channel")
    clock.now += 1
    jm.record_account_banned("acc1")
    assert jm.orphaned() == [CHAN]  # CHAN2 still has acc2
    assert jm.get(CHAN)["state"] == "banned_account"
    # GET's list: the joined memberships and the orphan (acc1's CHAN2 row is no orphan).
    listed = [(s["peer"]["id"], s["account"], s["state"]) for s in jm.subscriptions()]
    assert listed == [(CHAN2, "acc2", "joined"), (CHAN, "acc1", "banned_account")]
    jm.close()
    jm = JoinMap(path, clock=clock)  # derived from the rows: a restart keeps it
    assert jm.orphaned() == [CHAN]
    clock.now += 1
    jm.record_join(CHAN, "acc3", type="channel")  # taken over
    assert jm.orphaned() == []
    assert [s["state"] for s in jm.subscriptions() if s["peer"]["id"] == CHAN] == ["joined"]
    jm.close()


def test_a_kick_or_a_leave_after_the_ban_ends_the_orphan(jm: JoinMap, clock: Clock) -> None:
    # Two accounts in CHAN: acc1 banned (acc2 still in it), then acc2 kicked by the admins.
    jm.record_join(CHAN, "acc1", type="channel")
    jm.record_join(CHAN, "acc2", type="channel")
    clock.now += 1
    jm.record_account_banned("acc1")
    clock.now += 1
    jm.record_kick(CHAN, "acc2")
    # CHAN2: acc1 banned and acc2 kicked at the same time: the kick wins the tie.
    jm.record_join(CHAN2, "acc1", type="channel")
    jm.record_join(CHAN2, "acc2", type="channel")
    jm.record_kick(CHAN2, "acc2")
    jm.record_account_banned("acc1")
    # CHAN3: banned, then dropped through the API (its row set to left).
    jm.record_join(CHAN3, "acc4", type="channel")
    jm.record_account_banned("acc4")
    assert jm.orphaned() == [CHAN3]
    jm.set_state(CHAN3, "acc4", State.LEFT)
    assert jm.orphaned() == [] and jm.subscriptions() == []
    assert [jm.get(p)["state"] for p in (CHAN, CHAN2, CHAN3)] == ["kicked", "kicked", "left"]
    # Re-subscribed after the kick (with acc3), then acc3 banned: orphaned again.
    clock.now += 1
    jm.record_join(CHAN, "acc3", type="channel")
    clock.now += 1
    jm.record_account_banned("acc3")
    assert jm.orphaned() == [CHAN]
    assert [(s["account"], s["state"]) for s in jm.subscriptions()] == [("acc3", "banned_account")]


def test_basic_group_ids_per_account_survive_a_reopen(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "joinmap.db"
    jm = JoinMap(path, clock=clock)
    jm.note_group_message("acc1", 7, GROUP, 7, persist=False)
    jm.note_group_message("acc2", 5, GROUP, 7, persist=False)  # the same message, B's id
    jm.note_group_message("acc1", 7, -4002, 9, persist=False)  # the first note wins
    assert jm.group_message("acc1", 7) == (GROUP, 7)  # before the flush too
    assert jm.group_message("acc2", 7) is None  # ids are each account's own
    jm.close()  # flushes
    again = JoinMap(path, clock=clock)
    try:
        assert again.group_message("acc1", 7) == (GROUP, 7)
        assert again.group_message("acc2", 5) == (GROUP, 7)
        assert again.group_message("acc1", 8) is None
    finally:
        again.close()


def test_basic_group_ids_keep_each_accounts_newest(jm: JoinMap) -> None:
    from model.joinmap import GROUP_IDS_KEPT

    jm.note_group_message("acc1", 1, GROUP, 1)
    jm.note_group_message("acc2", 1, GROUP, 1)
    jm.note_group_message("acc1", GROUP_IDS_KEPT + 1, GROUP, 2)
    assert jm.group_message("acc1", 1) is None  # GROUP_IDS_KEPT ids behind its newest
    assert jm.group_message("acc1", GROUP_IDS_KEPT + 1) == (GROUP, 2)
    assert jm.group_message("acc2", 1) == (GROUP, 1)  # another account's are its own
