"""What the service writes is private to its user: session files hold the accounts' auth
keys, the SQLite files and the log what the accounts saw.

    with private_files():                                  # umask 077 while a command runs
        make_private_dir(sessions_dir, "telegram.sessions_dir", source)      # 0700
    for path, mode in open_to_others([sessions_dir, data_dir, log_dir]): ...

Existing files keep their mode: ops may have opened a folder to a group on purpose (a backup
user), so the start names what others can read (`open_to_others`) rather than chmod it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.errors import ConfigError

PRIVATE_UMASK = 0o077  # new files 0600, new folders 0700
GROUP_OR_OTHERS = 0o077


@contextmanager
def private_files() -> Iterator[None]:
    """Sets the process's umask to 077 for the block (restored after: the umask is the
    whole process's, and tests run commands in theirs)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def make_private_dir(path: Path, key: str, source: Path) -> None:
    """Creates the folder `path` (mode 0700; missing parents by the umask) unless it exists.
    A path that can't be a folder here is a bad value of `key`: ConfigError naming it and
    `source` (not a traceback)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        reason = f"{path} can't be created: {e.strerror or e}"
        raise ConfigError(key, str(source), reason) from None


def open_to_others(folders: Iterable[Path]) -> list[tuple[Path, int]]:
    """(path, mode) of each folder of `folders` that group or others may read or enter, then
    of each file directly in it that they may read or write. A private folder hides its
    files whatever their modes, so they are not listed; a missing folder is skipped."""
    found: list[tuple[Path, int]] = []
    for folder in folders:
        try:
            mode = stat.S_IMODE(folder.stat().st_mode)
        except OSError:
            continue
        if not mode & GROUP_OR_OTHERS:
            continue
        found.append((folder, mode))
        found.extend(_open_files(folder))
    return found


def _open_files(folder: Path) -> list[tuple[Path, int]]:
    out: list[tuple[Path, int]] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for entry in entries:
        try:
            st = entry.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISREG(st.st_mode) and mode & 0o066:
            out.append((entry, mode))
    return out


def describe(found: list[tuple[Path, int]], shown: int = 6) -> str:
    """`/a/sessions (0755), /a/sessions/1.session (0644), ... and 3 more`."""
    names = [f"{path} ({mode:04o})" for path, mode in found[:shown]]
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return ", ".join(names) + more
