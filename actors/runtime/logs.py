"""Logging to the console (journald under systemd) and to a size-rotated file."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from actors.runtime.settings import LoggingSettings

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# journald stamps every line itself; a second timestamp would only be noise.
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(settings: LoggingSettings) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(settings.level)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(JOURNAL_FORMAT if os.environ.get("JOURNAL_STREAM")
                                           else FILE_FORMAT))
    root.addHandler(console)
    if settings.file:
        handler = logging.handlers.RotatingFileHandler(settings.file, maxBytes=settings.max_bytes,
                                                       backupCount=settings.backups, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        root.addHandler(handler)
    # gmqtt logs every reconnect attempt and socket event; the link logs the state changes.
    if settings.level != "DEBUG":
        logging.getLogger("gmqtt").setLevel(logging.ERROR)
