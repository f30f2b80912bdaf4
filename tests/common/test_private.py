"""common/private.py: the umask for a command, private folders, and what others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.private import describe, make_private_dir, open_to_others, private_files

SOURCE = Path("/etc/tgc/config.properties")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_made_under_private_files_are_private_and_the_umask_comes_back(
    tmp_path: Path,
) -> None:
    before = os.umask(0o022)
    try:
        with private_files():
            (tmp_path / "auth.session").write_text("key")
            (tmp_path / "folder").mkdir()
        assert mode(tmp_path / "auth.session") == 0o600 and mode(tmp_path / "folder") == 0o700
        assert os.umask(0o022) == 0o022  # restored
    finally:
        os.umask(before)


def test_a_private_dir_is_0700_and_an_existing_one_is_left_alone(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "sessions", "telegram.sessions_dir", SOURCE)
    assert mode(tmp_path / "a" / "sessions") == 0o700
    (tmp_path / "shared").mkdir(mode=0o750)
    os.chmod(tmp_path / "shared", 0o750)
    make_private_dir(tmp_path / "shared", "data.dir", SOURCE)
    assert mode(tmp_path / "shared") == 0o750  # ops' choice


def test_a_dir_that_cant_be_made_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError) as caught:
        make_private_dir(tmp_path / "a-file" / "sessions", "telegram.sessions_dir", SOURCE)
    assert caught.value.key == "telegram.sessions_dir" and caught.value.file == str(SOURCE)
    assert "can't be created" in str(caught.value)


def test_open_to_others_names_open_folders_and_their_readable_files(tmp_path: Path) -> None:
    open_dir, closed_dir = tmp_path / "sessions", tmp_path / "data"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    for name, bits in (("a.session", 0o644), ("b.session", 0o600), ("c.session", 0o640)):
        (open_dir / name).write_text("")
        os.chmod(open_dir / name, bits)
    closed_dir.mkdir(mode=0o700)
    (closed_dir / "media.sqlite3").write_text("")
    os.chmod(closed_dir / "media.sqlite3", 0o644)  # hidden by its folder: not listed
    found = open_to_others([open_dir, closed_dir, tmp_path / "missing"])
    assert found == [
        (open_dir, 0o755),
        (open_dir / "a.session", 0o644),
        (open_dir / "c.session", 0o640),
    ]
    assert (
        describe(found, shown=2) == f"{open_dir} (0755), {open_dir / 'a.session'} (0644) and 1 more"
    )
