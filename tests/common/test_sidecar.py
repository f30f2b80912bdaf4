"""common/sidecar.py: an account's sessions/NAME.properties → AccountSettings."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.const import Proxy
from common.errors import ConfigError
from common.sidecar import AccountSettings, read_sidecar, read_sidecars, sidecar_path

GLOBAL = Proxy("http", "127.0.0.9", 3128)


def session(tmp_path: Path, stem: str = "15550000001", sidecar: str | None = None) -> Path:
    path = tmp_path / f"{stem}.session"
    path.write_bytes(b"")
    if sidecar is not None:
        sidecar_path(path).write_text(sidecar, encoding="utf-8")
    return path


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        read_sidecar(path)
    return caught.value


def test_the_sidecar_sits_beside_the_session_under_the_same_stem(tmp_path: Path) -> None:
    assert sidecar_path(tmp_path / "a.b.session") == tmp_path / "a.b.properties"
    assert sidecar_path("sessions/15550000001") == Path("sessions/15550000001.properties")


def test_no_sidecar_is_the_defaults(tmp_path: Path) -> None:
    settings = read_sidecar(session(tmp_path))
    assert settings == AccountSettings()
    assert settings.enabled and settings.label is None and settings.source is None
    assert settings.proxy_or(GLOBAL) == GLOBAL


def test_an_empty_sidecar_is_the_defaults_too(tmp_path: Path) -> None:
    path = session(tmp_path, sidecar="# nothing yet\n")
    assert read_sidecar(path) == AccountSettings(source=sidecar_path(path))


def test_every_key_parsed(tmp_path: Path) -> None:
    path = session(
        tmp_path,
        sidecar="proxy = socks5://u%40x:p%3Ass@127.0.0.2:1080\nenabled=false\nlabel=farm eu #7\n",
    )
    settings = read_sidecar(path)
    assert settings.proxy == Proxy("socks5", "127.0.0.2", 1080, "u@x", "p:ss")
    assert settings.enabled is False
    assert settings.label == "farm eu #7"
    assert settings.source == sidecar_path(path)


def test_the_sidecars_proxy_wins_over_the_global_one(tmp_path: Path) -> None:
    settings = read_sidecar(session(tmp_path, sidecar="proxy=http://127.0.0.3:8080\n"))
    assert settings.proxy_or(GLOBAL) == Proxy("http", "127.0.0.3", 8080)
    assert settings.proxy_or(None) == Proxy("http", "127.0.0.3", 8080)


def test_an_empty_proxy_is_the_global_one(tmp_path: Path) -> None:
    settings = read_sidecar(session(tmp_path, sidecar="proxy=\n"))
    assert settings.proxy is None and settings.proxy_or(GLOBAL) == GLOBAL


@pytest.mark.parametrize("word", ["direct", "DIRECT", " Direct "])
def test_direct_is_no_proxy_whatever_the_global_one(tmp_path: Path, word: str) -> None:
    settings = read_sidecar(session(tmp_path, sidecar=f"proxy={word}\n"))
    assert settings.direct and settings.proxy is None
    assert settings.proxy_or(GLOBAL) is None and settings.proxy_or(None) is None


@pytest.mark.parametrize(
    ("content", "key", "reason"),
    [
        ("proxi=socks5://h:1\n", "proxi", "line 1: unknown key; did you mean 'proxy'?"),
        ("label=a\nlabel=b\n", "label", "line 2: set twice"),
        ("enabled=maybe\n", "enabled", "not a boolean (true/false): 'maybe'"),
        ("proxy=ftp://h:21\n", "proxy", "must be socks5://"),
        ("proxy=socks5://h\n", "proxy", "needs a port"),
        ("label=" + "x" * 65 + "\n", "label", "at most 64 characters"),
        ("label=a\\tb\n", "label", "printable text on one line"),
        ("label=a\\u000ab\n", "label", "printable text on one line"),
    ],
)
def test_a_bad_sidecar_names_the_key_and_the_file(
    tmp_path: Path, content: str, key: str, reason: str
) -> None:
    path = session(tmp_path, sidecar=content)
    error = refused(path)
    assert error.key == key
    assert error.file == str(sidecar_path(path))
    assert reason in str(error)


def test_a_refused_proxy_never_shows_its_password(tmp_path: Path) -> None:
    error = refused(session(tmp_path, sidecar="proxy=gopher://user:s3cret-pass@h:1\n"))
    assert error.key == "proxy"
    assert "s3cret" not in str(error)


def test_an_unreadable_sidecar_is_refused(tmp_path: Path) -> None:
    path = session(tmp_path)
    sidecar_path(path).mkdir()
    error = refused(path)
    assert error.key == "sidecar" and "can't be read" in str(error)
    sidecar_path(path).rmdir()
    sidecar_path(path).write_bytes(b"label=\xff\n")
    assert "can't be read" in str(refused(path))


def test_read_sidecars_reads_each_in_order_and_stops_at_the_first_bad_one(tmp_path: Path) -> None:
    a = session(tmp_path, "a", "label=A\n")
    b = session(tmp_path, "b")
    found = read_sidecars([a, b])
    assert list(found) == [a, b]
    assert found[a].label == "A" and found[b] == AccountSettings()
    session(tmp_path, "c", "enabled=nope\n")
    with pytest.raises(ConfigError, match=r"c\.properties: enabled"):
        read_sidecars([a, b, tmp_path / "c.session"])
