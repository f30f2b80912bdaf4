"""start.py: the CLI, the Server's lifecycle (graceful stop, forced stop, one server per
data.dir), login against the emulator's auth flow, accounts, call, and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

import start
from common.const import load_settings
from common.errors import ConfigError
from model.session import SessionLock
from service.apiclient import ApiClient
from start import PidFile, Server, list_accounts, login, main
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures.server_config import AES_KEY, ROOT, SUBPROCESS_ENV, TOKEN, write_config
from tests.fixtures.wait import wait_for


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    """The emulator answers from the demo world (accounts, channels, the auth flow)."""
    return TelegramRpc(dw.demo_world())


# --- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["login"],  # --phone is required
        ["call", "GET"],  # URI missing
        ["serve", "--bogus"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["call", "FETCH", "/api/v1/accounts"], "METHOD must be"),
        (["call", "PUT", "/api/v1/subscriptions"], "METHOD must be GET, POST or DELETE"),
        (["call", "patch", "/api/v1/subscriptions"], "METHOD must be GET, POST or DELETE"),
        (["call", "HEAD", "/api/v1/accounts"], "METHOD must be GET, POST or DELETE"),
        (["call", "GET", "api/v1/accounts"], "URI must start with /"),
        (["call", "POST", "/api/v1/subscriptions", "--body", "{nope"], "--body is not JSON"),
        (["call", "POST", "/api/v1/subscriptions", "--body", "[1]"], "JSON object"),
    ],
)
def test_call_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--config", str(write_config(tmp_path))]) == 2
    assert message in capsys.readouterr().err


def test_login_with_a_bad_phone_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["login", "--phone", "call-me", "--config", str(write_config(tmp_path))]) == 2
    assert "--phone must be" in capsys.readouterr().err


def test_config_error_names_key_and_file_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, server__prot="1")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "server.prot" in err and str(config) in err and "server.port" in err


def test_a_real_process_exits_2_on_a_missing_secret(tmp_path: Path) -> None:
    import subprocess

    config = write_config(tmp_path, api__token="")
    proc = subprocess.run(
        [sys.executable, "start.py", "--config", str(config)],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "api.token" in proc.stderr and str(config) in proc.stderr
    assert "Traceback" not in proc.stderr


SERVE_THEN_LIST_TESTS_MODULES = """
import os, signal, sys, threading
from pathlib import Path

import start

url_file = Path(sys.argv[2])
serving = threading.Event()


def stop_once_serving() -> None:
    while not url_file.exists():  # the server writes it once it serves
        serving.wait(0.02)
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=stop_once_serving, daemon=True).start()
code = start.main(["serve", "--no-console", "--config", sys.argv[1]])
print("tests modules:", sorted(m for m in sys.modules if m.split(".")[0] == "tests"))
sys.exit(code)
"""


def test_serve_never_imports_tests(tmp_path: Path) -> None:
    # Only `demo` may reach into tests/ (the emulator): a real server loads none of it.
    import subprocess

    config = write_config(tmp_path)
    url_file = tmp_path / "data" / "run" / "tgc.url"
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_THEN_LIST_TESTS_MODULES, str(config), str(url_file)],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tests modules: []" in proc.stdout, proc.stdout


def test_a_log_dir_that_cant_be_made_is_a_config_error_without_traceback(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "a-file").write_text("")
    config = write_config(tmp_path, log__dir="a-file/logs")
    proc = subprocess.run(
        [sys.executable, "start.py", "serve", "--config", str(config)],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert "log.dir" in proc.stderr and str(config) in proc.stderr
    assert "Traceback" not in proc.stderr


def run_serve(config: Path) -> tuple[int, str]:
    """`start.py serve` as a process until it exits by itself: (exit code, stderr)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "start.py", "serve", "--no-console", "--config", str(config)],
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("props", "key", "reason"),
    [
        # 192.0.2.1 (TEST-NET-1): nobody's address; bind() fails before any packet is sent.
        ({"server.host": "192.0.2.1"}, "server.host", "is not an address of this machine"),
        ({"telegram.sessions_dir": "a-file/sessions"}, "telegram.sessions_dir", "which is a file"),
        ({"data.dir": "a-file"}, "data.dir", "is a file, not a directory"),
    ],
)
def test_a_process_on_a_bad_place_exits_2_naming_the_key(
    tmp_path: Path, props: dict[str, str], key: str, reason: str
) -> None:
    (tmp_path / "a-file").write_text("")
    config = write_config(tmp_path, props)
    code, err = run_serve(config)
    assert code == 2, err
    assert f"{config}: {key}: " in err and reason in err
    assert "Traceback" not in err


def test_a_process_on_a_port_in_use_exits_2_naming_server_port(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config = write_config(tmp_path, server__port=str(port))
        code, err = run_serve(config)
    assert code == 2, err
    assert f"{config}: server.port: port {port} on 127.0.0.1 is already in use" in err
    assert "Traceback" not in err


async def test_a_busy_port_stops_the_start_before_any_account_connects(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        config = write_config(tmp_path, server__port=str(other.getsockname()[1]))
        server = Server(load_settings(config, env={}))
        with pytest.raises(ConfigError) as caught:
            await server.start()
        await server.stop()
    assert caught.value.key == "server.port"
    assert not hasattr(server, "pool")  # nothing past the bind was built
    assert not (tmp_path / "data" / "run" / "tgc.pid").exists()  # released


def test_a_data_dir_that_cant_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    pidfile = PidFile(tmp_path / "a-file" / "run" / "tgc.pid")
    with pytest.raises(ConfigError) as caught:
        pidfile.acquire(tmp_path / "config.properties")
    assert caught.value.key == "data.dir"
    assert caught.value.file == str(tmp_path / "config.properties")


# --- one server per data.dir ---------------------------------------------------------------


def test_pid_file_is_a_lock(tmp_path: Path) -> None:
    config = tmp_path / "config.properties"
    first, second = PidFile(tmp_path / "run" / "tgc.pid"), PidFile(tmp_path / "run" / "tgc.pid")
    first.acquire(config)
    assert (tmp_path / "run" / "tgc.pid").read_text() == f"{os.getpid()}\n"
    with pytest.raises(ConfigError) as e:
        second.acquire(config)
    assert e.value.key == "data.dir" and "already in use" in str(e.value)
    assert f"pid {os.getpid()}" in str(e.value)
    first.release()
    assert not (tmp_path / "run" / "tgc.pid").exists()
    second.acquire(config)  # free again
    second.release()


def test_a_stale_pid_file_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "run" / "tgc.pid"
    path.parent.mkdir()
    path.write_text("999999\n")  # left by a killed server: nobody holds its lock
    pid = PidFile(path)
    pid.acquire(tmp_path / "c")
    assert path.read_text() == f"{os.getpid()}\n"
    pid.release()


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),
        ("127.3.2.1", "http://127.3.2.1:8080"),
        ("fd00::5", "http://[fd00::5]:8080"),
        ("tgc.lan", "http://tgc.lan:8080"),
    ],
)
def test_the_servers_url_reaches_a_wildcard_host_on_loopback(
    tmp_path: Path, host: str, url: str
) -> None:
    settings = load_settings(write_config(tmp_path, server__host=host, server__port="8080"))
    assert start.local_url(host, 8080) == url
    server = Server(settings)
    server.port = 8080  # as bound at start
    assert server.url == url
    # `call` without a running server's URL file falls back to the same mapping.
    assert start._server_url(settings) == url
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "tgc.url").write_text("http://127.0.0.1:41234\n")
    assert start._server_url(settings) == "http://127.0.0.1:41234"


# --- the Server's lifecycle, in process ----------------------------------------------------


class Slow(tornado.web.RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(float(self.get_argument("s")))
        self.write("done")


def slow_app(server: Server) -> tornado.web.Application:
    return tornado.web.Application([("/slow", Slow)])


async def run_server(server: Server) -> asyncio.Task[int]:
    task = asyncio.create_task(server.serve())
    await wait_for(
        lambda: server.url_file.exists() or task.done(), within=10.0, what="the url file"
    )
    return task


async def test_sigterm_answers_every_accepted_request_then_exits_0(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path), env={})
    server = Server(settings, app_factory=slow_app)
    task = await run_server(server)
    assert server.pidfile.path.read_text() == f"{os.getpid()}\n"
    http = AsyncHTTPClient(force_instance=True, max_clients=20)
    try:
        requests = [
            asyncio.ensure_future(http.fetch(f"{server.url}/slow?s={0.2 + i / 50}"))
            for i in range(20)
        ]
        assert server.inflight is not None
        await wait_for(
            lambda: server.inflight is not None and server.inflight.active == 20,
            within=10.0,
            what="20 requests in flight",
        )
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
        stop_time = time.monotonic() - t0
        answers = await asyncio.gather(*requests)
        assert [a.body for a in answers] == [b"done"] * 20
        assert stop_time < 5, stop_time
        # Stopped: nothing listens, the pid and url files are gone.
        with pytest.raises(ConnectionRefusedError):
            await http.fetch(f"{server.url}/slow?s=0")
        assert not server.pidfile.path.exists() and not server.url_file.exists()
    finally:
        http.close()


async def test_in_flight_requests_are_bounded_by_shutdown_timeout(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, server__shutdown_timeout="0.5"), env={})
    server = Server(settings, app_factory=slow_app)
    task = await run_server(server)
    http = AsyncHTTPClient(force_instance=True)
    try:
        stuck = asyncio.ensure_future(http.fetch(f"{server.url}/slow?s=30", request_timeout=40))
        await wait_for(
            lambda: server.inflight is not None and server.inflight.active == 1,
            within=10.0,
            what="the request in flight",
        )
        t0 = time.monotonic()
        server.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        assert time.monotonic() - t0 < 3
        with pytest.raises((HTTPClientError, OSError)):
            await stuck
    finally:
        http.close()


async def test_a_second_server_on_the_same_data_dir_refuses(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path), env={})
    first = Server(settings, app_factory=slow_app)
    task = await run_server(first)
    try:
        second = Server(settings, app_factory=slow_app)
        with pytest.raises(ConfigError) as e:
            await second.start()
        await second.stop()
        assert e.value.key == "data.dir" and "already in use" in str(e.value)
        assert first.pidfile.path.exists(), "the refused server must not remove the holder's pid file"
    finally:
        first.request_stop()
        assert await task == 0


async def test_start_failing_half_way_stops_what_it_started(tmp_path: Path) -> None:
    def broken_app(server: Server) -> tornado.web.Application:
        raise RuntimeError("no app")

    settings = load_settings(write_config(tmp_path), env={})
    server = Server(settings, app_factory=broken_app)
    with pytest.raises(RuntimeError, match="no app"):
        await server.serve()
    # Everything was closed: the data dir can be taken again at once.
    again = Server(settings, app_factory=slow_app)
    task = await run_server(again)
    again.request_stop()
    assert await task == 0


# --- the real application against the emulator --------------------------------------------


@pytest.fixture
def accounts_config(
    tmp_path: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> Path:
    for user_id in (dw.ACCOUNT_A, dw.ACCOUNT_B):
        telegram_session(user_id, name=f"acc{user_id}")
    return write_config(tmp_path)


async def test_server_serves_the_api_and_drains_with_503(accounts_config: Path) -> None:
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    try:
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            health = await api.request("GET", "/healthz")
            assert health.status == 200
            answer = await api.request("GET", "/api/v1/accounts")
            assert answer.ok, answer
            names = sorted(a["name"] for a in answer.data["accounts"])
            assert names == [f"acc{dw.ACCOUNT_A}", f"acc{dw.ACCOUNT_B}"]
            peer = await api.request("GET", "/api/v1/peer?peer=@tgc_news")
            assert peer.ok and peer.data["title"] == "TGC News"
            # The CLI's own call() does the same through the url file.
            code, shown = await start.call(settings, "GET", "/api/v1/accounts")
            assert code == 0 and shown["ok"] is True
            code, shown = await start.call(settings, "GET", "/healthz")
            assert code == 0 and shown["status"] == 200 and isinstance(shown["body"], dict)
            # Draining: new API work is refused with the contract's 503.
            assert server.lifecycle is not None
            server.lifecycle.draining = True
            refused = await api.request("GET", "/api/v1/accounts")
            assert refused.status == 503 and refused.code == "SHUTTING_DOWN"
            server.lifecycle.draining = False
    finally:
        server.request_stop()
        assert await asyncio.wait_for(task, 30) == 0
    # The sessions were released: another process could take them now.
    for path in settings.telegram.sessions_dir.glob("*.session"):
        lock = SessionLock(path)
        lock.acquire()
        lock.release()


async def test_accounts_lists_sessions_and_skips_locked_ones(accounts_config: Path) -> None:
    settings = load_settings(accounts_config, env={})
    held = SessionLock(settings.telegram.sessions_dir / f"acc{dw.ACCOUNT_B}.session")
    held.acquire()
    try:
        rows = await list_accounts(settings)
    finally:
        held.release()
    by_name = {r["name"]: r for r in rows}
    assert by_name[f"acc{dw.ACCOUNT_A}"]["state"] == "ok"
    assert by_name[f"acc{dw.ACCOUNT_A}"]["user_id"] == dw.ACCOUNT_A
    assert by_name[f"acc{dw.ACCOUNT_B}"]["state"] == "in use by a running server"


async def test_call_reports_an_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    settings = load_settings(write_config(tmp_path), env={})
    for uri in ("/healthz", "/api/v1/accounts"):
        code, shown = await start.call(settings, "GET", uri, base_url=f"http://127.0.0.1:{port}")
        assert code == 1 and "can't reach the server" in shown["error"]


# --- login against the emulator's auth flow ------------------------------------------------


class Prompts:
    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self.said: list[str] = []

    def ask(self, prompt: str) -> str:
        self.asked.append(prompt)
        return self.answers.pop(0)

    def say(self, line: str) -> None:
        self.said.append(line)


async def do_login(
    tmp_path: Path, tg: FakeTelegram, phone: str, prompts: Prompts
) -> tuple[Path | None, Any]:
    settings = load_settings(write_config(tmp_path), env={})
    path = await login(
        settings,
        phone,
        ask=prompts.ask,
        ask_secret=prompts.ask,
        say=prompts.say,
        dc=(1, "127.0.0.1", tg.port(1)),
    )
    return path, settings


async def test_login_with_a_code(tmp_path: Path, fake_telegram: FakeTelegram) -> None:
    prompts = Prompts("12345")
    path, settings = await do_login(tmp_path, fake_telegram, "+1 555 000 1001", prompts)
    assert path == settings.telegram.sessions_dir / "15550001001.session"
    assert any("logged in as Ann Able" in line for line in prompts.said)
    rows = await list_accounts(settings)
    # The file is named by the number; the account's name (what the server shows) masks it.
    assert [(r["session"], r["name"], r["state"], r["user_id"]) for r in rows] == [
        ("15550001001", "+15*******01", "ok", dw.ACCOUNT_A)
    ]


async def test_login_with_2fa(tmp_path: Path, fake_telegram: FakeTelegram) -> None:
    prompts = Prompts("12345", "wrong password", dw.PASSWORD)
    path, settings = await do_login(tmp_path, fake_telegram, "+15550001004", prompts)
    assert path is not None
    assert prompts.asked == ["Code Telegram sent: ", "2FA password: ", "2FA password: "]
    assert "wrong password" in prompts.said
    rows = await list_accounts(settings)
    assert rows[0]["state"] == "ok" and rows[0]["user_id"] == dw.ACCOUNT_2FA


async def test_login_with_a_wrong_code_then_the_right_one(
    tmp_path: Path, fake_telegram: FakeTelegram
) -> None:
    prompts = Prompts("99999", "12345")
    path, _ = await do_login(tmp_path, fake_telegram, "+15550001002", prompts)
    assert path is not None and path.exists()
    assert prompts.said[0] == "wrong code"


async def test_login_gives_up_after_three_wrong_codes_and_leaves_nothing(
    tmp_path: Path, fake_telegram: FakeTelegram
) -> None:
    prompts = Prompts("1", "2", "3")
    path, settings = await do_login(tmp_path, fake_telegram, "+15550001003", prompts)
    assert path is None
    assert prompts.said[-1] == "3 wrong codes: giving up"
    assert list(settings.telegram.sessions_dir.glob("*.session*")) == [
        settings.telegram.sessions_dir / "15550001003.session.lock"  # an empty lock file only
    ]


# --- the whole process ----------------------------------------------------------------------


async def spawn(*args: str, launcher: bool = False) -> asyncio.subprocess.Process:
    """start.py ARGS as a child process; `launcher`: through tests/fakedc/launch.py, which
    makes the emulator's RSA key known first (the DH handshake with its DC 2 needs it)."""
    program = ["-m", "tests.fakedc.launch"] if launcher else ["start.py"]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *program,
        *args,
        cwd=ROOT,
        env=SUBPROCESS_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_file(path: Path, proc: asyncio.subprocess.Process, limit: float = 30) -> None:
    await wait_for(lambda: path.exists() or proc.returncode is not None, within=limit, what=str(path))
    assert proc.returncode is None, await proc.communicate()


@pytest.mark.slow
async def test_process_sigterm_exits_0_and_a_second_start_refuses(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    url_file = settings.run_dir / "tgc.url"
    proc = await spawn("serve", "--config", str(config), "--no-console")
    try:
        await wait_file(url_file, proc)
        url = url_file.read_text().strip()
        http = AsyncHTTPClient(force_instance=True)
        try:
            health = await http.fetch(f"{url}/healthz", raise_error=False)
            assert health.code == 503  # no account: not healthy, but serving
        finally:
            http.close()

        second = await spawn("serve", "--config", str(config))
        _, err = await asyncio.wait_for(second.communicate(), 30)
        assert second.returncode == 2
        assert b"already in use by another tgc server" in err and str(proc.pid).encode() in err

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert time.monotonic() - t0 < 10
        assert not url_file.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 1), (signal.SIGINT, 130)])
async def test_a_second_signal_forces_the_exit(
    accounts_config: Path, fake_telegram: FakeTelegram, sig: signal.Signals, code: int
) -> None:
    config = write_config(accounts_config.parent, server__shutdown_timeout="60")
    settings = load_settings(config, env={})
    rpc: TelegramRpc = fake_telegram.dispatcher
    proc = await spawn("serve", "--config", str(config), "--no-console")
    try:
        await wait_file(settings.run_dir / "tgc.url", proc)
        url = (settings.run_dir / "tgc.url").read_text().strip()
        # A request the emulator holds for a minute keeps the graceful stop waiting (a
        # body that never completes would not: the stop does not wait for those).
        rpc.slow("messages.getHistory", 60, times=1)
        async with ApiClient(url, TOKEN, AES_KEY) as api:
            held = asyncio.ensure_future(api.request("GET", "/api/v1/messages?peer=@tgc_news"))
            await wait_for(
                lambda: rpc.count("messages.getHistory") == 1, within=20, what="the call held"
            )
            proc.send_signal(sig)
            await wait_for(
                lambda: "waiting up to 60 s for 1 requests" in _log(settings.log.file),
                within=10,
                what="the drain logged",
            )
            assert proc.returncode is None  # still draining
            proc.send_signal(sig)
            assert await asyncio.wait_for(proc.wait(), 10) == code
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await held
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_sigkill_then_the_next_start_recovers(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = load_settings(config, env={})
    url_file = settings.run_dir / "tgc.url"
    proc = await spawn("serve", "--config", str(config), "--no-console")
    await wait_file(url_file, proc)
    proc.kill()
    await proc.wait()
    assert settings.run_dir.joinpath("tgc.pid").exists()  # stale, but not locked
    again = await spawn("serve", "--config", str(config), "--no-console")
    try:
        await wait_for(
            lambda: _pid_in(settings.run_dir / "tgc.pid") == again.pid,
            within=30,
            what="the new pid file",
        )
        await wait_file(url_file, again)
        again.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(again.wait(), 30) == 0
    finally:
        if again.returncode is None:
            again.kill()
            await again.wait()


@pytest.mark.slow
async def test_demo_prints_a_signed_request_and_its_answer() -> None:
    t0 = time.monotonic()
    proc = await spawn("demo", "--once")
    out, err = await asyncio.wait_for(proc.communicate(), 50)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "start.py call --config" in text and "GET '/api/v1/peer?peer=@tgc_news'" in text
    assert '"ok": true' in text and '"title": "TGC News"' in text
    assert time.monotonic() - t0 < 30


def _log(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return None



# --- under load, and with media in the queues ------------------------------------------------


async def test_sigterm_during_a_burst_answers_every_accepted_api_request(
    accounts_config: Path, fake_telegram: FakeTelegram
) -> None:
    rpc: TelegramRpc = fake_telegram.dispatcher
    rpc.set_latency({"messages.getHistory": 0.3, "*": 0.0})
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    async with ApiClient(server.url, TOKEN, AES_KEY, max_clients=40) as api:
        warm = await api.request("GET", "/api/v1/peer?peer=@tgc_news")  # resolve it once
        assert warm.ok, warm
        burst = [
            asyncio.ensure_future(
                api.request("GET", f"/api/v1/messages?peer=@tgc_news&limit=5&offset_id={140 - i}")
            )
            for i in range(40)
        ]
        await wait_for(
            lambda: server.inflight is not None and server.inflight.active == 40,
            within=10.0,
            what="40 requests in flight",
        )
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 30) == 0
        stop_time = time.monotonic() - t0
        answers = await asyncio.gather(*burst)
    assert [a.status for a in answers] == [200] * 40
    assert [a.data["messages"][0]["id"] for a in answers] == [139 - i for i in range(40)]
    # Bounded by the slowest answer (0.3 s of emulator latency), not by a timeout.
    assert stop_time < 5, stop_time


async def _media_keys(api: ApiClient, skip: tuple[int, ...] = ()) -> dict[str, int]:
    answer = await api.request("GET", "/api/v1/messages?peer=@tgc_media&limit=20")
    assert answer.ok, answer
    keys: dict[str, int] = {}
    for message in answer.data["messages"]:
        if message["id"] in skip:
            continue
        media = message.get("media")
        if media and media.get("key") and media.get("size"):
            keys[media["key"]] = media["size"]
    return keys


async def _states(api: ApiClient, keys: dict[str, int]) -> dict[str, str]:
    out = {}
    for key in keys:
        answer = await api.request("GET", f"/api/v1/media/{key}")
        out[key] = answer.data["state"] if answer.ok else f"error {answer.code}"
    return out


@pytest.mark.slow
async def test_a_stop_persists_the_media_queue_and_a_restart_resumes_it(
    accounts_config: Path, fake_telegram: FakeTelegram
) -> None:
    rpc: TelegramRpc = fake_telegram.dispatcher
    rpc.set_latency({"upload.getFile": 0.05, "*": 0.0})  # slow enough to stop mid-download
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    async with ApiClient(server.url, TOKEN, AES_KEY) as api:
        keys = await _media_keys(api)
        assert len(keys) >= 8, keys
        assert dw.VIDEO_SIZE in keys.values()
        states = await _states(api, keys)
    server.request_stop()
    assert await asyncio.wait_for(task, 30) == 0
    unfinished = [k for k, s in states.items() if s != "stored"]
    assert unfinished, "everything was stored before the stop: the test proves nothing"

    rpc.set_latency({"*": 0.0})
    again = Server(settings)
    task = await run_server(again)
    try:
        async with ApiClient(again.url, TOKEN, AES_KEY) as api:

            async def all_stored() -> bool:
                return set((await _states(api, keys)).values()) == {"stored"}

            await wait_for(all_stored, within=40, what="every file stored", step=0.1)
        media_dir = settings.data.dir / "media"
        for key, size in keys.items():
            stored = [p for p in media_dir.rglob(f"{key}*") if p.is_file()]
            assert len(stored) == 1 and stored[0].stat().st_size == size, (key, stored)
        # Each stored file left a media.stored event in the outbox (no broker configured).
        await wait_for(
            lambda: len(_stored_events(again)) >= len(keys),
            within=10.0,
            what="a media.stored event per file",
        )
        assert {e["media"]["key"] for e in _stored_events(again)} >= set(keys)
    finally:
        again.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def test_a_session_held_by_another_server_stops_the_start(
    accounts_config: Path, tmp_path: Path
) -> None:
    settings = load_settings(accounts_config, env={})
    # Another server (its own data.dir) on the same sessions directory.
    other = load_settings(accounts_config, env={"TGC_DATA_DIR": str(tmp_path / "other")})
    first = Server(settings)
    task = await run_server(first)
    try:
        second = Server(other)
        with pytest.raises(ConfigError) as e:
            await second.start()
        await second.stop()
        assert "in use by another process" in str(e.value)
        assert not (tmp_path / "other" / "run" / "tgc.pid").exists()
        # The first one still serves.
        async with ApiClient(first.url, TOKEN, AES_KEY) as api:
            assert (await api.request("GET", "/api/v1/accounts")).ok
    finally:
        first.request_stop()
        assert await task == 0


def _stored_events(server: Server) -> list[dict[str, Any]]:
    rows = server.outbox.read(0, 10_000)
    return [orjson.loads(r.body) for r in rows if r.routing_key == "media.stored"]


async def test_subscriptions_through_the_server(accounts_config: Path) -> None:
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    try:
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            joined = await api.request("POST", "/api/v1/subscriptions", {"peer": "@tgc_chat"})
            assert joined.ok, joined
            listed = await api.request("GET", "/api/v1/subscriptions")
            assert [s["peer"]["id"] for s in listed.data["subscriptions"]] == [-1000000000000 - dw.CHAT]
            again = await api.request("POST", "/api/v1/subscriptions", {"peer": "@tgc_chat"})
            assert again.status == 409 and again.code == "ALREADY_SUBSCRIBED"
            left = await api.request("DELETE", "/api/v1/subscriptions?peer=@tgc_chat")
            assert left.ok, left
        events = [orjson.loads(r.body)["event"] for r in server.outbox.read(0, 100)]
        assert events.count("subscription.changed") == 2
    finally:
        server.request_stop()
        assert await task == 0


async def test_status_page_and_metrics_are_wired(accounts_config: Path, tmp_path: Path) -> None:
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    http = AsyncHTTPClient(force_instance=True)
    try:
        logging.getLogger("tgc.test").warning("a warning for the status page")
        page = await http.fetch(f"{server.url}/status")
        html = page.body.decode()
        assert page.code == 200 and "<table" in html
        assert f"acc{dw.ACCOUNT_A}" in html and "a warning for the status page" in html
        metrics = (await http.fetch(f"{server.url}/metrics")).body.decode()
        assert 'tgc_accounts{state="ok"} 2.0' in metrics
        assert "tgc_outbox_events" in metrics and "tgc_http_requests_total" in metrics
        # The subscriber's collector, registered by the server: nothing subscribed yet.
        assert "\ntgc_subscriptions 0.0\n" in metrics
        assert "\ntgc_subscriber_events_total 0.0\n" in metrics
        assert "<td>subscribed chats</td>" in html and "<td>chats polled</td>" in html
    finally:
        http.close()
        server.request_stop()
        assert await task == 0
    assert server.error_log not in logging.getLogger().handlers

    # Only the addresses of server.status_allow may see it.
    closed = load_settings(accounts_config, env={"TGC_SERVER_STATUS_ALLOW": "127.9.0.0/16"})
    server = Server(closed)
    task = await run_server(server)
    http = AsyncHTTPClient(force_instance=True)
    try:
        page = await http.fetch(f"{server.url}/status", raise_error=False)
        assert page.code == 403
    finally:
        http.close()
        server.request_stop()
        assert await task == 0


async def test_media_max_file_bytes_reaches_the_processor(accounts_config: Path) -> None:
    settings = load_settings(accounts_config, env={"TGC_MEDIA_MAX_FILE_BYTES": "1M"})
    server = Server(settings)
    task = await run_server(server)
    video, voice = dw.MEDIA_IDS["video"], dw.MEDIA_IDS["voice"]
    try:
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            answer = await api.request("GET", f"/api/v1/messages?peer=@tgc_media&ids={video},{voice}")
            assert answer.ok, answer
            big, small = (m["media"] for m in answer.data["messages"])
            assert big["size"] == dw.VIDEO_SIZE and big["state"] == "failed"
            record = await api.request("GET", f"/api/v1/media/{big['key']}")
            assert record.data["error"] == (
                f"file is 20.0 MB ({dw.VIDEO_SIZE} bytes), over media.max_file_bytes=1M"
            )
            states = {small["key"]: small["size"]}

            async def small_stored() -> bool:
                return await _states(api, states) == {small["key"]: "stored"}

            await wait_for(small_stored, within=20, what="the small file stored", step=0.05)
    finally:
        server.request_stop()
        assert await task == 0


async def test_without_auto_download_answers_and_events_describe_files_only(
    accounts_config: Path, fake_telegram: FakeTelegram
) -> None:
    settings = load_settings(accounts_config, env={"TGC_MEDIA_AUTO_DOWNLOAD": "false"})
    server = Server(settings)
    task = await run_server(server)
    try:
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            answer = await api.request("GET", "/api/v1/messages?peer=@tgc_media&limit=20")
            assert answer.ok, answer
            found = [m["media"] for m in answer.data["messages"] if m.get("media")]
            assert len(found) >= 8
            assert all(d["state"] is None and d["url"] is None for d in found), found
            record = await api.request("GET", f"/api/v1/media/{found[0]['key']}")
            assert record.status == 404 and record.code == "NOT_FOUND"
            # The subscription flow too: a new post's event describes its photo, queues nothing.
            joined = await api.request("POST", "/api/v1/subscriptions", {"peer": "@tgc_chat"})
            assert joined.ok, joined
        post = await fake_telegram.dispatcher.post_message(
            dw.CHAT, "a picture", media={"photo": dw.PHOTO_DC1}
        )
        await wait_for(
            lambda: any(e.get("message", {}).get("id") == post.id for e in _events(server)),
            within=10.0,
            what="the post's event",
        )
        event = next(e for e in _events(server) if e.get("message", {}).get("id") == post.id)
        assert event["message"]["media"]["type"] == "photo"
        assert event["message"]["media"]["state"] is None
        assert server.processor.stats()["in_progress"] == 0
        assert server.processor.downloaded_bytes == 0
    finally:
        server.request_stop()
        assert await task == 0


def _events(server: Server) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in server.outbox.read(0, 10_000)]


async def test_telegram_settings_reach_the_accounts(accounts_config: Path) -> None:
    settings = load_settings(
        accounts_config,
        env={
            "TGC_TELEGRAM_DEVICE_MODEL": "tgc-box",
            "TGC_TELEGRAM_APP_VERSION": "9.9",
            "TGC_TELEGRAM_LANG_CODE": "pt-br",
            "TGC_TELEGRAM_FLOOD_SLEEP_THRESHOLD": "3",
        },
    )
    server = Server(settings)
    task = await run_server(server)
    try:
        client = server.pool.get(f"acc{dw.ACCOUNT_A}").client
        init = client._init_request  # what Telethon sends in initConnection
        assert (init.device_model, init.app_version, init.lang_code) == ("tgc-box", "9.9", "pt-br")
        assert client.flood_sleep_threshold == 3
    finally:
        server.request_stop()
        assert await task == 0


async def test_the_resolution_budget_is_kept_in_data_dir(accounts_config: Path) -> None:
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    try:
        async with ApiClient(server.url, TOKEN, AES_KEY) as api:
            assert (await api.request("GET", "/api/v1/peer?peer=@tgc_news")).ok
    finally:
        server.request_stop()
        assert await task == 0
    from model.budgetstore import ResolveBudgetStore

    store = ResolveBudgetStore(settings.data.dir / "resolve_budget.sqlite3")
    try:  # the account that resolved it has its spend recorded (rows are keyed by stem)
        spent = [store.load(f"acc{u}") for u in (dw.ACCOUNT_A, dw.ACCOUNT_B)]
        assert [round(s.day) for s in spent if s is not None] == [1]
    finally:
        store.close()


@pytest.mark.slow
async def test_sigkill_mid_download_then_a_restart_stores_everything_once(
    accounts_config: Path, fake_telegram: FakeTelegram
) -> None:
    """The whole process, killed with SIGKILL while files download; the next start resumes.

    Started through tests/fakedc/launch.py, so files on DC 2 are in (the emulator's RSA key
    is a test key: a plain start.py could not handshake with its second DC). The same with
    nginx as the storage: tests/test_server_media_nginx.py."""
    rpc: TelegramRpc = fake_telegram.dispatcher
    rpc.set_latency({"upload.getFile": 0.05, "*": 0.0})
    settings = load_settings(accounts_config, env={})
    url_file = settings.run_dir / "tgc.url"
    proc = await spawn("serve", "--config", str(accounts_config), "--no-console", launcher=True)
    try:
        await wait_file(url_file, proc)
        async with ApiClient(url_file.read_text().strip(), TOKEN, AES_KEY) as api:
            keys = await _media_keys(api)
            assert len(keys) >= 10
            states: dict[str, str] = {}

            async def one_downloading() -> bool:
                states.update(await _states(api, keys))
                return "downloading" in states.values()

            await wait_for(one_downloading, within=20, what="a file downloading", step=0.02)
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        assert set(states.values()) != {"stored"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    rpc.set_latency({"*": 0.0})
    again = await spawn("serve", "--config", str(accounts_config), "--no-console", launcher=True)
    try:
        await wait_for(
            lambda: _pid_in(settings.run_dir / "tgc.pid") == again.pid,
            within=30,
            what="the new pid file",
        )
        await wait_file(url_file, again)
        async with ApiClient(url_file.read_text().strip(), TOKEN, AES_KEY) as api:

            async def all_stored() -> bool:
                return set((await _states(api, keys)).values()) == {"stored"}

            await wait_for(all_stored, within=40, what="every file stored", step=0.1)
        again.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(again.wait(), 30) == 0
    finally:
        if again.returncode is None:
            again.kill()
            await again.wait()
    media_dir = settings.data.dir / "media"
    for key, size in keys.items():
        stored = [p for p in media_dir.rglob(f"{key}*") if p.is_file()]
        assert len(stored) == 1 and stored[0].stat().st_size == size, (key, stored)
    left = {p.stem for p in (settings.data.dir / "spool").glob("*.part")}
    assert not left & set(keys), "spool files of stored items left behind"


async def test_the_outbox_persists_across_a_restart_and_drains_to_the_broker(
    accounts_config: Path, rabbit: Any
) -> None:
    # First life without a broker: the event stays in the outbox.
    settings = load_settings(accounts_config, env={})
    server = Server(settings)
    task = await run_server(server)
    async with ApiClient(server.url, TOKEN, AES_KEY) as api:
        joined = await api.request("POST", "/api/v1/subscriptions", {"peer": "@tgc_chat"})
        assert joined.ok, joined
    kept = [(r.routing_key, r.message_id) for r in server.outbox.read(0, 100)]
    assert [k for k, _ in kept] == ["subscription.changed"]
    server.request_stop()
    assert await task == 0

    # Second life with the broker: what the first one kept arrives, once confirmed.
    env = {
        "TGC_RABBITMQ_URL": rabbit.url,
        "TGC_RABBITMQ_EXCHANGE": rabbit.exchange,
        "TGC_RABBITMQ_QUEUE": rabbit.queue,
    }
    server = Server(load_settings(accounts_config, env=env))
    async with rabbit.consumer() as consumer:
        task = await run_server(server)
        try:
            await consumer.wait_for_ids([kept[0][1]])
            got = consumer.messages[0]
            assert got.routing_key == "subscription.changed" and got.delivery_mode == 2
            assert got.body["peer"]["id"] == -1000000000000 - dw.CHAT
            await wait_for(lambda: server.outbox.size == 0, within=10.0, what="the outbox drained")
        finally:
            server.request_stop()
            assert await task == 0
