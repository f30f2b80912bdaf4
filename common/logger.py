"""Logging set-up: console + a rotating file, level from the settings. Called once, by
start.py; every other module only does `log = logging.getLogger(__name__)`."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from typing import TextIO

from common.const import LogSettings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%SZ"

# Telethon logs every reconnect, every update gap and every MTProto detail at INFO or DEBUG;
# at INFO they would drown the service's own lines.
CHATTY = ("telethon", "aiormq", "pamqp")

# aiormq logs ERROR "error when creating transport" on every failed connect and raises the
# error, which service/broker.py handles and logs itself, once per outage: the ERROR line
# only doubled it, once per reconnect attempt (57 of them in a 30-minute soak's broker cuts).
DOUBLED = {"aiormq.connection": ("error when creating transport",)}

# Marks the handlers installed here, so calling setup_logging again replaces them instead
# of doubling every line (tests, `start.py demo` after a first set-up).
_MARK = "_tgc_handler"


def setup_logging(
    settings: LogSettings, *, console: bool = True, stream: TextIO | None = None
) -> None:
    """Installs the console handler (stderr, unless `stream`) and a RotatingFileHandler on
    `settings.file` on the root logger, at `settings.level`."""
    formatter = logging.Formatter(FORMAT, DATEFMT)
    formatter.converter = time.gmtime  # UTC, like every date the service writes

    # Private: the log names chats and accounts (start.py's umask makes the file 0600 too).
    settings.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(
            settings.file,
            maxBytes=settings.max_bytes,
            backupCount=settings.backups,
            encoding="utf-8",
        )
    ]
    if console:
        handlers.append(logging.StreamHandler(stream or sys.stderr))

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(settings.level)

    quiet = logging.NOTSET if settings.level == "DEBUG" else logging.WARNING
    for name in CHATTY:
        logging.getLogger(name).setLevel(quiet)
    for name, prefixes in DOUBLED.items():
        logger = logging.getLogger(name)
        for old_filter in [f for f in logger.filters if isinstance(f, DropDoubled)]:
            logger.removeFilter(old_filter)
        logger.addFilter(DropDoubled(prefixes))


class DropDoubled(logging.Filter):
    """Drops a library's records that start with one of `prefixes` (see DOUBLED); kept at
    DEBUG, where every detail is wanted."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or logging.getLogger().level <= logging.DEBUG:
            return True
        return not str(record.msg).startswith(self.prefixes)
