"""startup.sh start|status|stop|restart|reload|logs on a temporary copy of the project's config, and
startup.sh demo --once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from service.cryptor import Signer
from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "TGC_API_TOKEN": "startup-sh-token-0123456789",
    "TGC_API_AES_KEY": "3c" * 32,
    "TGC_TELEGRAM_API_ID": "12345",
    "TGC_TELEGRAM_API_HASH": "0123456789abcdef" * 2,
}

pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """The shipped config.properties, copied: its relative data/log/sessions dirs land in
    tmp_path; only the port changes (0: a free one)."""
    path = tmp_path / "config.properties"
    text = (ROOT / "config.properties").read_text()
    text, n = re.subn(r"(?m)^server\.port=.*$", "server.port=0", text)
    assert n == 1
    path.write_text(text)
    yield path
    # Never leave a server behind, whatever the test did.
    sh("stop", "--config", str(path), extra_env={"STOP_WAIT": "5"})


def sh(
    *args: str,
    extra_env: dict[str, str] | None = None,
    timeout: float = 50,
    secrets: bool = True,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGC_")}
    if secrets:
        env.update(SECRETS)
    env.update(extra_env or {})
    return subprocess.run(
        [str(ROOT / "startup.sh"), *args],
        cwd="/",  # startup.sh finds its own directory
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_start_status_stop(config: Path, tmp_path: Path) -> None:
    started = sh("start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    m = re.search(r"tgc started \(pid (\d+)\) on (http://127\.0\.0\.1:\d+)", started.stdout)
    assert m, started.stdout
    pid, url = int(m.group(1)), m.group(2)
    assert (tmp_path / "data" / "run" / "tgc.pid").read_text().strip() == str(pid)
    assert (tmp_path / "logs" / "tgc.log").exists()

    twice = sh("start", "--config", str(config))
    assert twice.returncode == 1
    assert f"already running (pid {pid})" in twice.stderr
    # start.py itself, past startup.sh's check, refuses too, and leaves no exit code in the
    # running server's run dir (stop would read it as that server's).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGC_")}
    direct = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "start.py", "serve", "--config", str(config)],
        cwd=ROOT,
        env={**env, **SECRETS},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert direct.returncode == 2 and "already in use by another tgc server" in direct.stderr
    assert not (tmp_path / "data" / "run" / "tgc.exit").exists()

    status = sh("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert f"tgc is running (pid {pid}) since " in status.stdout
    assert f"listening on {url}" in status.stdout
    # No session files in the copy: serving, but no usable account.
    assert "health: " in status.stdout and "(HTTP 503)" in status.stdout

    stopped = sh("stop", "--config", str(config))
    assert stopped.returncode == 0, stopped.stderr
    assert "tgc stopped gracefully (exit 0) in " in stopped.stdout
    assert _gone(pid)
    assert not (tmp_path / "data" / "run" / "tgc.pid").exists()
    # What stop read: the server's own exit code, written as its last act.
    assert (tmp_path / "data" / "run" / "tgc.exit").read_text() == f"{pid} 0\n"

    status = sh("status", "--config", str(config))
    assert status.returncode == 3 and "tgc is not running" in status.stdout
    again = sh("stop", "--config", str(config))
    assert again.returncode == 0 and "tgc is not running" in again.stdout


def test_stop_and_status_need_no_secrets_in_their_environment(config: Path) -> None:
    # The secrets may live only in the environment the server was started from
    # (config.properties suggests it); stopping it from another shell must still work.
    started = sh("start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    status = sh("status", "--config", str(config), secrets=False)
    assert status.returncode == 0, status.stderr
    assert "tgc is running" in status.stdout
    stopped = sh("stop", "--config", str(config), secrets=False)
    assert stopped.returncode == 0, stopped.stderr
    assert "tgc stopped gracefully (exit 0)" in stopped.stdout
    # start still refuses a config without them, before launching anything.
    refused = sh("start", "--config", str(config), secrets=False)
    assert refused.returncode == 2 and "api.token" in refused.stderr


def test_restart_gives_a_new_process(config: Path) -> None:
    first = sh("start", "--config", str(config))
    assert first.returncode == 0, first.stderr
    restarted = sh("restart", "--config", str(config))
    assert restarted.returncode == 0, restarted.stderr
    assert "tgc stopped gracefully (exit 0)" in restarted.stdout
    pids = re.findall(r"tgc started \(pid (\d+)\)", first.stdout + restarted.stdout)
    assert len(pids) == 2 and pids[0] != pids[1]
    assert _gone(int(pids[0])) and _alive(int(pids[1]))


async def test_reload_takes_a_session_added_while_running(
    config: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> None:
    idle = await asyncio.to_thread(sh, "reload", "--config", str(config))
    assert idle.returncode == 1 and "tgc is not running" in idle.stderr
    started = await asyncio.to_thread(sh, "start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    telegram_session(dw.ACCOUNT_A, name="acc")  # logged in meanwhile (no account at start)
    reloaded = await asyncio.to_thread(sh, "reload", "--config", str(config))
    assert reloaded.returncode == 0, reloaded.stderr
    assert "reloaded: 1 added, 0 removed, 0 reconnected, 0 refused" in reloaded.stdout
    status = await asyncio.to_thread(sh, "status", "--config", str(config))
    assert "(HTTP 200)" in status.stdout, status.stdout  # an account serves now
    again = await asyncio.to_thread(sh, "reload", "--config", str(config))
    assert "reloaded: 0 added, 0 removed, 0 reconnected, 0 refused" in again.stdout
    stopped = await asyncio.to_thread(sh, "stop", "--config", str(config))
    assert stopped.returncode == 0, stopped.stderr


@pytest.fixture
def busy_config(
    config: Path, telegram_session: Callable[..., Path], fake_telegram: FakeTelegram
) -> Path:
    """The config, with one account of the emulator (its session in the config's sessions
    folder) and a graceful stop allowed 600 s: see `_busy_request`."""
    telegram_session(dw.ACCOUNT_A, name="acc")
    config.write_text(
        config.read_text().replace("server.shutdown_timeout=30", "server.shutdown_timeout=600")
    )
    return config


async def _busy_request(url: str, rpc: TelegramRpc) -> socket.socket:
    """A signed request the emulator holds for 600 s: it keeps a graceful stop waiting (a
    body that never completes would not: the stop does not wait for those)."""
    rpc.slow("messages.getHistory", 600, times=1)
    uri = "/api/v1/messages?peer=@tgc_news&limit=1"
    headers = Signer(SECRETS["TGC_API_TOKEN"]).sign("GET", uri)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    held = socket.create_connection((host, int(port)))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    held.sendall(f"GET {uri} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
    await wait_for(lambda: rpc.count("messages.getHistory") == 1, within=20, what="the call held")
    return held


async def test_stop_forces_a_server_that_does_not_finish(
    busy_config: Path, fake_telegram: FakeTelegram
) -> None:
    config = busy_config
    started = await asyncio.to_thread(sh, "start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    url = re.search(r"on (http://\S+);", started.stdout).group(1)  # type: ignore[union-attr]
    with await _busy_request(url, fake_telegram.dispatcher):
        stopped = await asyncio.to_thread(
            sh, "stop", "--config", str(config), extra_env={"STOP_WAIT": "1"}
        )
    assert stopped.returncode == 1
    assert "had to force it (SIGKILL)" in stopped.stderr
    assert (await asyncio.to_thread(sh, "status", "--config", str(config))).returncode == 3


async def _stuck_stop(
    config: Path, tmp_path: Path, rpc: TelegramRpc
) -> tuple[int, socket.socket, asyncio.subprocess.Process]:
    """A server kept draining by a request in flight, and a `stop` waiting for it: (the
    server's pid, the request's connection, the running stop)."""
    started = await asyncio.to_thread(sh, "start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    m = re.search(r"tgc started \(pid (\d+)\) on (http://\S+);", started.stdout)
    assert m, started.stdout
    pid, url = int(m.group(1)), m.group(2)
    held = await _busy_request(url, rpc)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGC_")}
    stop = await asyncio.create_subprocess_exec(
        str(ROOT / "startup.sh"),
        "stop",
        "--config",
        str(config),
        cwd="/",
        env={**env, **SECRETS, "STOP_WAIT": "40"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    log = tmp_path / "logs" / "tgc.log"

    def draining() -> bool:
        assert stop.returncode is None, "stop ended early"
        return "waiting up to 600 s for 1 requests" in log.read_text()

    await wait_for(draining, within=20, what="the drain logged")
    return pid, held, stop


@pytest.mark.parametrize(
    ("sig", "said"),
    [
        # Someone forces the draining server with a second SIGTERM: it exits 1, and says so.
        (signal.SIGTERM, "with exit code 1 (not a clean stop)"),
        # Someone kills it: no exit code at all; stop must not call that graceful.
        (signal.SIGKILL, "left no exit code"),
    ],
)
async def test_stop_reports_the_exit_code_not_the_locks_release(
    busy_config: Path,
    tmp_path: Path,
    fake_telegram: FakeTelegram,
    sig: signal.Signals,
    said: str,
) -> None:
    pid, stuck, stop = await _stuck_stop(busy_config, tmp_path, fake_telegram.dispatcher)
    try:
        os.kill(pid, sig)
        raw_out, raw_err = await asyncio.wait_for(stop.communicate(), 30)
    finally:
        stuck.close()
        if stop.returncode is None:
            stop.kill()
            await stop.communicate()
    out, err = raw_out.decode(), raw_err.decode()
    assert stop.returncode == 1, (out, err)
    assert said in err, (out, err)
    assert "gracefully" not in out + err
    assert "had to force it" not in err  # stop itself sent one SIGTERM, nothing more
    assert await asyncio.to_thread(_gone, pid)


def test_demo_through_startup_sh_answers(tmp_path: Path) -> None:
    t0 = time.monotonic()
    demo = sh("demo", "--once", secrets=False, timeout=60)
    wall = time.monotonic() - t0
    assert demo.returncode == 0, demo.stderr[-2000:]
    out = demo.stdout
    assert "start.py call --config" in out and "GET '/api/v1/peer?peer=@tgc_news'" in out
    assert '"ok": true' in out and '"title": "TGC News"' in out
    m = re.search(r"its decrypted answer, in hand (\d+\.\d+) s after the demo started", out)
    assert m, out
    first_answer = float(m.group(1))
    # Measured inside the process, so below the wall time of the whole command.
    assert 0 < first_answer < wall, (first_answer, wall)
    print(f"demo: first answer {first_answer:.2f} s, `startup.sh demo --once` {wall:.2f} s")


async def test_the_demos_time_to_first_answer_includes_the_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import start

    async def slow_call(*args: object, **kwargs: object) -> tuple[int, dict[str, object]]:
        await asyncio.sleep(0.3)
        return 0, {"status": 200, "ok": True, "data": {}}

    monkeypatch.setattr(start, "call", slow_call)
    server = SimpleNamespace(
        url="http://127.0.0.1:1", settings=SimpleNamespace(log=SimpleNamespace(file="x.log"))
    )
    lines: list[str] = []
    t0 = time.monotonic()
    await start._demo_first_answer(server, tmp_path / "c.properties", t0, lines.append)  # type: ignore[arg-type]
    said = "\n".join(lines)
    m = re.search(r"in hand (\d+\.\d+) s after the demo started", said)
    assert m, said
    assert float(m.group(1)) >= 0.3, said


def test_logs_follows_the_log_file(config: Path, tmp_path: Path) -> None:
    started = sh("start", "--config", str(config))
    assert started.returncode == 0, started.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGC_")}
    seen: list[str] = []
    with subprocess.Popen(
        [str(ROOT / "startup.sh"), "logs", "--config", str(config)],
        cwd="/",
        env=env,  # no secrets needed, like stop and status
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as logs:
        assert logs.stdout is not None
        reader = threading.Thread(target=lambda: seen.extend(iter(logs.stdout.readline, "")))  # type: ignore[union-attr]
        reader.start()
        try:
            _until(lambda: any("serving on http://127.0.0.1:" in line for line in seen), logs)
            # Followed: what the server writes next shows up too.
            stopped = sh("stop", "--config", str(config))
            assert stopped.returncode == 0, stopped.stderr
            _until(lambda: any("stopped in" in line for line in seen), logs)
        finally:
            logs.terminate()  # the exec'd tail: ours
            logs.wait(10)
            reader.join(10)
    assert (tmp_path / "logs" / "tgc.log").exists()


def _until(condition: Callable[[], bool], proc: subprocess.Popen[str], limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_bad_config_stops_the_start_naming_key_and_file(config: Path) -> None:
    config.write_text(config.read_text() + "server.prot=8080\n")
    started = sh("start", "--config", str(config))
    assert started.returncode == 2
    assert "server.prot" in started.stderr and str(config) in started.stderr
    assert "did you mean 'server.port'" in started.stderr


def test_a_bad_sidecar_stops_the_start_naming_key_and_file(config: Path) -> None:
    sessions = config.parent / "sessions"
    sessions.mkdir()
    (sessions / "acc1.session").write_bytes(b"")
    (sessions / "acc1.properties").write_text("enabled=maybe\n")
    started = sh("start", "--config", str(config))
    assert started.returncode == 2, started.stderr
    assert f"{sessions / 'acc1.properties'}: enabled: not a boolean" in started.stderr
    # stop and status still work (nothing runs).
    assert sh("status", "--config", str(config)).returncode == 3


def test_a_server_that_dies_at_start_is_reported(config: Path, tmp_path: Path) -> None:
    # The port is taken: the process exits, and start says so with the end of its output.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(config.read_text().replace("server.port=0", f"server.port={port}"))
        started = sh("start", "--config", str(config))
    assert started.returncode == 1
    assert "tgc did not start" in started.stderr
    assert "Address already in use" in started.stderr


def test_usage(config: Path) -> None:
    bad = sh("frobnicate")
    assert bad.returncode == 2 and "usage:" in bad.stderr
    bad = sh("start", "--colour")
    assert bad.returncode == 2 and "unknown option --colour" in bad.stderr


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # An exited process nobody reaped yet is a zombie: gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _gone(pid: int, limit: float = 5.0) -> bool:
    """The server releases its pid file just before it exits: give it that moment."""
    deadline = time.monotonic() + limit
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
