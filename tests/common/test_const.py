"""common/const.py: config.properties + TGC_* overrides → typed, validated settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import javaproperties
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import const
from common.const import (
    CLIENT_REQUIRED,
    DEFAULT_CONFIG,
    KEYS,
    KEYS_BY_NAME,
    SERVE_REQUIRED,
    Proxy,
    env_name,
    load_settings,
)
from common.errors import ConfigError

SECRETS = {
    "TGC_API_TOKEN": "a-token-of-32-characters-at-least",
    "TGC_API_AES_KEY": "0123456789abcdef" * 4,
    "TGC_TELEGRAM_API_ID": "12345",
    "TGC_TELEGRAM_API_HASH": "0123456789abcdef" * 2,
}

# (key, lowest, highest) of some integer keys: the ranges config.properties documents.
INT_RANGES = [
    ("server.port", 0, 65535),
    ("api.signature_window", 10, 3600),
    ("api.content_url_ttl", 10, 7 * 86400),
    ("telegram.flood_sleep_threshold", 0, 300),
    ("telegram.join_limit", 1, 1000),
    ("telegram.resolve_per_day", 1, 100_000),
    ("media.download_workers", 1, 64),
    ("rabbitmq.max_in_flight", 1, 10_000),
    ("log.backups", 0, 100),
]


def write(tmp_path: Path, props: dict[str, str], name: str = "config.properties") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(javaproperties.dumps(props, timestamp=False), encoding="utf-8")
    return path


# --- the shipped file --------------------------------------------------------------------


def test_shipped_config_documents_every_key_with_its_default_and_no_secret() -> None:
    lines = DEFAULT_CONFIG.read_text(encoding="utf-8").splitlines()
    props = javaproperties.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    assert set(props) == set(KEYS_BY_NAME)
    for key in KEYS:
        assert props[key.name] == key.default, key.name
        if key.secret:
            assert props[key.name] == "", f"{key.name} must ship empty"
        # A comment sits above each key (possibly above a group of related keys).
        i = next(n for n, line in enumerate(lines) if line.startswith(key.name + "="))
        j = i
        while j > 0 and lines[j - 1] and not lines[j - 1].startswith("#"):
            j -= 1
        assert j > 0 and lines[j - 1].startswith("#"), f"{key.name} has no comment"


def test_shipped_config_needs_only_the_secrets() -> None:
    s = load_settings(env=SECRETS)
    assert s.source == DEFAULT_CONFIG
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8080)
    assert s.api.cipher == "aes-256-gcm" and s.api.signature_window == 300
    assert s.api.content_url_ttl == 3600
    assert s.telegram.sessions_dir == DEFAULT_CONFIG.parent / "sessions"
    assert s.telegram.proxy is None and s.telegram.join_limit == 500
    assert s.data.dir == DEFAULT_CONFIG.parent / "data"
    assert s.media.part_size == 1024 * 1024 and s.media.spool_max_bytes == 10 * 1024**3
    assert (s.rabbitmq.exchange, s.rabbitmq.queue) == ("telegram", "telegram.events")
    assert s.log.level == "INFO" and s.log.file == DEFAULT_CONFIG.parent / "logs" / "tgc.log"


def test_a_file_names_only_what_it_changes(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {"server.port": "9001"}), env=SECRETS)
    assert s.server.port == 9001
    assert s.server.host == "127.0.0.1"
    assert s.api.token == SECRETS["TGC_API_TOKEN"]
    assert s.api.aes_key == SECRETS["TGC_API_AES_KEY"]
    assert s.telegram.api_id == 12345


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, {}), env=SECRETS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server = s.server  # type: ignore[misc]


def test_repr_hides_the_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, {"telegram.proxy": "socks5://bob:hunter2hunter2@127.0.0.1:1080"})
    text = repr(load_settings(path, env=SECRETS))
    for name in ("TGC_API_TOKEN", "TGC_API_AES_KEY", "TGC_TELEGRAM_API_HASH"):
        assert SECRETS[name] not in text
    assert "hunter2" not in text


# --- round trips and garbage (hypothesis) -------------------------------------------------


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200, deadline=None)
@given(data=st.data())
def test_any_int_in_range_round_trips_and_outside_fails(tmp_path: Path, data: st.DataObject) -> None:
    key, lo, hi = data.draw(st.sampled_from(INT_RANGES))
    value = data.draw(st.integers(lo, hi))
    s = load_settings(_cfg(tmp_path), env={**SECRETS, env_name(key): str(value)})
    section, name = key.split(".")
    assert getattr(getattr(s, section), name) == value

    bad = data.draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1)))
    with pytest.raises(ConfigError) as e:
        load_settings(_cfg(tmp_path), env={**SECRETS, env_name(key): str(bad)})
    assert e.value.key == key and "out of range" in str(e.value)


_PLAIN_INT = re.compile(r"^[+-]?[0-9]+$")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300, deadline=None)
@given(key=st.sampled_from([k for k, _, _ in INT_RANGES]), garbage=st.text(max_size=12))
def test_garbage_never_passes_as_an_int(tmp_path: Path, key: str, garbage: str) -> None:
    if _PLAIN_INT.match(garbage.strip()):
        return  # a real integer: covered above
    path = write(tmp_path, {key: garbage})
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=SECRETS)
    assert e.value.key == key
    assert e.value.file == str(path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100, deadline=None)
@given(n=st.integers(1, 1024), unit=st.sampled_from(["M", "m", "MB", "MiB", "G", "GiB"]))
def test_sizes_take_binary_suffixes(tmp_path: Path, n: int, unit: str) -> None:
    factor = 1024**2 if unit[0] in "Mm" else 1024**3
    s = load_settings(_cfg(tmp_path), env={**SECRETS, "TGC_MEDIA_SPOOL_MAX_BYTES": f"{n}{unit}"})
    assert s.media.spool_max_bytes == n * factor


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=300, deadline=None)
@given(n=st.integers(1, 2 * 1024 * 1024))
def test_part_size_obeys_telegrams_rule(tmp_path: Path, n: int) -> None:
    env = {**SECRETS, "TGC_MEDIA_PART_SIZE": str(n)}
    if n % 4096 == 0 and 1048576 % n == 0:
        assert load_settings(_cfg(tmp_path), env=env).media.part_size == n
    else:
        with pytest.raises(ConfigError) as e:
            load_settings(_cfg(tmp_path), env=env)
        assert e.value.key == "media.part_size"


@pytest.mark.parametrize("size", ["4K", "8K", "64K", "128K", "512K", "1M"])
def test_every_legal_part_size_is_accepted(tmp_path: Path, size: str) -> None:
    s = load_settings(_cfg(tmp_path), env={**SECRETS, "TGC_MEDIA_PART_SIZE": size})
    assert s.media.part_size == int(size[:-1]) * (1024 if size[-1] == "K" else 1024**2)


def _cfg(tmp_path: Path) -> Path:
    path = tmp_path / "empty.properties"
    if not path.exists():
        path.write_text("# nothing: every default\n")
    return path


# --- environment overrides ----------------------------------------------------------------


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"server.port": "9001", "log.level": "debug"})
    s = load_settings(path, env={**SECRETS, "TGC_SERVER_PORT": "9002", "PATH": "/bin"})
    assert s.server.port == 9002
    assert s.log.level == "DEBUG"


def test_env_names_are_one_to_one() -> None:
    assert len({env_name(k.name) for k in KEYS}) == len(KEYS)
    assert env_name("server.port") == "TGC_SERVER_PORT"
    assert env_name("media.part_size") == "TGC_MEDIA_PART_SIZE"


def test_bad_env_value_names_the_key_the_file_and_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    with pytest.raises(ConfigError) as e:
        load_settings(path, env={**SECRETS, "TGC_SERVER_PORT": "eighty"})
    assert e.value.key == "server.port"
    msg = str(e.value)
    assert "server.port" in msg and str(path) in msg and "TGC_SERVER_PORT" in msg


def test_unknown_env_variable_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, {}), env={**SECRETS, "TGC_SERVER_PROT": "1"})
    assert e.value.key == "TGC_SERVER_PROT"
    assert "TGC_SERVER_PORT" in str(e.value)


# --- unknown, duplicate, missing, malformed -------------------------------------------------


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = tmp_path / "c.properties"
    path.write_text("server.host=127.0.0.1\nserver.prot=8080\n")
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=SECRETS)
    assert e.value.key == "server.prot" and e.value.file == str(path)
    assert "did you mean 'server.port'" in str(e.value) and "line 2" in str(e.value)


def test_unknown_key_far_from_any_gets_no_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "c.properties"
    path.write_text("zzz=1\n")
    with pytest.raises(ConfigError, match=r"unknown key$"):
        load_settings(path, env=SECRETS)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.properties"
    path.write_text("server.port=1\n# again\nserver.port=2\n")
    with pytest.raises(ConfigError, match="line 3: set twice") as e:
        load_settings(path, env=SECRETS)
    assert e.value.key == "server.port"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path / "nope.properties", env=SECRETS)
    assert str(tmp_path / "nope.properties") in str(e.value)


@pytest.mark.parametrize("key", SERVE_REQUIRED)
def test_each_required_key_left_empty_stops_the_start(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, {})
    env = {k: v for k, v in SECRETS.items() if k != env_name(key)}
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=env)
    assert e.value.key == key and e.value.file == str(path)
    assert "required" in str(e.value) and key in str(e.value) and str(path) in str(e.value)


def test_the_client_needs_no_telegram_credentials(tmp_path: Path) -> None:
    env = {k: SECRETS[k] for k in ("TGC_API_TOKEN", "TGC_API_AES_KEY")}
    s = load_settings(write(tmp_path, {}), env=env, require=CLIENT_REQUIRED)
    assert s.telegram.api_id == 0 and s.telegram.api_hash == ""


MALFORMED = [
    ("server.port", "8080 # the port", "not an integer"),
    ("server.max_body_bytes", "lots", "not a size"),
    ("server.shutdown_timeout", "nan", "out of range"),
    ("server.shutdown_timeout", "-1", "out of range"),
    ("server.status_allow", "127.0.0.1/8, 300.1.1.1", "300.1.1.1"),
    ("api.token", "s3cr3tZ", "at least 16"),
    ("api.token", "has a space in the middle", "no whitespace"),
    ("api.aes_key", "zz" * 32, "64 hex"),
    ("api.aes_key", "ab" * 31, "64 hex"),
    ("api.cipher", "aes-128-ecb", "aes-256-gcm"),
    ("telegram.api_id", "-5", "out of range"),
    ("telegram.api_hash", "xyz", "32 hex"),
    ("telegram.proxy", "socks5://127.0.0.1", "needs a port"),
    ("telegram.proxy", "ftp://127.0.0.1:21", "socks5://"),
    ("telegram.proxy", "socks5://127.0.0.1:99999", "bad port"),
    ("telegram.lang_code", "english!", "not valid"),
    ("media.auto_download", "maybe", "not a boolean"),
    ("media.part_size", "3000", "out of range"),
    ("media.part_size", "12K", "4096"),
    ("storage.url", "ftp://files.example", "http://"),
    ("storage.url", "http://", "no host"),
    ("rabbitmq.url", "http://127.0.0.1", "amqp://"),
    ("rabbitmq.exchange", "", "characters long"),
    ("rabbitmq.queue", "has space", "not valid"),
    ("log.level", "LOUD", "DEBUG"),
    ("data.dir", "", "must name a directory"),
]


@pytest.mark.parametrize(("key", "value", "reason"), MALFORMED)
def test_malformed_value_names_key_and_file(tmp_path: Path, key: str, value: str, reason: str) -> None:
    path = write(tmp_path, {key: value})
    env = {k: v for k, v in SECRETS.items() if k != env_name(key)}
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=env)
    assert e.value.key == key and e.value.file == str(path)
    msg = str(e.value)
    assert key in msg and str(path) in msg and reason in msg
    if KEYS_BY_NAME[key].secret and len(value) > 4:
        assert value not in msg, "a secret must never be echoed"


def test_a_secret_is_masked_even_if_its_parser_quotes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quoting(value: str, _base: Path) -> str:
        if "bad" in value:
            raise ValueError(f"{value!r} is no good")
        return value

    quoted = {"api.token", "log.level"}  # a secret and a plain key
    keys = tuple(dataclasses.replace(k, parse=quoting) if k.name in quoted else k for k in KEYS)
    monkeypatch.setattr(const, "KEYS", keys)
    path = write(tmp_path, {})
    with pytest.raises(ConfigError) as e:
        load_settings(path, env={**SECRETS, "TGC_API_TOKEN": "bad-hunter2-hunter2"})
    assert "hunter2" not in str(e.value) and "'<hidden>' is no good" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_settings(path, env={**SECRETS, "TGC_LOG_LEVEL": "bad-LOUD"})
    assert "'bad-LOUD' is no good" in str(e.value)  # not a secret: shown as it is


@pytest.mark.parametrize("value", ["short", "a", "characters", "s3cr3tZ", "x" * 10_000_000])
def test_a_tokens_bad_length_is_told_by_the_length_alone(tmp_path: Path, value: str) -> None:
    # "too short" masked where the value was "short" read "too <hidden>": the value by its gap.
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, {}), env={**SECRETS, "TGC_API_TOKEN": value})
    assert e.value.key == "api.token"
    reason = str(e.value).split("api.token: ", 1)[1]
    assert reason == f"must be at least 16 and at most 1024 characters (got {len(value)})"


def test_a_token_of_the_longest_length_is_accepted(tmp_path: Path) -> None:
    token = "t" * 1024
    assert load_settings(write(tmp_path, {}), env={**SECRETS, "TGC_API_TOKEN": token}).api.token == token


@pytest.mark.parametrize("key", ["storage.url", "rabbitmq.url", "telegram.proxy"])
def test_a_huge_url_is_refused_by_its_length(tmp_path: Path, key: str) -> None:
    value = "http://" + "h" * 3000
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, {key: value}), env=SECRETS)
    assert e.value.key == key and "must be at most 2048 characters (got 3007)" in str(e.value)
    assert "hhhh" not in str(e.value)


def test_a_short_secret_is_not_masked_inside_the_words_of_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fussy(value: str, _base: Path) -> str:
        raise ValueError("must be printable, with no whitespace")

    keys = tuple(dataclasses.replace(k, parse=fussy) if k.name == "api.token" else k for k in KEYS)
    monkeypatch.setattr(const, "KEYS", keys)
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, {}), env={**SECRETS, "TGC_API_TOKEN": "a"})
    assert str(e.value).endswith("api.token: must be printable, with no whitespace")


@pytest.mark.parametrize("key", ["telegram.sessions_dir", "data.dir", "log.dir"])
def test_a_directory_under_a_file_names_the_key_and_the_file(tmp_path: Path, key: str) -> None:
    (tmp_path / "a-file").write_text("")
    path = write(tmp_path, {key: "a-file/below"})
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=SECRETS)
    assert e.value.key == key and e.value.file == str(path)
    assert f"{tmp_path / 'a-file' / 'below'} is under {tmp_path / 'a-file'}, which is a file" in (
        str(e.value)
    )
    itself = write(tmp_path, {key: "a-file"}, "itself.properties")
    with pytest.raises(ConfigError) as e:
        load_settings(itself, env=SECRETS)
    assert e.value.key == key and f"{tmp_path / 'a-file'} is a file, not a directory" in str(e.value)


def test_no_secret_shows_in_the_settings_repr(tmp_path: Path) -> None:
    given_values = {
        "storage.url": "https://user:pw-storage@files.lan/media",
        "rabbitmq.url": "amqp://user:pw-rabbit@mq.lan/",
        "telegram.proxy": "socks5://user:pw-proxy@proxy.lan:1080",
        "telegram.session_key": "7e" * 32,
    }
    s = load_settings(write(tmp_path, given_values), env=SECRETS)
    shown = repr(s)
    secret_keys = [k for k in KEYS if k.secret]
    assert {k.name for k in secret_keys} >= set(given_values)
    for key in secret_keys:
        value = given_values.get(key.name) or SECRETS[key.env]
        assert value not in shown, key.name
    assert "pw-" not in shown


# --- typed values -------------------------------------------------------------------------


def test_proxy_is_parsed_into_a_typed_value(tmp_path: Path) -> None:
    path = write(tmp_path, {"telegram.proxy": "socks5://bob:p%40ss@proxy.local:1080"})
    proxy = load_settings(path, env=SECRETS).telegram.proxy
    assert proxy == Proxy("socks5", "proxy.local", 1080, "bob", "p@ss")
    assert proxy.to_telethon() == {
        "proxy_type": "socks5",
        "addr": "proxy.local",
        "port": 1080,
        "username": "bob",
        "password": "p@ss",
        "rdns": True,
    }
    http = write(tmp_path, {"telegram.proxy": "HTTP://127.0.0.9:3128"}, "h.properties")
    assert load_settings(http, env=SECRETS).telegram.proxy == Proxy("http", "127.0.0.9", 3128)
    # socks5h (remote DNS, as curl spells it) is socks5: Telethon always resolves at the proxy.
    socks5h = write(tmp_path, {"telegram.proxy": "socks5h://u%3Ax@h.lan:9050"}, "s.properties")
    assert load_settings(socks5h, env=SECRETS).telegram.proxy == Proxy("socks5", "h.lan", 9050, "u:x")


def test_status_allow_matches_addresses(tmp_path: Path) -> None:
    # Addresses inside 127.0.0.0/8 only: the project's rule for tests, even for strings.
    s = load_settings(write(tmp_path, {"server.status_allow": "127.1.0.0/16 ::1"}), env=SECRETS)
    assert s.server.status_allowed("127.1.2.3")
    assert s.server.status_allowed("::ffff:127.1.2.3")
    assert s.server.status_allowed("::1")
    assert not s.server.status_allowed("127.0.0.1")
    assert not s.server.status_allowed("not an address")
    empty = load_settings(write(tmp_path, {"server.status_allow": ""}, "e.p"), env=SECRETS)
    assert not empty.server.status_allowed("127.0.0.1")


def test_urls_and_secrets_are_normalised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "storage.url": "http://127.0.0.1:8081/media/",
            "rabbitmq.url": "amqp://guest:guest@127.0.0.1:5672/",
            "api.aes_key": "AB" * 32,
            "api.cipher": "AES-256-CBC",
        },
    )
    s = load_settings(path, env={k: v for k, v in SECRETS.items() if k != "TGC_API_AES_KEY"})
    assert s.storage.url == "http://127.0.0.1:8081/media"
    assert s.rabbitmq.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.api.aes_key == "ab" * 32
    assert s.api.cipher == "aes-256-cbc"


# --- paths ----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        tmp_path / "etc",
        {"data.dir": "state", "telegram.sessions_dir": "../accounts", "log.dir": "/var/log/tgc"},
    )
    s = load_settings(path, env=SECRETS)
    assert s.data.dir == tmp_path / "etc" / "state"
    assert s.run_dir == tmp_path / "etc" / "state" / "run"
    assert s.telegram.sessions_dir == tmp_path / "accounts"
    assert s.log.dir == Path("/var/log/tgc")
    # An override by the environment resolves against the same directory.
    s = load_settings(path, env={**SECRETS, "TGC_DATA_DIR": "other"})
    assert s.data.dir == tmp_path / "etc" / "other"
    # And a relative --config path is taken from the current directory.
    rel = load_settings(Path("..") / "etc" / "config.properties", env=SECRETS)
    assert rel.source == path.resolve()
