"""The emulator's world model and its deterministic file bytes (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakedc import files
from tests.fakedc.demo_world import ACCOUNT_A, ACCOUNT_B, NEWS, demo_dict, demo_world
from tests.fakedc.world import MessageSpec, World

MIB = 1024 * 1024


# --- files ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    key=st.integers(min_value=0, max_value=2**40),
    size=st.integers(min_value=0, max_value=5 * MIB),
    offset=st.integers(min_value=0, max_value=6 * MIB),
    limit=st.integers(min_value=0, max_value=2 * MIB),
)
def test_a_part_is_the_same_slice_of_the_whole_file(key: int, size: int, offset: int, limit: int) -> None:
    part = files.read(key, size, offset, limit)
    assert len(part) == max(0, min(size, offset + limit) - offset)
    if part:
        # Rebuild the region from 4 KiB pieces: the bytes at a position never depend on how
        # the file is cut into parts.
        pieces = b"".join(
            files.read(key, size, p, 4096) for p in range(offset, offset + len(part), 4096)
        )
        assert pieces[: len(part)] == part


def test_parts_differ_across_1mib_boundaries_and_files_differ() -> None:
    size = 4 * MIB
    parts = [files.read(7, size, i * MIB, MIB) for i in range(4)]
    assert len(set(parts)) == 4
    assert files.read(7, size, 0, MIB) != files.read(8, size, 0, MIB)
    assert files.read(7, size) == files.read(7, size)  # deterministic


def test_end_of_file_is_short_then_empty() -> None:
    size = MIB + 100
    assert len(files.read(1, size, MIB, 4096)) == 100
    assert files.read(1, size, MIB + 4096, 4096) == b""
    with pytest.raises(ValueError):
        files.read(1, size, -1, 10)


def test_a_1gb_file_costs_no_memory_and_a_1mib_part_is_one_copy() -> None:
    """What files.py promises, measured in bytes allocated rather than in time (a busy
    2-CPU machine makes any time bound flaky): a 1 MiB part of a 1 GB file allocates the
    part once (one slice of the block, no join or intermediate copy), and reading 200 parts
    one after another never holds more than one."""
    import tracemalloc

    size = 1024 * MIB
    files.read(42, size, 0, MIB)  # the block exists before measuring (module import)
    tracemalloc.start()
    try:
        for i in range(200):
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            part = files.read(42, size, (i * 37 % 1024) * MIB, MIB)
            held, peak = tracemalloc.get_traced_memory()
            assert len(part) == MIB
            assert MIB <= held - before < MIB + 4096  # the part itself, nothing else kept
            assert peak - before < MIB + 4096  # and no second copy on the way
            del part
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MIB  # one part at a time, never the file


def test_digest_matches_the_whole_read() -> None:
    import hashlib

    size = 3 * MIB + 5
    assert files.digest(9, size) == hashlib.sha256(files.read(9, size)).hexdigest()


# --- loading --------------------------------------------------------------------------


def test_demo_world_round_trips_through_json(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    path.write_text(json.dumps(demo_dict()), encoding="utf-8")
    world = World.from_json_file(path)
    direct = demo_world()
    assert set(world.users) == set(direct.users)
    assert set(world.chats) == set(direct.chats)
    assert world.chats[NEWS].pts == direct.chats[NEWS].pts
    assert len(world.chats[NEWS].messages) == 150


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"userz": []}, "unknown keys"),
        ({"users": [{"id": 1, "nick": "x"}]}, "nick"),
        ({"chats": [{"id": 1, "kind": "supergroup"}]}, "kind"),
        ({"documents": [{"id": 1, "kind": "movie"}]}, "kind"),
        ({"users": [{"id": 1}], "chats": [{"id": 1}]}, "twice"),
        ({"chats": [{"id": 1, "pts": 5}]}, "world's own"),
        ({"chats": [{"id": 1}], "messages": [{"chat": 1, "media": {"photo": 9}}]}, "media"),
    ],
)
def test_a_bad_world_is_refused_naming_the_problem(data: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        World.from_dict(data)


# --- identity rules -------------------------------------------------------------------


def test_access_hashes_are_per_viewer_and_stable() -> None:
    world = demo_world()
    a = world.access_hash("channel", ACCOUNT_A, NEWS)
    assert a == world.access_hash("channel", ACCOUNT_A, NEWS)
    assert a != world.access_hash("channel", ACCOUNT_B, NEWS)
    assert a != world.access_hash("user", ACCOUNT_A, NEWS)
    assert World(secret=b"other").access_hash("channel", ACCOUNT_A, NEWS) != a


def test_file_references_expire_and_are_bound_to_the_viewer() -> None:
    world = demo_world()
    ref = world.file_reference(ACCOUNT_A, "photo", 5001, "msg:1:2")
    assert world.check_file_reference(ACCOUNT_A, "photo", 5001, ref) == "ok"
    assert world.check_file_reference(ACCOUNT_B, "photo", 5001, ref) == "invalid"
    assert world.check_file_reference(ACCOUNT_A, "photo", 5002, ref) == "invalid"
    assert world.check_file_reference(ACCOUNT_A, "photo", 5001, b"junk") == "invalid"
    world.expire_file_references()
    assert world.check_file_reference(ACCOUNT_A, "photo", 5001, ref) == "expired"
    fresh = world.file_reference(ACCOUNT_A, "photo", 5001, "msg:1:2")
    assert world.check_file_reference(ACCOUNT_A, "photo", 5001, fresh) == "ok"


# --- sequences ------------------------------------------------------------------------


def test_channel_pts_moves_per_message_and_per_deleted_id() -> None:
    world = demo_world()
    chat = world.chats[NEWS]
    start = chat.pts
    assert world.events_since(chat, start) == []
    assert world.events_since(chat, start - 1) is None  # before the log: too long
    world.channel_event(chat, "new", [151])
    world.channel_event(chat, "edit", [151])
    world.channel_event(chat, "delete", [3, 4, 5])
    assert chat.pts == start + 5
    kinds = [(e.kind, e.pts, e.pts_count) for e in world.events_since(chat, start) or []]
    assert kinds == [("new", start + 1, 1), ("edit", start + 2, 1), ("delete", start + 5, 3)]
    assert [e.kind for e in world.events_since(chat, start + 2) or []] == ["delete"]


def test_channel_ids_are_their_own_sequence_and_common_ids_are_shared() -> None:
    world = World.from_dict(
        {
            "users": [{"id": 1, "phone": "1"}, {"id": 2, "phone": "2"}],
            "chats": [
                {"id": 10, "kind": "broadcast", "members": {"1": 0}},
                {"id": 11, "kind": "broadcast", "members": {"1": 0}},
                {"id": 12, "kind": "group", "members": {"1": 0, "2": 0}},
            ],
        }
    )
    a = world.add_message(MessageSpec(chat=10, text="x"))
    b = world.add_message(MessageSpec(chat=11, text="y"))
    c = world.add_message(MessageSpec(chat=12, text="z"))
    d = world.add_message(MessageSpec(to_user=2, from_id=1, text="dm"))
    assert (a.id, b.id) == (1, 1)
    assert (c.id, d.id) == (1, 2)
    assert world.common_viewers(d) == [1, 2]


def test_each_account_numbers_the_common_messages_it_sees() -> None:
    world = World.from_dict(
        {
            "users": [{"id": 1, "phone": "1"}, {"id": 2, "phone": "2"}, {"id": 3}],
            "chats": [{"id": 12, "kind": "group", "members": {"1": 0, "2": 0}}],
        }
    )
    world.add_message(MessageSpec(to_user=3, from_id=1, text="dm"))  # only in 1's box
    first = world.add_message(MessageSpec(chat=12, text="a"))
    reply = world.add_message(MessageSpec(chat=12, text="b", reply_to=first.id))
    assert (first.id, reply.id) == (2, 3)  # store ids
    assert [(m.id, m.reply_to) for m in (world.seen_by(reply, 1), world.seen_by(reply, 2))] == [
        (3, 2),
        (2, 1),
    ]
    assert [m.text for m in world.common_box(2)] == ["a", "b"]
    assert world.own_id(3, first.id) is None  # not an account
    assert not world.common_visible(first, 3)


def test_the_demo_world_dumps_as_json_a_world_file_can_start_from(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "tests.fakedc.demo_world"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    path = tmp_path / "w.json"
    path.write_text(out, encoding="utf-8")
    assert set(World.from_json_file(path).chats) == set(demo_world().chats)
