"""A tiny dispatcher for the protocol-layer tests: just enough of Telegram for a stock
Telethon client to connect, log in and call a few things, independent of the real world
(tests/fakedc/world.py, rpc.py) so these tests exercise MTProto only."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

from telethon.tl import functions, types

from tests.fakedc.api import CallContext, DropConnection, RpcError

EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def config(ctx: CallContext) -> types.Config:
    now = dt.datetime.now(dt.UTC)
    return types.Config(
        date=now,
        expires=now + dt.timedelta(hours=1),
        test_mode=False,
        this_dc=ctx.dc_id,
        dc_options=[types.DcOption(o.id, o.host, o.port) for o in ctx.dc_options],
        dc_txt_domain_name="example.invalid",
        chat_size_max=200,
        megagroup_size_max=200000,
        forwarded_count_max=100,
        online_update_period_ms=210000,
        offline_blur_timeout_ms=5000,
        offline_idle_timeout_ms=30000,
        online_cloud_timeout_ms=300000,
        notify_cloud_delay_ms=30000,
        notify_default_delay_ms=1500,
        push_chat_period_ms=60000,
        push_chat_limit=2,
        edit_time_limit=172800,
        revoke_time_limit=2147483647,
        revoke_pm_time_limit=2147483647,
        rating_e_decay=2419200,
        stickers_recent_limit=200,
        channels_read_media_period=604800,
        call_receive_timeout_ms=20000,
        call_ring_timeout_ms=90000,
        call_connect_timeout_ms=30000,
        call_packet_timeout_ms=10000,
        me_url_prefix="https://t.me/",
        caption_length_max=1024,
        message_length_max=4096,
        webfile_dc_id=ctx.dc_id,
    )


def user(user_id: int, is_self: bool) -> types.User:
    return types.User(
        id=user_id,
        is_self=is_self,
        access_hash=user_id * 7919,
        first_name=f"User{user_id}",
        phone="15550000" if is_self else None,
    )


class MiniWorld:
    """Answers help.getConfig, users.getUsers, updates.getState/getDifference,
    auth.exportAuthorization/importAuthorization, upload.getFile (deterministic bytes),
    help.getNearestDc; knobs: `file_size`,: `delay` (seconds before each answer), `drop_on` (a method
    name that raises DropConnection once)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.delay = 0.0
        self.drop_on: str | None = None
        self.exports: dict[int, int] = {}  # export id -> user id
        self.contexts: list[CallContext] = []
        self.file_size = 300 * 1024 + 17  # the size of the one file upload.getFile serves

    async def __call__(self, ctx: CallContext, request: Any) -> Any:
        self.calls[ctx.method] += 1
        self.contexts.append(ctx)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.drop_on == ctx.method:
            self.drop_on = None
            raise DropConnection
        if isinstance(request, functions.help.GetConfigRequest):
            return config(ctx)
        if isinstance(request, functions.help.GetNearestDcRequest):
            return types.NearestDc("XX", ctx.dc_id, ctx.dc_id)
        if isinstance(request, functions.auth.ImportAuthorizationRequest):
            user_id = self.exports.pop(request.id, None)
            if user_id is None:
                raise RpcError(400, "AUTH_BYTES_INVALID")
            ctx.bind_user(user_id)
            return types.auth.Authorization(user=user(user_id, True))
        if ctx.user_id is None:
            raise RpcError(401, "AUTH_KEY_UNREGISTERED")
        if isinstance(request, functions.users.GetUsersRequest):
            return [
                user(ctx.user_id, True)
                if isinstance(u, types.InputUserSelf)
                else user(u.user_id, u.user_id == ctx.user_id)
                for u in request.id
            ]
        if isinstance(request, functions.updates.GetStateRequest):
            return types.updates.State(pts=1, qts=0, date=EPOCH, seq=0, unread_count=0)
        if isinstance(request, functions.updates.GetDifferenceRequest):
            return types.updates.DifferenceEmpty(date=EPOCH, seq=0)
        if isinstance(request, functions.auth.ExportAuthorizationRequest):
            export_id = len(self.exports) + 1
            self.exports[export_id] = ctx.user_id
            return types.auth.ExportedAuthorization(export_id, b"x" * 32)
        if isinstance(request, functions.upload.GetFileRequest):
            return types.upload.File(
                type=types.storage.FileUnknown(),
                mtime=0,
                bytes=file_bytes(
                    request.offset, max(0, min(request.limit, self.file_size - request.offset))
                ),
            )
        raise RpcError(400, "METHOD_NOT_IN_MINI_WORLD")


def file_bytes(offset: int, limit: int) -> bytes:
    """Deterministic content of the mini world's one file: byte i is (i * 7) % 251."""
    pattern = bytes((i * 7) % 251 for i in range(251))
    start = offset % 251
    reps = (start + limit) // 251 + 1
    return (pattern * reps)[start : start + limit]
