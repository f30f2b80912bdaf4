"""model/telethon_internals.py against the installed Telethon.

Every private name the adapter relies on (its `INTERNALS`) must still exist with the kind
it expects; a Telethon upgrade that moves one fails here, naming it, instead of at the
first download. And no product module (common/, model/, service/, start.py) reaches a
Telethon private attribute other than through the adapter.
"""

from __future__ import annotations

import ast
import inspect
import logging
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import telethon
from hypothesis import given, settings
from hypothesis import strategies as st
from telethon import TelegramClient
from telethon._updates import ChannelState, EntityCache, MessageBox, SessionState
from telethon._updates.messagebox import ENTRY_ACCOUNT
from telethon.crypto import AuthKey
from telethon.errors import SecurityError
from telethon.extensions import BinaryReader
from telethon.extensions.messagepacker import MessagePacker
from telethon.network import ConnectionTcpIntermediate, MTProtoSender
from telethon.network.mtprotostate import MTProtoState
from telethon.sessions import MemorySession
from telethon.tl import functions, types

from model import telethon_internals
from model.session import EntitySession
from model.telethon_internals import (
    INTERNALS,
    Internal,
    KeepingMessageBox,
    MediaState,
    UpdateState,
    follow_channel,
    follows_channel,
    install_message_box,
    session_execute,
    update_entities,
    update_state,
)
from tests.fakedc.mtproto import encrypt_server_message

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["common", "model", "service", "start.py"]
ADAPTER = Path(telethon_internals.__file__).resolve()
_MISSING: Any = object()


@pytest.fixture(scope="module")
def client() -> TelegramClient:
    """A TelegramClient as the project builds them, never connected."""
    return TelegramClient(MemorySession(), 1, "0" * 32, receive_updates=False)


def where(internal: Internal) -> str:
    return (
        f"Telethon {telethon.__version__}: {internal.label} ({internal.kind}) is what "
        f"model/telethon_internals.py relies on for {internal.used_for}"
    )


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: i.label)
def test_telethon_still_has_it(internal: Internal, client: TelegramClient) -> None:
    if internal.kind == "set on updates":
        source = inspect.getsource(internal.owner)
        assert f".{internal.name} = " in source, f"{where(internal)}: no longer set"
        return
    holder = client if internal.kind == "client attribute" else internal.owner
    if internal.kind == "instance attribute":
        holder = constructed(internal.owner, client)
    value: Any = getattr(holder, internal.name, _MISSING)
    assert value is not _MISSING, f"{where(internal)}: gone"
    if internal.kind == "coroutine function":
        assert inspect.iscoroutinefunction(value), f"{where(internal)}: not a coroutine function"
    elif internal.kind == "function":
        assert callable(value) and not inspect.iscoroutinefunction(value), (
            f"{where(internal)}: not a plain function"
        )
    elif internal.kind == "class":
        assert inspect.isclass(value), f"{where(internal)}: not a class"
    if internal.type_of is not None:
        assert isinstance(value, internal.type_of), (
            f"{where(internal)}: a {type(value).__name__}, not a {internal.type_of.__name__}"
        )
    if internal.params:
        params = inspect.signature(value).parameters
        missing = [p for p in internal.params if p not in params]
        assert not missing, f"{where(internal)}: its signature lost {missing}"


def constructed(owner: type, client: TelegramClient) -> Any:
    """An instance of a Telethon class `INTERNALS` reads instance attributes of, built as
    model/telethon_internals.py builds it (never connected)."""
    sender = MTProtoSender(None, loggers=client._log)
    return {
        MTProtoSender: sender,
        MessagePacker: sender._send_queue,
        MTProtoState: MTProtoState(None, loggers=client._log),
        ConnectionTcpIntermediate: ConnectionTcpIntermediate("127.0.0.1", 1, 1, loggers=client._log),
    }[owner]


def test_every_private_name_the_adapter_uses_is_listed() -> None:
    """The adapter's own code reaches no private Telethon name `INTERNALS` doesn't list, so
    the test above covers all of them."""
    listed = {i.name for i in INTERNALS}
    used = {
        node.attr
        for node in ast.walk(ast.parse(ADAPTER.read_text()))
        if isinstance(node, ast.Attribute) and _private(node.attr)
    }
    used |= {
        name
        for node in ast.walk(ast.parse(ADAPTER.read_text()))
        if (name := _getattr_name(node)) is not None and _private(name)
    }
    assert used <= listed, f"not in INTERNALS: {sorted(used - listed)}"


def test_no_product_module_reaches_telethon_internals(client: TelegramClient) -> None:
    """The grep, kept: outside the adapter no `x._name` (nor `getattr(x, "_name")`) of a
    private name of the Telethon classes the project uses, nor `self._name` of one in a
    class that subclasses Telethon's."""
    names = _telethon_private_names(client)
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text}"
        for path in _product_files()
        for line, text in _private_uses(path, names)
    ]
    assert not found, "Telethon internals outside model/telethon_internals.py:\n" + "\n".join(found)


def test_the_scan_sees_what_it_looks_for(tmp_path: Path, client: TelegramClient) -> None:
    """The scan above is not vacuous: each form it forbids is found."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from telethon.sessions import SQLiteSession\n"
        "async def f(client, update):\n"
        "    await client._call(client._sender, None)\n"
        "    return getattr(update, '_entities', {})\n"
        "class S(SQLiteSession):\n"
        "    def g(self):\n"
        "        return self._execute('select 1')\n"
        "    def h(self):\n"
        "        return self._mine\n"
    )
    lines = [line for line, _ in _private_uses(bad, _telethon_private_names(client))]
    assert lines == [3, 3, 4, 7]


def test_update_entities_reads_what_telethon_attached() -> None:
    update = types.UpdateChannel(channel_id=5)
    assert update_entities(update) == {}
    channel = types.ChannelForbidden(id=5, access_hash=1, title="gone")
    update._entities = {-1000000000005: channel}  # as Telethon's _preprocess_updates does
    assert update_entities(update) == {-1000000000005: channel}


def test_session_execute_runs_on_the_session_file(tmp_path: Path) -> None:
    session = EntitySession(str(tmp_path / "a"))
    try:
        assert session_execute(
            session, "select count(*) from entities where username = ?", "x"
        ) == (0,)
    finally:
        session.close()


# -- the scan -------------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _telethon_private_names(client: TelegramClient) -> set[str]:
    """Private names of the Telethon classes the adapter deals with (class and instance
    attributes), and whatever else `INTERNALS` lists (attributes set at run time)."""
    owners = [i.owner for i in INTERNALS if inspect.isclass(i.owner)]
    names = {n for owner in owners for n in dir(owner)}
    names |= set(vars(client)) | set(vars(client.session)) | set(vars(client._sender))
    names |= {i.name for i in INTERNALS}
    return {n for n in names if _private(n)}


def _product_files() -> Iterator[Path]:
    for entry in PRODUCT:
        path = ROOT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if file.resolve() != ADAPTER:
                yield file


def _getattr_name(node: ast.AST) -> str | None:
    """The "_x" of `getattr(obj, "_x", ...)` (or has/set/delattr); None for another node."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
        and len(node.args) > 1
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    ):
        return node.args[1].value
    return None


def _private_uses(path: Path, names: set[str]) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    telethon_subclasses = {id(node) for node in ast.walk(tree) if _subclasses_telethon(node)}
    uses: list[tuple[int, str]] = []
    for cls_or_module in [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        inside_subclass = id(cls_or_module) in telethon_subclasses
        for node in _own_nodes(cls_or_module):
            if isinstance(node, ast.Attribute) and node.attr in names:
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not on_self or inside_subclass:
                    uses.append((node.lineno, ast.unparse(node)))
            elif isinstance(node, ast.Call) and _getattr_name(node) in names:
                uses.append((node.lineno, ast.unparse(node)))
    yield from sorted(set(uses))


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a module or class, not those of the classes nested in it."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, ast.ClassDef):
            continue
        yield child
        yield from _own_nodes(child)


def _subclasses_telethon(node: Any) -> bool:
    telethon_classes = {o.__name__ for o in (i.owner for i in INTERNALS) if inspect.isclass(o)}
    telethon_classes |= {"MemorySession", "Session", "TelegramBaseClient"}
    return isinstance(node, ast.ClassDef) and any(
        isinstance(base, ast.Name) and base.id in telethon_classes for base in node.bases
    )


# -- the MessageBox that keeps what a difference hands back ---------------------------------
# (async tests: a MessageBox reads the running loop's clock)

WHEN = datetime(2026, 1, 2, tzinfo=UTC)


def _channel_box(cls: type) -> tuple[Any, Any, EntityCache]:
    box = cls(logging.getLogger("test.messagebox"))
    box.load(
        SessionState(0, 0, False, 10, 0, int(WHEN.timestamp()), 0, None), [ChannelState(5, 100)]
    )
    cache = EntityCache()
    cache.extend([], [types.Channel(5, "News", types.ChatPhotoEmpty(), WHEN, access_hash=7)])
    box.try_begin_get_diff(5, "a test")
    return box, box.get_channel_difference(cache), cache


def _message(msg_id: int, peer: Any) -> types.Message:
    return types.Message(msg_id, peer, WHEN, "text")


async def test_a_channel_difference_hands_on_its_edits_and_deletions() -> None:
    edit = types.UpdateEditChannelMessage(_message(3, types.PeerChannel(5)), pts=102, pts_count=1)
    deletion = types.UpdateDeleteChannelMessages(5, [4], pts=103, pts_count=1)
    diff = types.updates.ChannelDifference(
        104, [_message(9, types.PeerChannel(5))], [deletion, edit], [], [], final=True
    )
    box, request, cache = _channel_box(MessageBox)
    stock, _, _ = box.apply_channel_difference(request, diff, cache)
    # Telethon 1.45 drops them (if this fails, Telethon keeps them now: KeepingMessageBox
    # can go).
    assert [type(u) for u in stock] == [types.UpdateNewChannelMessage]
    box, request, cache = _channel_box(KeepingMessageBox)
    updates, _, _ = box.apply_channel_difference(request, diff, cache)
    assert updates[:2] == [edit, deletion] and len(updates) == 3
    assert update_state_of(box).channels == {5: 104}


async def test_an_account_difference_hands_on_its_edits_and_deletions() -> None:
    peer = types.PeerChat(8)
    edit = types.UpdateEditMessage(_message(3, peer), pts=11, pts_count=1)
    deletion = types.UpdateDeleteMessages([4], pts=12, pts_count=1)
    too_long = types.UpdateChannelTooLong(5, pts=120)
    state = types.updates.State(12, 0, WHEN, 0, 0)
    diff = types.updates.Difference(
        [_message(9, peer)], [], [too_long, deletion, edit], [], [], state
    )
    box = KeepingMessageBox(logging.getLogger("test.messagebox"))
    box.load(
        SessionState(0, 0, False, 10, 0, int(WHEN.timestamp()), 0, None), [ChannelState(5, 100)]
    )
    box.try_begin_get_diff(ENTRY_ACCOUNT, "a test")
    updates, _, _ = box.apply_difference(diff, EntityCache())
    assert updates[:2] == [edit, deletion] and isinstance(updates[2], types.UpdateNewMessage)
    assert box.getting_diff_for == {5}  # the channel named too long is asked next


async def test_a_load_starts_over() -> None:
    box, _, _ = _channel_box(KeepingMessageBox)
    box.load(SessionState(0, 0, False, 10, 0, int(WHEN.timestamp()), 0, None), [])
    assert not box.getting_diff_for and not box.possible_gaps


async def test_the_update_state_and_a_followed_channel() -> None:
    fresh = TelegramClient(MemorySession(), 1, "0" * 32, receive_updates=False)
    install_message_box(fresh)
    assert update_state(fresh) is None  # nothing known before the login
    box = fresh._message_box
    box.load(SessionState(0, 0, False, 10, 2, int(WHEN.timestamp()), 3, None), [])
    channel = types.Channel(5, "News", types.ChatPhotoEmpty(), WHEN, access_hash=7)
    assert not follows_channel(fresh, 5)
    follow_channel(fresh, channel, 100)
    follow_channel(fresh, channel, 90)  # tracked already: kept as it is
    assert follows_channel(fresh, 5)
    assert update_state(fresh) == UpdateState(10, 2, WHEN, 3, {5: 100})
    assert fresh._mb_entity_cache.get(5).hash == 7


def update_state_of(box: Any) -> UpdateState:
    holder = SimpleNamespace(_message_box=box)
    state = update_state(holder)  # type: ignore[arg-type]
    assert state is not None
    return state


# --- MediaState: Telethon's checks, fewer copies ---------------------------------------------

_AUTH = AuthKey(bytes(range(256)))


def _answer(obj: Any, msg_id: int, state: MTProtoState, *, req: int = 77) -> bytes:
    """A server message carrying `obj` (an rpc_result of it when `req`), encrypted for
    `state`'s session by the emulator's MTProto code."""
    body = struct.pack("<Iq", 0xF35C6D01, req) + obj._bytes() if req else obj._bytes()
    payload = encrypt_server_message(_AUTH.key, _AUTH.key_id, 0, state.id, msg_id, 1, [body])
    return b"".join(payload)


def _states() -> tuple[MTProtoState, MediaState]:
    loggers = TelegramClient(MemorySession(), 1, "0" * 32)._log
    stock, ours = MTProtoState(_AUTH, loggers), MediaState(_AUTH, loggers)
    ours.id = stock.id
    return stock, ours


def _read(message: Any) -> Any:
    """What the sender does with an rpc_result's body: upload.File read from it."""
    return functions.upload.GetFileRequest(types.InputPhotoFileLocation(1, 2, b"", ""), 0, 1).read_result(
        BinaryReader(message.obj.body)
    )


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096), mtime=st.integers(0, 2**31 - 1), tamper=st.integers(0, 2**16))
def test_media_state_reads_what_telethon_reads_and_refuses_what_it_refuses(
    data: bytes, mtime: int, tamper: int
) -> None:
    stock, ours = _states()
    msg_id = (int(time.time()) << 32) | 1
    answer = _answer(types.upload.File(types.storage.FilePartial(), mtime, data), msg_id, stock)
    # Ours as the media connection gets it: a bytearray per packet, decrypted in place.
    a, b = stock.decrypt_message_data(answer), ours.decrypt_message_data(bytearray(answer))
    assert (a.msg_id, a.seq_no, a.obj.req_msg_id) == (b.msg_id, b.seq_no, b.obj.req_msg_id)
    got = _read(b)
    assert isinstance(got.bytes, memoryview) and bytes(got.bytes) == _read(a).bytes == data
    assert got.mtime == mtime
    # Again: a duplicate, ignored by both (and as bytes, which ours decrypts into a copy).
    assert stock.decrypt_message_data(answer) is None
    assert ours.decrypt_message_data(bytearray(answer)) is None
    assert ours.decrypt_message_data(answer) is None
    # Any byte changed after the key id: both refuse it.
    spoiled = bytearray(answer)
    spoiled[8 + tamper % (len(answer) - 8)] ^= 0x01
    for state, body in ((stock, bytes(spoiled)), (ours, bytes(spoiled)), (ours, spoiled)):
        with pytest.raises(SecurityError):
            state.decrypt_message_data(body)


@pytest.mark.parametrize(
    ("obj", "req"),
    [
        (types.Pong(5, 6), 0),
        (types.MsgsAck([1, 2, 3]), 0),
        (types.NewSessionCreated(9, 10, 11), 0),
        (types.RpcError(420, "FLOOD_WAIT_3"), 77),
        (types.upload.FileCdnRedirect(2, b"t", b"k", b"iv", []), 77),
    ],
    ids=["pong", "msgs_ack", "new_session", "rpc_error", "cdn_redirect"],
)
def test_media_state_reads_other_messages_from_bytes_as_telethon(obj: Any, req: int) -> None:
    stock, ours = _states()
    answer = _answer(obj, (int(time.time()) << 32) | 1, stock, req=req)
    a, b = stock.decrypt_message_data(answer), ours.decrypt_message_data(answer)
    assert a.obj.to_dict() == b.obj.to_dict()
    body = getattr(b.obj, "body", None)
    assert body is None or isinstance(body, bytes)  # no view but for file parts


def test_media_state_ignores_what_is_too_old_or_too_new_as_telethon() -> None:
    for skew in (-400, +60):  # Telethon: older than 300 s or newer than 30 s
        stock, ours = _states()
        msg_id = ((int(time.time()) + skew) << 32) | 1
        answer = _answer(types.Pong(1, 2), msg_id, stock, req=0)
        assert stock.decrypt_message_data(answer) is None
        assert ours.decrypt_message_data(answer) is None
    stock, ours = _states()
    wrong = _answer(types.Pong(1, 2), (int(time.time()) << 32) | 1, stock, req=0)
    ours.id = stock.id + 1  # another session's message
    with pytest.raises(SecurityError, match="wrong session ID"):
        ours.decrypt_message_data(wrong)
