"""`python start.py login --phone +NUMBER` end to end: the CLI as a child process, its
prompts read from its stdout and answered on its stdin, against the DC emulator's auth
flow (auth.sendCode, auth.signIn, account.getPassword, auth.checkPassword with SRP).

The child reaches the emulator through `--dc 127.0.0.1:PORT --dc-rsa-key PEM` (the DH
handshake needs the emulator's RSA key in Telethon's list); the session it writes is then
checked with `python start.py accounts`, which connects with that session alone.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fakedc import demo_world as dw
from tests.fakedc.cluster import FakeTelegram
from tests.fakedc.handshake import EMULATOR_RSA_PUBLIC_PEM
from tests.fakedc.rpc import TelegramRpc
from tests.fixtures.fakedc import FAKEDC_API_HASH, FAKEDC_API_ID

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TGC_")}
CODE_PROMPT = "Code Telegram sent: "
PASSWORD_PROMPT = "2FA password: "

pytestmark = pytest.mark.slow  # child processes: a few seconds each


@pytest.fixture
def fakedc_dispatcher() -> TelegramRpc:
    return TelegramRpc(dw.demo_world())  # the accounts, their phones, the 2FA password


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.properties"
    path.write_text(
        f"telegram.api_id={FAKEDC_API_ID}\n"
        f"telegram.api_hash={FAKEDC_API_HASH}\n"
        "telegram.timeout=10\n"
        "telegram.sessions_dir=sessions\n"
        "data.dir=data\n"
        "log.dir=logs\n"
    )
    return path


@pytest.fixture
def rsa_key(tmp_path: Path) -> Path:
    path = tmp_path / "emulator-rsa.pem"
    path.write_bytes(EMULATOR_RSA_PUBLIC_PEM)
    return path


class Cli:
    """One `start.py` child: `expect` reads its stdout up to a text, `answer` types a line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen = ""  # stdout not consumed by an expect yet
        self.transcript = ""  # all of stdout

    @classmethod
    async def start(cls, *args: str) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "start.py",
            *args,
            cwd=ROOT,
            env=ENV,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, text: str, within: float = 20.0) -> None:
        """Waits until `text` appeared on stdout after what earlier expects consumed."""
        assert self.proc.stdout is not None

        async def read() -> None:
            assert self.proc.stdout is not None
            while text not in self.seen:
                chunk = await self.proc.stdout.read(4096)
                if not chunk:
                    raise AssertionError(f"stdout closed before {text!r}; got {self.seen!r}")
                self.seen += chunk.decode()
                self.transcript += chunk.decode()

        try:
            await asyncio.wait_for(read(), within)
        except TimeoutError:
            raise AssertionError(f"no {text!r} in {within} s; got {self.seen!r}") from None
        self.seen = self.seen.split(text, 1)[1]

    async def answer(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def finish(self, within: float = 30.0) -> tuple[int, str, str]:
        """Closes stdin, waits for the exit; (exit code, all of stdout, stderr)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        out, err = await asyncio.wait_for(self.proc.communicate(), within)
        assert self.proc.returncode is not None
        return self.proc.returncode, self.transcript + out.decode(), err.decode()


async def login_cli(tg: FakeTelegram, config: Path, rsa_key: Path, phone: str) -> Cli:
    return await Cli.start(
        "login",
        "--config", str(config),
        "--phone", phone,
        "--dc", f"127.0.0.1:{tg.port(1)}",
        "--dc-rsa-key", str(rsa_key),
    )


async def accounts_cli(config: Path) -> str:
    cli = await Cli.start("accounts", "--config", str(config))
    code, out, err = await cli.finish()
    assert code == 0, err
    return out


def sessions(config: Path) -> list[str]:
    return sorted(p.name for p in (config.parent / "sessions").glob("*") if not p.name.endswith(".lock"))


async def test_login_with_the_code(fake_telegram: FakeTelegram, config: Path, rsa_key: Path) -> None:
    cli = await login_cli(fake_telegram, config, rsa_key, "+1 555 000 1001")
    await cli.expect(CODE_PROMPT)
    await cli.answer(fake_telegram.dispatcher.login_code)
    code, out, err = await cli.finish()
    assert code == 0, (out, err)
    assert "logged in as Ann Able (id 1001)" in out
    assert PASSWORD_PROMPT not in out
    assert sessions(config) == ["15550001001.session"]
    # The session stands on its own: a new process connects with it, authorised.
    listed = await accounts_cli(config)
    assert "15550001001" in listed and " ok " in listed and "1001" in listed


async def test_login_with_a_2fa_password(
    fake_telegram: FakeTelegram, config: Path, rsa_key: Path
) -> None:
    cli = await login_cli(fake_telegram, config, rsa_key, "+15550001004")
    await cli.expect(CODE_PROMPT)
    await cli.answer(fake_telegram.dispatcher.login_code)
    await cli.expect(PASSWORD_PROMPT)  # asked only once Telegram says SESSION_PASSWORD_NEEDED
    await cli.answer("not the password")
    await cli.expect("wrong password")
    await cli.expect(PASSWORD_PROMPT)
    await cli.answer(dw.PASSWORD)
    code, out, err = await cli.finish()
    assert code == 0, (out, err)
    assert "logged in as Dan (id 1004)" in out
    assert sessions(config) == ["15550001004.session"]
    assert "1004" in await accounts_cli(config)


async def test_a_wrong_code_is_said_and_the_right_one_still_works(
    fake_telegram: FakeTelegram, config: Path, rsa_key: Path
) -> None:
    cli = await login_cli(fake_telegram, config, rsa_key, "+15550001002")
    await cli.expect(CODE_PROMPT)
    await cli.answer("00000")
    await cli.expect("wrong code")
    await cli.expect(CODE_PROMPT)
    await cli.answer(fake_telegram.dispatcher.login_code)
    code, out, err = await cli.finish()
    assert code == 0, (out, err)
    assert "logged in as Ben Baker" in out


async def test_wrong_codes_fail_cleanly_and_leave_no_session(
    fake_telegram: FakeTelegram, config: Path, rsa_key: Path
) -> None:
    cli = await login_cli(fake_telegram, config, rsa_key, "+15550001003")
    for _ in range(3):
        await cli.expect(CODE_PROMPT)
        await cli.answer("11111")
    code, out, err = await cli.finish()
    assert code == 1
    assert out.count("wrong code\n") == 3 and "3 wrong codes: giving up" in out
    assert "Traceback" not in err
    assert sessions(config) == []  # nothing half-made
    assert "no session files" in await accounts_cli(config)


async def test_a_wrong_code_then_no_more_input_fails_and_leaves_no_session(
    fake_telegram: FakeTelegram, config: Path, rsa_key: Path
) -> None:
    cli = await login_cli(fake_telegram, config, rsa_key, "+15550001003")
    await cli.expect(CODE_PROMPT)
    await cli.answer("11111")
    await cli.expect("wrong code")
    code, _, err = await cli.finish()  # stdin closed at the second prompt
    assert code != 0
    assert "no input" in err and "Traceback" not in err
    assert sessions(config) == []


async def test_a_bad_dc_option_is_a_usage_error(config: Path, rsa_key: Path) -> None:
    for args in (["--dc", "localhost"], ["--dc", "127.0.0.1:99999"], ["--dc-rsa-key", str(rsa_key)]):
        cli = await Cli.start("login", "--config", str(config), "--phone", "+15550001001", *args)
        code, _, err = await cli.finish()
        assert code == 2, err
        assert "--dc" in err
    assert sessions(config) == []


async def test_a_number_telegram_does_not_know_fails_clearly(
    fake_telegram: FakeTelegram, config: Path, rsa_key: Path
) -> None:
    cli = await login_cli(fake_telegram, config, rsa_key, "+15559999999")
    code, out, err = await cli.finish()
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert "phone number is invalid" in err
    assert CODE_PROMPT not in out
    assert sessions(config) == []
