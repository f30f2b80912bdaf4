"""Settings: config.properties (+ `TGC_*` environment overrides) read once into frozen, typed
dataclasses, one per section.

    >>> s = load_settings("config.properties", env={"TGC_API_TOKEN": "t" * 32,
    ...     "TGC_API_AES_KEY": "00" * 32, "TGC_TELEGRAM_API_ID": "1",
    ...     "TGC_TELEGRAM_API_HASH": "0" * 32})          # doctest: +SKIP
    >>> s.server.port                                     # doctest: +SKIP
    8080

Rules (CONTRACT.md, "Ops"):
- Every key has a default except the secrets; a file names only the keys it changes.
- `server.port` is overridden by `TGC_SERVER_PORT`; a `TGC_*` variable that names no key is
  an error, like an unknown key in the file (a typo must not be silently ignored).
- Unknown, duplicate, malformed or out-of-range keys, and required keys left empty, raise
  `ConfigError(key, file, reason)`; `start.py` prints it and exits with code 2. A bad value
  never falls back to the default.
- Relative paths resolve against the config file's directory, so the server behaves the
  same whatever directory it is started from.

Which keys are required depends on the command: serving needs the API secrets and the
Telegram app credentials (`SERVE_REQUIRED`), the reference client needs only the API
secrets (`CLIENT_REQUIRED`), `login` and `accounts` only the Telegram ones
(`TELEGRAM_REQUIRED`). `load_settings` requires `SERVE_REQUIRED` unless told otherwise.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import javaproperties

from common.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.properties"
ENV_PREFIX = "TGC_"

# Telegram's upload.getFile rules: a part is a multiple of 4 KB that divides 1 MB.
TG_PART_ALIGN = 4096
TG_MAX_PART = 1024 * 1024

SERVE_REQUIRED = ("api.token", "api.aes_key", "telegram.api_id", "telegram.api_hash")
CLIENT_REQUIRED = ("api.token", "api.aes_key")
TELEGRAM_REQUIRED = ("telegram.api_id", "telegram.api_hash")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- the typed settings -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    """`telegram.proxy` parsed: socks5://user:pass@host:port, socks4://host:port, http://...

    socks5h:// is socks5: names are always resolved at the proxy (`rdns`)."""

    scheme: str  # "socks5" | "socks4" | "http"
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """scheme://host:port: what may be shown of it (no username, no password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def to_telethon(self) -> dict[str, Any]:
        """The dict Telethon 1.45 takes as `proxy=` and hands to python-socks."""
        return {
            "proxy_type": self.scheme,
            "addr": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password,
            "rdns": True,  # resolve names at the proxy: the host may see no DNS
        }


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    max_body_bytes: int
    shutdown_timeout: float
    status_allow: tuple[IPNetwork, ...]
    body_timeout: float
    idle_timeout: float
    unverified_body_bytes: int
    unverified_bodies: int

    def status_allowed(self, address: str) -> bool:
        """Whether a client address may see /status."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.status_allow)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    token: str = field(repr=False)
    aes_key: str = field(repr=False)  # 64 lowercase hex characters
    cipher: str
    signature_window: int
    content_url_ttl: int  # seconds a stored file's signed /files/... link stays valid


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    api_id: int  # 0 when left empty (allowed only for commands that never connect)
    api_hash: str = field(repr=False)
    sessions_dir: Path
    proxy: Proxy | None
    timeout: float
    flood_sleep_threshold: int
    request_retries: int
    resolve_per_minute: int
    resolve_per_day: int
    join_limit: int
    device_model: str | None
    app_version: str | None
    system_version: str | None
    lang_code: str
    reconnect_max_delay: float
    session_key: str = field(repr=False)  # "" or 64 lowercase hex: sealed sessions


@dataclass(frozen=True, slots=True)
class DataSettings:
    dir: Path


@dataclass(frozen=True, slots=True)
class MediaSettings:
    auto_download: bool
    download_workers: int
    upload_workers: int
    per_account_downloads: int
    parts_in_flight: int
    part_size: int
    spool_max_bytes: int
    max_file_bytes: int


@dataclass(frozen=True, slots=True)
class StorageSettings:
    url: str = field(repr=False)  # "" → files stay under data.dir; may hold user:pass
    timeout: float
    retry_max_delay: float


@dataclass(frozen=True, slots=True)
class RabbitmqSettings:
    url: str = field(repr=False)  # "" → events stay in the outbox; may hold a password
    exchange: str
    queue: str
    outbox_max_events: int
    max_in_flight: int
    reconnect_max_delay: float


@dataclass(frozen=True, slots=True)
class SubscriptionsSettings:
    poll_interval: float


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    dir: Path
    max_bytes: int
    backups: int

    @property
    def file(self) -> Path:
        return self.dir / "tgc.log"


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings
    api: ApiSettings
    telegram: TelegramSettings
    data: DataSettings
    media: MediaSettings
    storage: StorageSettings
    rabbitmq: RabbitmqSettings
    subscriptions: SubscriptionsSettings
    log: LogSettings
    source: Path  # the config file these came from

    @property
    def run_dir(self) -> Path:
        """Pid file and locks."""
        return self.data.dir / "run"


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "api": ApiSettings,
    "telegram": TelegramSettings,
    "data": DataSettings,
    "media": MediaSettings,
    "storage": StorageSettings,
    "rabbitmq": RabbitmqSettings,
    "subscriptions": SubscriptionsSettings,
    "log": LogSettings,
}


# --- value parsers: text -> typed value, or ValueError with the reason ------------------
# Each takes the stripped text and the config file's directory (for paths).

Parser = Callable[[str, Path], Any]

_INT = re.compile(r"^[+-]?[0-9]+$")
_SIZE = re.compile(r"^([0-9]+)\s*([KMGT]?)(?:I?B)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _human(n: float) -> str:
    return f"{n:g}"


def integer(lo: int, hi: int) -> Parser:
    def parse(text: str, _base: Path) -> int:
        if not _INT.match(text):
            raise ValueError(f"not an integer: {text!r}")
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}..{hi}")
        return value

    return parse


def seconds(lo: float, hi: float) -> Parser:
    """A duration in seconds: an int or a decimal ("1.5")."""

    def parse(text: str, _base: Path) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{text} is out of range {_human(lo)}..{_human(hi)} seconds")
        return value

    return parse


def size(lo: int, hi: int) -> Parser:
    """Bytes, with an optional binary suffix: 1048576, 512K, 512M, 10G, 10GiB, 1TB."""

    def parse(text: str, _base: Path) -> int:
        m = _SIZE.match(text)
        if not m:
            raise ValueError(f"not a size (bytes, or a number with K, M, G or T): {text!r}")
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
        if not lo <= value <= hi:
            raise ValueError(f"{text} ({value} bytes) is out of range {lo}..{hi} bytes")
        return value

    return parse


def part_size(text: str, base: Path) -> int:
    value: int = size(TG_PART_ALIGN, TG_MAX_PART)(text, base)
    if value % TG_PART_ALIGN or TG_MAX_PART % value:
        raise ValueError(
            f"{value} bytes breaks Telegram's rule: a multiple of 4096 that divides 1048576 "
            "(4K, 8K, 16K, ... 512K, 1M)"
        )
    return value


def boolean(text: str, _base: Path) -> bool:
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean (true/false): {text!r}")


def choice(*options: str, fold: Callable[[str], str] = str.lower) -> Parser:
    def parse(text: str, _base: Path) -> str:
        value = fold(text)
        if value not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return parse


def text(min_len: int = 0, max_len: int = 256, pattern: str | None = None) -> Parser:
    """A string. Empty means "not set" when min_len is 0."""
    rx = re.compile(pattern) if pattern else None

    def parse(value: str, _base: Path) -> str:
        if not min_len <= len(value) <= max_len:
            raise ValueError(f"must be {min_len}..{max_len} characters long (got {len(value)})")
        if value and rx and not rx.match(value):
            raise ValueError(f"{value!r} is not valid here")
        return value

    return parse


def optional_text(max_len: int) -> Parser:
    """A string or empty; empty → None (the library's own default)."""
    inner = text(0, max_len)

    def parse(value: str, base: Path) -> str | None:
        return inner(value, base) or None

    return parse


def hex_string(length: int) -> Parser:
    def parse(value: str, _base: Path) -> str:
        if not value:
            return ""
        if len(value) != length or not _HEX.match(value):
            # Its length, not the value: the hex strings here are keys and hashes.
            raise ValueError(f"must be {length} hex characters (got {len(value)} characters)")
        return value.lower()

    return parse


def api_id(value: str, base: Path) -> int:
    if not value:
        return 0
    result: int = integer(1, 2**31 - 1)(value, base)
    return result


TOKEN_MIN, TOKEN_MAX = 16, 1024
URL_MAX = 2048  # storage.url, rabbitmq.url, telegram.proxy


def token(value: str, _base: Path) -> str:
    # Fixed messages, only the length shows: "too short" masked where the value was "short"
    # showed the value by the gap.
    if value and not TOKEN_MIN <= len(value) <= TOKEN_MAX:
        raise ValueError(
            f"must be at least {TOKEN_MIN} and at most {TOKEN_MAX} characters (got {len(value)})"
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("must be printable, with no whitespace")
    return value


def _bounded(value: str, limit: int = URL_MAX) -> None:
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters (got {len(value)})")


def path(value: str, base: Path) -> Path:
    """A directory the service creates if missing: not a file, nor under one."""
    if not value:
        raise ValueError("must name a directory")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else (base / p).resolve()
    _check_directory(p)
    return p


def _check_directory(p: Path) -> None:
    # The nearest part of the path that exists must be a directory, or no mkdir can make it.
    for part in (p, *p.parents):
        try:
            st = part.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return  # can't look (permissions): making it at the start will tell
        if not stat.S_ISDIR(st.st_mode):
            where = "is" if part == p else f"is under {part}, which is"
            raise ValueError(f"{p} {where} a file, not a directory")
        return


def _host_port(parts: Any, default_port: int | None) -> tuple[str, int]:
    host = parts.hostname
    if not host:
        raise ValueError("has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a bad port") from None
    port = port if port is not None else default_port
    if port is None or port == 0:
        raise ValueError("needs a port")
    return host, port


def url(*schemes: str, default_ports: Mapping[str, int] | None = None) -> Parser:
    """'' (not set) or scheme://host[:port]/... with one of the given schemes."""

    def parse(value: str, _base: Path) -> str:
        if not value:
            return ""
        _bounded(value)
        parts = urlsplit(value)
        if parts.scheme.lower() not in schemes:
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        _host_port(parts, (default_ports or {}).get(parts.scheme.lower(), 1))
        return value.rstrip("/") if parts.scheme.startswith("http") else value

    return parse


def proxy(value: str, _base: Path) -> Proxy | None:
    if not value:
        return None
    _bounded(value)
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    scheme = "socks5" if scheme == "socks5h" else scheme  # remote DNS: always on (rdns)
    if scheme not in ("socks5", "socks4", "http"):
        raise ValueError("must be socks5://[user:pass@]host:port, socks4://host:port or http://...")
    host, port = _host_port(parts, None)
    return Proxy(
        scheme=scheme,
        host=host,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def networks(value: str, _base: Path) -> tuple[IPNetwork, ...]:
    """A comma- or space-separated list of CIDRs or addresses; empty allows nobody."""
    out: list[IPNetwork] = []
    for item in re.split(r"[\s,]+", value.strip()):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR network") from None
    return tuple(out)


def exchange_name(value: str, base: Path) -> str:
    # AMQP short strings; the default exchange ("") can't be bound to, so empty is refused.
    result: str = text(1, 255, r"^[A-Za-z0-9_.:\-]+$")(value, base)
    return result


# --- the keys ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    name: str  # "section.field"
    default: str  # as written in a file: defaults go through the same parser
    parse: Parser
    # A key whose value is (or may hold) a secret: its value never appears in a ConfigError,
    # and its settings field is left out of the settings' repr.
    secret: bool = False

    @property
    def env(self) -> str:
        return env_name(self.name)


KEYS: tuple[Key, ...] = (
    Key("server.host", "127.0.0.1", text(1, 255)),
    Key("server.port", "8080", integer(0, 65535)),
    Key("server.max_body_bytes", "1M", size(1024, 1024**3)),
    Key("server.shutdown_timeout", "30", seconds(0, 3600)),
    Key("server.status_allow", "127.0.0.0/8, ::1/128", networks),
    Key("server.body_timeout", "10", seconds(0.1, 3600)),
    Key("server.idle_timeout", "60", seconds(1, 86400)),
    Key("server.unverified_body_bytes", "16M", size(1024, 1024**3)),
    Key("server.unverified_bodies", "64", integer(1, 100_000)),
    Key("api.token", "", token, secret=True),
    Key("api.aes_key", "", hex_string(64), secret=True),
    Key("api.cipher", "aes-256-gcm", choice("aes-256-gcm", "aes-256-cbc")),
    Key("api.signature_window", "300", integer(10, 3600)),
    Key("api.content_url_ttl", "3600", integer(10, 7 * 86400)),
    Key("telegram.api_id", "", api_id),
    Key("telegram.api_hash", "", hex_string(32), secret=True),
    Key("telegram.sessions_dir", "sessions", path),
    Key("telegram.proxy", "", proxy, secret=True),
    Key("telegram.timeout", "30", seconds(1, 300)),
    Key("telegram.flood_sleep_threshold", "0", integer(0, 300)),
    Key("telegram.request_retries", "3", integer(0, 20)),
    Key("telegram.resolve_per_minute", "5", integer(1, 1000)),
    Key("telegram.resolve_per_day", "200", integer(1, 100_000)),
    Key("telegram.join_limit", "500", integer(1, 1000)),
    Key("telegram.device_model", "", optional_text(64)),
    Key("telegram.app_version", "", optional_text(64)),
    Key("telegram.system_version", "", optional_text(64)),
    Key("telegram.lang_code", "en", text(2, 10, r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")),
    Key("telegram.reconnect_max_delay", "300", seconds(1, 3600)),
    Key("telegram.session_key", "", hex_string(64), secret=True),
    Key("data.dir", "data", path),
    Key("media.auto_download", "true", boolean),
    Key("media.download_workers", "4", integer(1, 64)),
    Key("media.upload_workers", "4", integer(1, 64)),
    Key("media.per_account_downloads", "2", integer(1, 32)),
    Key("media.parts_in_flight", "64", integer(1, 64)),
    Key("media.part_size", "1M", part_size),
    Key("media.spool_max_bytes", "10G", size(1024**2, 1024**5)),
    Key("media.max_file_bytes", "4G", size(1, 1024**4)),
    Key(
        "storage.url",
        "",
        url("http", "https", default_ports={"http": 80, "https": 443}),
        secret=True,  # may hold user:pass
    ),
    Key("storage.timeout", "600", seconds(1, 86400)),
    Key("storage.retry_max_delay", "300", seconds(1, 3600)),
    Key(
        "rabbitmq.url",
        "",
        url("amqp", "amqps", default_ports={"amqp": 5672, "amqps": 5671}),
        secret=True,
    ),
    Key("rabbitmq.exchange", "telegram", exchange_name),
    Key("rabbitmq.queue", "telegram.events", exchange_name),
    Key("rabbitmq.outbox_max_events", "1000000", integer(100, 100_000_000)),
    Key("rabbitmq.max_in_flight", "256", integer(1, 10_000)),
    Key("rabbitmq.reconnect_max_delay", "60", seconds(1, 3600)),
    Key("subscriptions.poll_interval", "60", seconds(1, 86400)),
    Key(
        "log.level",
        "INFO",
        choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", fold=str.upper),
    ),
    Key("log.dir", "logs", path),
    Key("log.max_bytes", "10M", size(64 * 1024, 1024**3)),
    Key("log.backups", "5", integer(0, 100)),
)
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}


def env_name(key: str) -> str:
    """`server.port` → `TGC_SERVER_PORT`."""
    return ENV_PREFIX + key.upper().replace(".", "_")


_KEYS_BY_ENV: dict[str, Key] = {k.env: k for k in KEYS}


# --- loading -----------------------------------------------------------------------------


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] = os.environ,
    *,
    require: Collection[str] = SERVE_REQUIRED,
) -> Settings:
    """Reads `path` (default: config.properties at the project root), applies `TGC_*`
    overrides from `env`, validates every key and returns the settings.

    Raises ConfigError(key, file, reason) on a missing file, an unknown or duplicate key, a
    malformed or out-of-range value, or a key of `require` left empty.
    """
    source = Path(path) if path is not None else DEFAULT_CONFIG
    source = source.expanduser().resolve()
    raw = read_properties(source, KEYS_BY_NAME)
    origin = {name: str(source) for name in raw}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        key = _KEYS_BY_ENV.get(var)
        if key is None:
            raise ConfigError(var, "environment", _unknown(var, list(_KEYS_BY_ENV)))
        raw[key.name] = value
        origin[key.name] = f"{source} (overridden by environment variable {var})"

    values: dict[str, Any] = {}
    for key in KEYS:
        where = origin.get(key.name, str(source))
        value = raw.get(key.name, key.default).strip()
        if key.name in require and not value:
            raise ConfigError(key.name, where, f"is required (set it, or {key.env})")
        values[key.name] = parse_value(key, value, where, source.parent)
    return _build(values, source)


def parse_value(key: Key, value: str, where: str, base: Path) -> Any:
    """`key`'s parser on `value`; ConfigError(key, where, reason) when it refuses it, the
    value hidden when the key is a secret."""
    try:
        return key.parse(value, base)
    except ValueError as e:
        raise ConfigError(key.name, where, _reason(key, value, e)) from None


def _reason(key: Key, value: str, error: ValueError) -> str:
    """A parser's complaint. Secrets' parsers never echo the value; as a net, a secret's
    value is masked if quoted (`!r`), or bare if too long to be a word of the message."""
    reason = str(error)
    if not key.secret or not value:
        return reason
    reason = reason.replace(repr(value), "'<hidden>'")
    if len(value) >= TOKEN_MIN:
        reason = reason.replace(value, "<hidden>")
    return reason


def read_properties(source: Path, known: Mapping[str, Key], what: str = "--config") -> dict[str, str]:
    """The keys a properties file sets, as written. ConfigError on an unknown key (with a
    close known one suggested) or one set twice (naming the line), and, named `what`, on a
    file missing, unreadable or not a properties file."""
    try:
        content = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(what, str(source), "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(what, str(source), f"can't be read: {e}") from None
    out: dict[str, str] = {}
    line = 1
    try:
        elements = list(javaproperties.parse(content))
    except ValueError as e:  # a broken \u escape
        raise ConfigError(what, str(source), f"not a properties file: {e}") from None
    for element in elements:
        if isinstance(element, javaproperties.KeyValue):
            name = element.key.strip()
            if name not in known:
                raise ConfigError(name, str(source), f"line {line}: " + _unknown(name, known))
            if name in out:
                raise ConfigError(name, str(source), f"line {line}: set twice")
            out[name] = element.value
        line += element.source.count("\n")
    return out


def _unknown(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint}"


def _build(values: Mapping[str, Any], source: Path) -> Settings:
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        kwargs = {f.name: values[f"{section}.{f.name}"] for f in fields(cls)}
        sections[section] = cls(**kwargs)
    return Settings(source=source, **sections)
