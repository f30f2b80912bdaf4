"""common/logger.py: console + rotating file, level from the settings, Telethon kept quiet."""

from __future__ import annotations

import io
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.const import LogSettings
from common.logger import CHATTY, DOUBLED, DropDoubled, setup_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """setup_logging changes the root logger: put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in CHATTY}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    for name, lvl in chatty.items():
        logging.getLogger(name).setLevel(lvl)
    for name in DOUBLED:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, DropDoubled)]:
            logger.removeFilter(f)


def settings(tmp_path: Path, level: str = "INFO", max_bytes: int = 64 * 1024) -> LogSettings:
    return LogSettings(level=level, dir=tmp_path / "logs", max_bytes=max_bytes, backups=2)


def test_lines_go_to_console_and_file_at_the_level(tmp_path: Path) -> None:
    console = io.StringIO()
    s = settings(tmp_path, "WARNING")
    setup_logging(s, stream=console)
    log = logging.getLogger("tgc.test")
    log.info("not shown %s", 1)
    log.warning("shown %s", 2)
    for h in logging.getLogger().handlers:
        h.flush()
    assert "shown 2" in console.getvalue() and "not shown" not in console.getvalue()
    text = s.file.read_text()
    assert "shown 2" in text and "not shown" not in text
    assert "WARNING tgc.test: shown 2" in text
    assert text[:4].isdigit() and "Z " in text  # UTC timestamps


def test_telethon_is_quiet_unless_debug(tmp_path: Path) -> None:
    setup_logging(settings(tmp_path, "INFO"), console=False)
    assert logging.getLogger("telethon").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("telethon.network.mtprotosender").getEffectiveLevel() == logging.WARNING
    setup_logging(settings(tmp_path, "DEBUG"), console=False)
    assert logging.getLogger("telethon.network").getEffectiveLevel() == logging.DEBUG


def test_calling_twice_replaces_instead_of_doubling(tmp_path: Path) -> None:
    console = io.StringIO()
    setup_logging(settings(tmp_path), stream=console)
    setup_logging(settings(tmp_path), stream=console)
    logging.getLogger("tgc.test").warning("once")
    assert console.getvalue().count("once") == 1
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_tgc_handler", False)]
    assert len(ours) == 2


def test_file_rotates_at_max_bytes(tmp_path: Path) -> None:
    s = settings(tmp_path, max_bytes=64 * 1024)
    setup_logging(s, console=False)
    log = logging.getLogger("tgc.test")
    for i in range(2000):
        log.info("line %d %s", i, "x" * 80)
    files = sorted(p.name for p in s.dir.iterdir())
    assert files == ["tgc.log", "tgc.log.1", "tgc.log.2"]
    assert all((s.dir / f).stat().st_size <= 64 * 1024 for f in files)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_aiormqs_connect_error_is_dropped_as_the_broker_logs_it_itself(
    tmp_path: Path, level: str
) -> None:
    console = io.StringIO()
    setup_logging(settings(tmp_path, level), stream=console)
    setup_logging(settings(tmp_path, level), stream=console)  # twice: one filter, not two
    aiormq = logging.getLogger("aiormq.connection")
    assert sum(isinstance(f, DropDoubled) for f in aiormq.filters) == 1
    aiormq.error("error when creating transport: %r", ConnectionRefusedError(111))
    aiormq.error("Unexpected frame %r", "x")  # any other error of aiormq still shows
    out = console.getvalue()
    assert "Unexpected frame" in out
    assert ("error when creating transport" in out) == (level == "DEBUG")

