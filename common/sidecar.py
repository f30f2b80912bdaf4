"""An account's own settings: a sidecar file beside its session, `sessions/NAME.properties`
for `sessions/NAME.session`, in the format of config.properties.

    # sessions/15550000001.properties
    proxy=socks5://user:pass@127.0.0.1:1080
    enabled=true
    label=farm-eu-07

- `proxy`: socks5://[user:pass@]host:port, socks4://host:port or http://[user:pass@]host:port,
  as `telegram.proxy`. It wins over `telegram.proxy` for the account's every connection
  (the main one and the media ones); `direct`: no proxy for this account even when
  telegram.proxy names one; empty or absent: `telegram.proxy`.
- `enabled`: false keeps the account out of the pool (its session stays as it is).
- `label`: the operator's name for the account, shown beside the account's public name in
  /api/v1/accounts and /status (up to 64 printable characters; the public name stays the
  masked stem, which answers, events and stored rows carry).

No sidecar is the same as an empty one. A bad one (an unknown key, a key set twice, a value
its key refuses, an unreadable file) is a `ConfigError` naming the key and the file, which
stops `start.py serve` with exit code 2 as a bad config.properties does. The proxy's
password never shows in one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.const import Key, Proxy, boolean, parse_value, proxy, read_properties

SESSION_SUFFIX = ".session"
SIDECAR_SUFFIX = ".properties"
LABEL_MAX = 64


def label(value: str, _base: Path) -> str | None:
    """Printable text up to LABEL_MAX characters, or empty (None): it goes into logs and
    HTML, so no control characters or line breaks."""
    if len(value) > LABEL_MAX:
        raise ValueError(f"must be at most {LABEL_MAX} characters (got {len(value)})")
    if not value.isprintable():
        raise ValueError("must be printable text on one line")
    return value or None


DIRECT = "direct"


def account_proxy(value: str, base: Path) -> Proxy | str | None:
    """A proxy as `telegram.proxy` takes it, or DIRECT (no proxy whatever telegram.proxy
    says), or empty (None: telegram.proxy)."""
    if value.lower() == DIRECT:
        return DIRECT
    return proxy(value, base)


SIDECAR_KEYS: tuple[Key, ...] = (
    Key("proxy", "", account_proxy, secret=True),
    Key("enabled", "true", boolean),
    Key("label", "", label),
)
_KEYS_BY_NAME = {k.name: k for k in SIDECAR_KEYS}


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """One account's sidecar, parsed. `source` is the file read, None when there is none."""

    proxy: Proxy | None = None
    enabled: bool = True
    label: str | None = None
    source: Path | None = None
    direct: bool = False  # proxy=direct: none, whatever telegram.proxy says

    def proxy_or(self, default: Proxy | None) -> Proxy | None:
        """The account's proxy: its own, none when it says direct, else `default`
        (telegram.proxy)."""
        if self.direct:
            return None
        return self.proxy if self.proxy is not None else default


def sidecar_path(session_path: str | os.PathLike[str]) -> Path:
    """`sessions/NAME.session` → `sessions/NAME.properties`."""
    path = Path(session_path)
    stem = path.name.removesuffix(SESSION_SUFFIX)
    return path.with_name(stem + SIDECAR_SUFFIX)


def read_sidecar(session_path: str | os.PathLike[str]) -> AccountSettings:
    """The settings of the account whose session is `session_path`: its sidecar parsed, or
    the defaults when there is no sidecar. Raises ConfigError(key, file, reason)."""
    source = sidecar_path(session_path)
    if not source.exists():
        return AccountSettings()
    raw = read_properties(source, _KEYS_BY_NAME, what="sidecar")
    values = {
        key.name: parse_value(key, raw.get(key.name, key.default).strip(), str(source), source.parent)
        for key in SIDECAR_KEYS
    }
    own = values["proxy"]
    return AccountSettings(
        proxy=None if own == DIRECT else own,
        enabled=values["enabled"],
        label=values["label"],
        source=source,
        direct=own == DIRECT,
    )


def read_sidecars(session_paths: Iterable[str | os.PathLike[str]]) -> dict[Path, AccountSettings]:
    """{session path: its settings} for each session, in the order given. Every sidecar is
    read before any account starts: the first bad one raises ConfigError."""
    return {Path(p): read_sidecar(p) for p in session_paths}
