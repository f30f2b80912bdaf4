"""The emulator as a process.

    python -m tests.fakedc serve --port PORT [--world FILE.json] [--dc2-port P] [--latency S]
                                 [--keys FILE] [--control-port N] [--ready-file FILE]
                                 [--download-budget MBPS]
    python -m tests.fakedc make-session --port PORT --out PATH [--user-id N] [--dc-id N]
                                        [--keys FILE]

`serve` runs DC 1 on 127.0.0.1:PORT and DC 2 on --dc2-port (a free port by default; clients
learn it from help.getConfig), answering from the world in FILE (JSON, see
tests/fakedc/world.py) or the demo world (tests/fakedc/demo_world.py), until SIGINT/SIGTERM.
--download-budget caps what each account fetches with upload.getFile, in MB (2^20 bytes)
per second (FLOOD_WAIT_X / FLOOD_PREMIUM_WAIT_X beyond it; see tests/fakedc/budget.py).

`make-session` writes a Telethon session file logged in as --user-id (default: the demo
world's first account) on DC --dc-id at 127.0.0.1:PORT, and registers its key with the
server through the keys file. The keys file is how the two processes meet: by default
`<tmpdir>/tgc-fakedc-<PORT>.keys`, JSON lines appended by make-session (and by the
server's DH handshakes), read by the server at start and again whenever a client shows an
auth key it does not know yet (see authkeys.py), so make-session may run before or while
the server runs, and the sessions stay valid across server restarts on the same port.
Delete the file to forget every key. While `serve` runs with the default keys file, DC 2's
default name is a symlink to it, so `make-session --port <DC 2's port> --dc-id 2` needs no
--keys.

`--control-port N` (0: a free port) also serves the loopback control channel of
tests/fakedc/control.py on 127.0.0.1: the fault and latency knobs, the pushes (post, edit,
delete, kick), new files and the counters, for a test or bench in another process.
`--ready-file FILE` is written (atomically) once everything listens: JSON
`{"dcs": {"1": port, "2": port}, "control": port or null, "keys": path, "pid": pid}`.

For the DH handshake from another process, the client calls
`tests.fakedc.handshake.add_emulator_key()` (the emulator's RSA key is fixed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from .cluster import FakeTelegram
from .control import Control, ControlServer
from .session import make_session

DEFAULT_HOST = "127.0.0.1"


def default_keys_file(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"tgc-fakedc-{port}.keys"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.fakedc", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the emulator (DC 1 and DC 2)")
    serve.add_argument("--port", type=int, required=True, help="DC 1's port on 127.0.0.1")
    serve.add_argument("--dc2-port", type=int, default=0, help="DC 2's port (default: free)")
    serve.add_argument("--world", type=Path, help="world JSON file (default: the demo world)")
    serve.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    serve.add_argument("--keys", type=Path, help="keys file (default: per port, in tmpdir)")
    serve.add_argument(
        "--download-budget", type=float, metavar="MBPS", help="getFile MB/s per account"
    )
    serve.add_argument("--log-level", default="INFO")
    serve.add_argument(
        "--control-port", type=int, default=None, help="serve the control channel (0: free)"
    )
    serve.add_argument("--ready-file", type=Path, help="JSON of the ports, written when serving")

    make = sub.add_parser("make-session", help="write a logged-in Telethon session file")
    make.add_argument("--port", type=int, required=True, help="the port of the DC")
    make.add_argument("--out", type=Path, required=True, help="session file to write")
    make.add_argument("--user-id", type=int, default=None, help="account (default: demo's first)")
    make.add_argument("--dc-id", type=int, default=1)
    make.add_argument("--host", default=DEFAULT_HOST)
    make.add_argument("--keys", type=Path, help="keys file (default: per port, in tmpdir)")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    from .demo_world import demo_world
    from .rpc import TelegramRpc
    from .world import World

    world = World.from_json_file(args.world) if args.world else demo_world()
    if args.download_budget is not None:
        world.download_budget = args.download_budget * (1 << 20)
    rpc = TelegramRpc(world)
    rpc.latency["*"] = args.latency
    keys = args.keys or default_keys_file(args.port)
    tg = FakeTelegram(rpc, dc_ids=(1, 2), ports={1: args.port, 2: args.dc2_port}, keys_file=keys)
    rpc.set_pusher(tg.pusher)
    await tg.start()
    # `make-session --port <DC 2's port> --dc-id 2` finds the same keys file by default.
    alias = _alias_keys_file(keys, tg.dc_options[-1].port) if not args.keys else None
    control: ControlServer | None = None
    if args.control_port is not None:
        control = ControlServer(Control(rpc, tg), args.control_port)
        await control.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    dcs = ", ".join(f"DC {o.id} {o.host}:{o.port}" for o in tg.dc_options)
    listening = f"; control 127.0.0.1:{control.port}" if control is not None else ""
    print(f"fakedc: serving {dcs}; keys file {keys}{listening}", flush=True)
    if args.ready_file is not None:
        _write_ready(args.ready_file, tg, control, keys)
    try:
        await stop.wait()
    finally:
        if control is not None:
            await control.stop()
        await tg.stop()
        if alias is not None:
            alias.unlink(missing_ok=True)
    return 0


def _write_ready(path: Path, tg: FakeTelegram, control: ControlServer | None, keys: Path) -> None:
    ready = {
        "dcs": {str(o.id): o.port for o in tg.dc_options},
        "control": control.port if control is not None else None,
        "keys": str(keys),
        "pid": os.getpid(),
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(ready), encoding="utf-8")
    partial.replace(path)  # the other process never reads half a file


def _alias_keys_file(keys: Path, port: int) -> Path | None:
    """A symlink to `keys` under the default name of `port`'s keys file, unless one is there."""
    alias = default_keys_file(port)
    if alias == keys or alias.exists() or alias.is_symlink():
        return None
    keys.touch()
    alias.symlink_to(keys)
    return alias


def _make_session(args: argparse.Namespace) -> int:
    user_id = args.user_id
    if user_id is None:
        from .demo_world import ACCOUNT_A

        user_id = ACCOUNT_A
    keys = args.keys or default_keys_file(args.port)
    path = make_session(args.out, args.dc_id, args.host, args.port, user_id, keys_file=keys)
    print(path, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return asyncio.run(_serve(args))
    return _make_session(args)


if __name__ == "__main__":
    sys.exit(main())
