"""One emulated Telegram data centre: an asyncio TCP server on 127.0.0.1 speaking MTProto 2.0.

Per connection (rules Telethon relies on; see mtproto.py for the wire format):
- The transport is detected from the first bytes; packets whose auth_key_id is 0 are the
  plain DH handshake (handshake.py); any other auth_key_id must be a key of this DC in the
  cluster's registry, else the server sends transport error -404 (as Telegram does for a
  forgotten key, or a key of another DC) and closes the connection. A packet that fails
  decryption closes the connection.
- Salt: a message (or container) whose salt is not the key's current salt is answered
  `bad_server_salt` (error 48) naming the container/message id, and is not processed;
  Telethon resends it with the new salt. The client's first request always has salt 0.
- msg_id: a client msg_id not divisible by 4 is answered `bad_msg_notification` 18, one outside the
  time window (300 s old, 30 s ahead) 16/17; neither is processed.
- seq_no (core.telegram.org/mtproto/service_messages_about_messages): a message (a container,
  or one inside it) is answered `bad_msg_notification` 32 when the session already had a
  message with a lower msg_id and a higher seq_no, or an equal odd one; 33 when it had one
  with a higher msg_id and a lower seq_no, or an equal odd one; it is not processed. The
  last 512 accepted (msg_id, seq_no) pairs of a session are kept for this check. Telethon
  answers 32 by adding 64 to its sequence, 33 by taking 16 off, and resends.
- Session: the first valid message of a session_id not seen on this server gets
  `new_session_created` (first_msg_id, random unique_id, salt) before anything else. A
  session's state (msg_id, seq_no counters) lives until the last connection that used it
  closes.
- Containers (`msg_container`) are unpacked and each inner message handled on its own;
  `gzip_packed` is unpacked wherever it appears. Answers are never gzipped.
- Service messages: `msgs_ack` is accepted and ignored; `ping` and `ping_delay_disconnect`
  are answered `pong` at once (the latter also (re)arms a timer that closes the connection
  after disconnect_delay seconds without another ping_delay_disconnect); `get_future_salts`
  -> `future_salts` (the current salt, valid an hour); `destroy_session` ->
  `destroy_session_ok`/`destroy_session_none`; `msgs_state_req` -> `msgs_state_info`
  ("unknown" for every id); `destroy_auth_key` -> `destroy_auth_key_ok` and the key is
  forgotten; `msg_resend_req`, `msgs_all_info`, `http_wait` and the detailed-info
  messages are ignored. These answers are bare (not in rpc_result), as Telegram sends them.
- Every packet carrying content-related messages (odd seq_no) is acknowledged with one
  `msgs_ack` listing them (Telethon needs the ack for `auth.logOut`).
- Any other message is a request: it runs as its own asyncio task (so a slow answer never
  holds back another), its wrappers `invokeWithLayer`, `initConnection`,
  `invokeWithoutUpdates`, `invokeAfterMsg(s)` (which waits for the named requests still
  running on this connection) and `invokeWithTakeout` are unwrapped, and the inner request
  is handed to the dispatcher. The answer is `rpc_result` with the dispatcher's object, or
  with `rpc_error` for an `RpcError`; `DropConnection` aborts the socket without an answer;
  any other exception answers `rpc_error` 500 INTERNAL. A constructor Telethon's TL classes
  do not know answers `rpc_error` 400 INPUT_METHOD_INVALID. Answers go out in the order
  they complete.
- Updates (core.telegram.org/api/updates, "Subscribing to updates"; the schema's
  `invokeWithoutUpdates`: "Invoke a request without subscribing the used connection for
  updates (this is enabled by default for file queries)"): a session is subscribed once it
  sends a request that is not wrapped in `invokeWithoutUpdates` and is not a file query
  (`FILE_QUERIES`: upload.*, and auth.importAuthorization, with which a client authorises
  a connection to another DC for files). Pushed content (`push`) goes to every connection
  of the user whose last session is subscribed, with a msg_id that is 3 mod 4. So Telethon's
  main connection is subscribed by its first request (initConnection, unless
  `receive_updates=False` wraps it), and its senders for files never are.
  `push(..., force=True)` sends to every connection of the user, subscribed or not (a test
  of what a client does with an update it did not ask for).
- The `initConnection` fields of a connection (api_id, device_model, system_version,
  app_version, lang_code) reach the world as `CallContext.extra["init"]`.
- Every accepted connection leaves an `Accepted` record in `DcServer.accepted` (the last
  ACCEPTED_KEPT of them, closed ones included): its source address and port, once it sent
  an encrypted packet the user of its auth key, and its requests by method. Tests read it
  to see where an account's connections came from (through which proxy).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import os
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from telethon.errors import TypeNotFoundError
from telethon.extensions import BinaryReader
from telethon.tl import TLObject, functions, types
from telethon.tl.core import GzipPacked

from .api import CallContext, DcOption, Dispatcher, DropConnection, RpcError
from .authkeys import AuthKeyRegistry, KeyRecord
from .mtproto import (
    ANSWER,
    PUSH,
    Chunk,
    Codec,
    CryptoError,
    MsgIdSeq,
    TransportError,
    client_msg_time_ok,
    decrypt_client_message,
    detect_codec,
    encrypt_server_message,
    transport_error,
)

log = logging.getLogger(__name__)

_CONTAINER = 0x73F1F8DC
_GZIP = 0x3072CFA1
_RPC_RESULT = struct.Struct("<Iq")
_RPC_RESULT_ID = 0xF35C6D01
_VECTOR = 0x1CB5C415
_BOOL_TRUE = struct.pack("<I", 0x997275B5)
_BOOL_FALSE = struct.pack("<I", 0xBC799737)
_UPLOAD_FILE_ID = struct.pack("<I", types.upload.File.CONSTRUCTOR_ID)

_ACK = types.MsgsAck.CONSTRUCTOR_ID
_PING = functions.PingRequest.CONSTRUCTOR_ID
_PING_DELAY = functions.PingDelayDisconnectRequest.CONSTRUCTOR_ID
_FUTURE_SALTS = functions.GetFutureSaltsRequest.CONSTRUCTOR_ID
_DESTROY_SESSION = functions.DestroySessionRequest.CONSTRUCTOR_ID
_DESTROY_AUTH_KEY = functions.DestroyAuthKeyRequest.CONSTRUCTOR_ID
_STATE_REQ = types.MsgsStateReq.CONSTRUCTOR_ID
_IGNORED = frozenset(
    c.CONSTRUCTOR_ID
    for c in (
        types.MsgResendReq,
        types.MsgsAllInfo,
        types.MsgDetailedInfo,
        types.MsgNewDetailedInfo,
        types.HttpWait,
    )
)

PlainHandler = Callable[[bytes], bytes | None]
# Accepted records kept per DC: 1,000 accounts' connections several times over, a few
# hundred bytes each (bounded: a long soak opens connections all day).
ACCEPTED_KEPT = 20_000


@dataclass(slots=True)
class Accepted:
    """One connection as the DC saw it arrive: from where, and (once known) whose key."""

    dc_id: int
    source: str  # the peer's address as the DC's socket saw it (a proxy's outgoing one)
    port: int
    key: KeyRecord | None = None  # set by the first encrypted packet
    requests: Counter[str] = field(default_factory=Counter)  # by method, as the connection's

    @property
    def user_id(self) -> int | None:
        # Read through the key: a key a handshake made gets its user at importAuthorization.
        return self.key.user_id if self.key is not None else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dc": self.dc_id,
            "source": self.source,
            "port": self.port,
            "user_id": self.user_id,
            "requests": dict(self.requests),
        }


def method_name(request: Any) -> str:
    """'upload.getFile' for functions.upload.GetFileRequest, 'ping' for PingRequest."""
    cls = type(request)
    name = cls.__name__.removesuffix("Request")
    name = name[:1].lower() + name[1:]
    ns = cls.__module__.rsplit(".", 1)[-1]
    return name if ns == "functions" else f"{ns}.{name}"


def serialize_result(result: Any) -> list[bytes]:
    """The TL bytes of a dispatcher's answer, as parts to be joined once.

    TL objects serialize themselves; True/False become boolTrue/boolFalse; a list becomes a
    Vector of its items (ints as Vector<int>); `bytes` are taken as already serialized.
    upload.File is split so its (maybe 1 MB) payload is copied only once, into the plaintext.
    """
    if isinstance(result, types.upload.File):
        data = result.bytes
        n = len(data)
        head = bytes([n]) if n < 254 else b"\xfe" + n.to_bytes(3, "little")
        pad = -(len(head) + n) % 4
        return [
            _UPLOAD_FILE_ID,
            result.type._bytes(),
            struct.pack("<i", result.mtime),
            head,
            data,
            b"\0" * pad,
        ]
    if isinstance(result, bytes | bytearray | memoryview):
        return [bytes(result)]
    if result is True:
        return [_BOOL_TRUE]
    if result is False:
        return [_BOOL_FALSE]
    if isinstance(result, list):
        parts = [struct.pack("<Ii", _VECTOR, len(result))]
        for item in result:
            if isinstance(item, int):
                parts.append(struct.pack("<i", item))
            else:
                parts.extend(serialize_result(item))
        return parts
    if isinstance(result, TLObject):
        return [result._bytes()]
    raise TypeError(f"cannot serialize a {type(result).__name__} answer")


_LARGE_WRITE = 64 * 1024  # bytes from which a part of a packet is written by itself
_SEEN_KEPT = 512  # client (msg_id, seq_no) pairs kept per session for the seq_no check


# Requests that don't subscribe a session to updates (see the module docstring).
FILE_QUERIES = frozenset(
    {
        "upload.getFile",
        "upload.saveFilePart",
        "upload.saveBigFilePart",
        "upload.getWebFile",
        "upload.getCdnFile",
        "upload.reuploadCdnFile",
        "upload.getCdnFileHashes",
        "upload.getFileHashes",
        "auth.importAuthorization",
    }
)


class _Session:
    __slots__ = ("ids", "seen_ids", "seen_seqs", "session_id", "subscribed")

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.subscribed = False  # a request not exempt from updates came in this session
        self.ids = MsgIdSeq()
        # The client's accepted messages, sorted by msg_id (seen_seqs in the same order).
        self.seen_ids: list[int] = []
        self.seen_seqs: list[int] = []

    def check_seq_no(self, msg_id: int, seq_no: int) -> int:
        """0 and remembers the message if its seq_no fits those of the session's other
        messages; else the bad_msg_notification code (32 too low, 33 too high). Accepted
        seq_nos never decrease with msg_id, so the two neighbours decide."""
        i = bisect.bisect_left(self.seen_ids, msg_id)
        if i < len(self.seen_ids) and self.seen_ids[i] == msg_id:
            return 0  # the same message again (a resend): nothing new to check
        if i > 0:
            lower = self.seen_seqs[i - 1]
            if lower > seq_no or (lower == seq_no and seq_no & 1):
                return 32
        if i < len(self.seen_ids):
            higher = self.seen_seqs[i]
            if higher < seq_no or (higher == seq_no and seq_no & 1):
                return 33
        self.seen_ids.insert(i, msg_id)
        self.seen_seqs.insert(i, seq_no)
        if len(self.seen_ids) > _SEEN_KEPT:
            del self.seen_ids[0], self.seen_seqs[0]
        return 0


class DcServer:
    """One DC. `registry` (whose keys each belong to one DC), `dispatcher` and `dc_options`
    are shared by the DCs of a cluster."""

    def __init__(
        self,
        dc_id: int,
        registry: AuthKeyRegistry,
        dispatcher: Dispatcher,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dc_options: Callable[[], list[DcOption]] = list,
        plain_handler: PlainHandler | None = None,
    ) -> None:
        self.dc_id = dc_id
        self.host = host
        self.port = port
        self.registry = registry
        self.dispatcher = dispatcher
        self.dc_options = dc_options
        self.plain_handler = plain_handler
        self.connections: set[ClientConnection] = set()
        # (auth_key_id, session_id) -> session state; a session ends with the last
        # connection that used it (Telethon starts a new session on each reconnect).
        self.sessions: dict[tuple[int, int], _Session] = {}
        # What the protocol layer did, by kind ("BadServerSalt", "container", "request",
        # "push", "connection", "-404", ...), so tests can assert on the paths taken.
        self.stats: Counter[str] = Counter()
        self.accepted: deque[Accepted] = deque(maxlen=ACCEPTED_KEPT)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, limit=1 << 21
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("DC %d listening on %s:%d", self.dc_id, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def drop_connections(self, user_id: int | None = None) -> int:
        """Aborts every connection (of one user, if given); returns how many."""
        victims = [
            c
            for c in self.connections
            if user_id is None or (c.key is not None and c.key.user_id == user_id)
        ]
        for conn in victims:
            conn.abort()
        return len(victims)

    def push(self, user_id: int, updates: Any, *, force: bool = False) -> int:
        """Sends `updates` to every subscribed connection of the user (every one of them
        with `force`); returns how many."""
        parts = serialize_result(updates)
        sent = 0
        for conn in list(self.connections):
            key = conn.key
            if key is None or key.user_id != user_id:
                continue
            if conn.push(parts, force=force):
                sent += 1
        return sent

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ClientConnection(self, reader, writer)
        self.connections.add(conn)
        self.stats["connection"] += 1
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            conn.close()


class ClientConnection:
    """One TCP connection from a client."""

    def __init__(
        self, dc: DcServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.dc = dc
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("", 0)
        self.accepted = Accepted(dc.dc_id, str(peer[0]), int(peer[1]))
        dc.accepted.append(self.accepted)
        self.codec: Codec | None = None
        self.key: KeyRecord | None = None
        self.session: _Session | None = None  # the last one seen, for pushes
        self._session_keys: set[tuple[int, int]] = set()
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.init: dict[str, Any] = {}  # the initConnection fields, once seen
        # What went through it, for tests: requests by method, updates pushed.
        self.requests: Counter[str] = self.accepted.requests
        self.pushes = 0
        self._closed = False
        self._ping_timer: asyncio.TimerHandle | None = None

    # -- reading ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.codec = await detect_codec(self.reader)
            while not self._closed:
                packet = await self.codec.read_packet(self.reader)
                if not self._on_packet(packet):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (TransportError, CryptoError) as e:
            log.warning("DC %d: closing a connection: %s", self.dc.dc_id, e)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("DC %d: closing a connection after an internal error", self.dc.dc_id)
        finally:
            with contextlib.suppress(Exception):
                await self.writer.drain()

    def _on_packet(self, packet: bytes) -> bool:
        """Handles one transport packet; False closes the connection."""
        if len(packet) < 8:
            raise TransportError("packet shorter than an auth_key_id")
        (key_id,) = struct.unpack_from("<q", packet, 0)
        if key_id == 0:
            return self._on_plain(packet)
        rec = self.dc.registry.get(key_id & 0xFFFFFFFFFFFFFFFF, self.dc.dc_id)
        if rec is None:
            log.info("DC %d: unknown auth key, answering -404", self.dc.dc_id)
            self.dc.stats["-404"] += 1
            self._write([transport_error(404)])
            return False
        dec = decrypt_client_message(rec.key, packet)
        self.key = self.accepted.key = rec
        self._on_message_packet(rec, dec.salt, dec.session_id, dec.msg_id, dec.seq_no, dec.body)
        return True

    def _on_plain(self, packet: bytes) -> bool:
        if self.dc.plain_handler is None:
            return False
        answer = self.dc.plain_handler(packet)
        if answer is None:
            return False
        self._write([answer])
        return True

    def _on_message_packet(
        self, rec: KeyRecord, salt: int, session_id: int, msg_id: int, seq_no: int, body: bytes
    ) -> None:
        session = self._session(rec, session_id, msg_id)
        if msg_id % 4 or not client_msg_time_ok(msg_id):
            code = 18 if msg_id % 4 else (16 if (msg_id >> 32) < time.time() else 17)
            self._bad_msg(msg_id, seq_no, code)
            return
        if salt != rec.salt:
            self._send(types.BadServerSalt(msg_id, seq_no, 48, rec.salt), content=False)
            return
        code = session.check_seq_no(msg_id, seq_no)
        if code:
            self._bad_msg(msg_id, seq_no, code)
            return
        acks: list[int] = []
        messages = _unpack(msg_id, seq_no, body, self.dc.stats)
        if len(messages) > 1:
            self.dc.stats["container"] += 1
        for m_id, m_seq, m_body in messages:
            if m_id != msg_id and (code := session.check_seq_no(m_id, m_seq)):
                self._bad_msg(m_id, m_seq, code)
                continue
            if m_seq & 1:
                acks.append(m_id)
            self._on_message(rec, session, m_id, m_body)
        if acks:
            self._send(types.MsgsAck(acks), content=False)

    def _bad_msg(self, msg_id: int, seq_no: int, code: int) -> None:
        self.dc.stats[f"bad_msg_{code}"] += 1
        self._send(types.BadMsgNotification(msg_id, seq_no, code), content=False)

    def _session(self, rec: KeyRecord, session_id: int, first_msg_id: int) -> _Session:
        key = (rec.key_id, session_id)
        session = self.dc.sessions.get(key)
        if session is None:
            session = self.dc.sessions[key] = _Session(session_id)
            self.session = session
            unique_id = int.from_bytes(os.urandom(8), "little", signed=True)
            self._send(types.NewSessionCreated(first_msg_id, unique_id, rec.salt), content=True)
        self._session_keys.add(key)
        self.session = session
        return session

    def _on_message(self, rec: KeyRecord, session: _Session, msg_id: int, body: bytes) -> None:
        (cid,) = struct.unpack_from("<I", body, 0)
        if cid == _ACK or cid in _IGNORED:
            return
        if cid in (_PING, _PING_DELAY):
            reader = BinaryReader(body)
            req = reader.tgread_object()
            self._send(types.Pong(msg_id, req.ping_id), content=True)
            if cid == _PING_DELAY:
                self._arm_ping_timer(req.disconnect_delay)
            return
        if cid == _FUTURE_SALTS:
            now = int(time.time())
            salt = types.FutureSalt(now - 60, now + 3600, rec.salt)  # plain ints in TL
            self._send(types.FutureSalts(msg_id, now, [salt]), content=True)
            return
        if cid == _DESTROY_SESSION:
            (sid,) = struct.unpack_from("<q", body, 4)
            known = self.dc.sessions.pop((rec.key_id, sid), None) is not None
            answer = types.DestroySessionOk(sid) if known else types.DestroySessionNone(sid)
            self._send(answer, content=True)
            return
        if cid == _STATE_REQ:
            req = BinaryReader(body).tgread_object()
            info = "\x01" * len(req.msg_ids)
            self._send(types.MsgsStateInfo(msg_id, info), content=True)
            return
        if cid == _DESTROY_AUTH_KEY:
            self.dc.registry.forget(rec.key_id)
            self._send(types.DestroyAuthKeyOk(), content=True)
            return
        self.dc.stats["request"] += 1
        task = asyncio.get_running_loop().create_task(self._call(rec, session, msg_id, body))
        self.inflight[msg_id] = task
        task.add_done_callback(functools.partial(self._forget_request, msg_id))

    def _forget_request(self, msg_id: int, _task: asyncio.Task[None]) -> None:
        self.inflight.pop(msg_id, None)

    # -- requests -----------------------------------------------------------------------

    async def _call(self, rec: KeyRecord, session: _Session, msg_id: int, body: bytes) -> None:
        try:
            request = BinaryReader(body).tgread_object()
        except TypeNotFoundError as e:
            self._answer_error(session, msg_id, 400, "INPUT_METHOD_INVALID")
            log.info("unknown constructor %08x", e.invalid_constructor_id)
            return
        request, no_updates = await self._unwrap(request)
        method = method_name(request)
        self.requests[method] += 1
        if not no_updates and method not in FILE_QUERIES:
            session.subscribed = True
        ctx = CallContext(
            dc_id=self.dc.dc_id,
            auth_key_id=rec.key_id,
            session_id=session.session_id,
            user_id=rec.user_id,
            dc_options=self.dc.dc_options(),
            bind_user=functools.partial(self.dc.registry.bind, rec.key_id),
            method=method,
            extra={"init": self.init},
        )
        try:
            result = await self.dc.dispatcher(ctx, request)
            parts = serialize_result(result)
        except RpcError as e:
            self._answer_error(session, msg_id, e.code, e.message)
            return
        except DropConnection:
            log.info("DC %d: dropping a connection on %s", self.dc.dc_id, method)
            self.abort()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("DC %d: dispatcher failed on %s", self.dc.dc_id, method)
            self._answer_error(session, msg_id, 500, "INTERNAL")
            return
        self._send_in(session, [_RPC_RESULT.pack(_RPC_RESULT_ID, msg_id), *parts], True, ANSWER)
        await self._drain()

    async def _unwrap(self, request: Any) -> tuple[Any, bool]:
        no_updates = False
        while True:
            if isinstance(request, functions.InitConnectionRequest):
                self.init = {
                    "api_id": request.api_id,
                    "device_model": request.device_model,
                    "system_version": request.system_version,
                    "app_version": request.app_version,
                    "lang_code": request.lang_code,
                }
                request = request.query
            elif isinstance(
                request, functions.InvokeWithLayerRequest | functions.InvokeWithTakeoutRequest
            ):
                request = request.query
            elif isinstance(request, functions.InvokeWithoutUpdatesRequest):
                no_updates = True
                request = request.query
            elif isinstance(request, functions.InvokeAfterMsgRequest):
                self.dc.stats["invokeAfterMsg"] += 1
                await self._wait_for([request.msg_id])
                request = request.query
            elif isinstance(request, functions.InvokeAfterMsgsRequest):
                await self._wait_for(request.msg_ids)
                request = request.query
            else:
                return request, no_updates

    async def _wait_for(self, msg_ids: list[int]) -> None:
        tasks = [t for m in msg_ids if (t := self.inflight.get(m)) is not None]
        if tasks:
            await asyncio.wait(tasks)

    def _answer_error(self, session: _Session, msg_id: int, code: int, message: str) -> None:
        self.dc.stats["rpc_error"] += 1
        err = types.RpcError(code, message)._bytes()
        self._send_in(session, [_RPC_RESULT.pack(_RPC_RESULT_ID, msg_id), err], True, ANSWER)

    # -- writing ------------------------------------------------------------------------

    def push(self, parts: list[bytes], *, force: bool = False) -> bool:
        session = self.session
        if self._closed or session is None or not (session.subscribed or force):
            return False
        self.dc.stats["push"] += 1
        self.pushes += 1
        return self._send_in(session, parts, True, PUSH)

    def _send(self, obj: TLObject, *, content: bool) -> None:
        assert self.session is not None
        self.dc.stats[type(obj).__name__] += 1
        self._send_in(self.session, [obj._bytes()], content, ANSWER)

    def _send_in(self, session: _Session, parts: list[bytes], content: bool, residue: int) -> bool:
        """Encrypts and writes one message now (so msg_ids reach the wire in order)."""
        if self._closed or self.key is None:
            return False
        payload = encrypt_server_message(
            self.key.key,
            self.key.key_id,
            self.key.salt,
            session.session_id,
            session.ids.next_msg_id(residue),
            session.ids.next_seq_no(content),
            parts,
        )
        return self._write(payload)

    def _write(self, payload: list[Chunk]) -> bool:
        if self._closed or self.codec is None:
            return False
        # A large part (a file part's ciphertext) is written on its own: Python 3.11's
        # writelines joins every part first, one more copy of a 1 MB answer. Small ones go
        # joined, one write.
        small: list[Chunk] = []
        for part in self.codec.frame(payload):
            if len(part) < _LARGE_WRITE:
                small.append(part)
                continue
            if small:
                self.writer.write(b"".join(small))
                small = []
            self.writer.write(part)
        if small:
            self.writer.write(b"".join(small))
        return True

    async def _drain(self) -> None:
        if self._closed:
            return
        try:
            await self.writer.drain()
        except ConnectionError:
            self.abort()

    def _arm_ping_timer(self, delay: int) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        self._ping_timer = asyncio.get_running_loop().call_later(delay, self.abort)

    # -- closing ------------------------------------------------------------------------

    def abort(self) -> None:
        """Closes the socket at once (RST), as a dropped connection would."""
        if not self._closed:
            self.writer.transport.abort()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        for task in list(self.inflight.values()):
            task.cancel()
        still_used = set().union(*(c._session_keys for c in self.dc.connections if c is not self))
        for key in self._session_keys - still_used:
            self.dc.sessions.pop(key, None)
        self.writer.close()


def _unpack(
    msg_id: int, seq_no: int, body: bytes, stats: Counter[str]
) -> list[tuple[int, int, bytes]]:
    """Flattens containers and gzip_packed into (msg_id, seq_no, body) messages."""
    (cid,) = struct.unpack_from("<I", body, 0)
    if cid == _GZIP:
        stats["gzip_packed"] += 1
        return _unpack(msg_id, seq_no, GzipPacked.read(BinaryReader(body)), stats)
    if cid != _CONTAINER:
        return [(msg_id, seq_no, body)]
    out: list[tuple[int, int, bytes]] = []
    (count,) = struct.unpack_from("<i", body, 4)
    pos = 8
    for _ in range(count):
        m_id, m_seq, length = struct.unpack_from("<qii", body, pos)
        pos += 16
        out.extend(_unpack(m_id, m_seq, body[pos : pos + length], stats))
        pos += length
    return out


def tune_malloc() -> bool:
    """Makes glibc keep freed big blocks instead of mmap/munmap-ing each 1 MB answer (see
    MEASURED.md: that costs ~5x the system time). Process-wide; returns False off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 64 << 20) and libc.mallopt(m_trim_threshold, 256 << 20)
    return bool(ok)


__all__ = [
    "FILE_QUERIES",
    "ClientConnection",
    "DcServer",
    "method_name",
    "serialize_result",
    "tune_malloc",
]
