"""Online backups: SQLite's backup API from a read-only connection (consistent while the writer
goes on writing; in WAL mode a reader never blocks it), each copy checked with integrity_check,
the newest `keep` kept. The backup actor runs them on a schedule; scripts/backup.py on demand."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from actors.runtime.settings import BackupSettings
from actors.runtime.supervised import Supervised
from actors.storage.dberrors import Episode
from actors.storage.models import utc_now

log = logging.getLogger(__name__)
STAMP = "%Y%m%dT%H%M%S%fZ"  # a backup's name: <database>-<STAMP>.db, UTC


class BackupFailed(Exception):
    """The backup could not be written, or the copy did not pass integrity_check."""


def backup_database(source: str, directory: str, keep: int) -> Path:
    """Write one backup of `source` into `directory`, check it, drop all but the newest `keep`."""
    source_path = Path(source).resolve()
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime(STAMP)
    target = folder / f"{source_path.stem}-{stamp}.db"
    partial = target.with_name(target.name + ".partial")  # never mistaken for a good backup
    try:
        src = sqlite3.connect(source_path.as_uri() + "?mode=ro", uri=True)
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst, pages=4096)  # in steps: the writer commits in between
            dst.execute("PRAGMA journal_mode = delete")  # a plain single-file copy
            report = [row[0] for row in dst.execute("PRAGMA integrity_check")]
        finally:
            dst.close()
            src.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise BackupFailed(f"cannot back up {source_path} into {folder}: {exc}") from None
    if report != ["ok"]:
        partial.unlink(missing_ok=True)
        raise BackupFailed(f"the backup of {source_path} failed integrity_check: {'; '.join(report[:5])}")
    partial.rename(target)
    for old in sorted(folder.glob(f"{source_path.stem}-*.db"))[:-keep]:
        old.unlink(missing_ok=True)  # another instance on this database may have rotated it first
    return target


def newest_backup(source: str, directory: str) -> datetime | None:
    """When the newest backup of `source` in `directory` was made (UTC), from its name; None if none."""
    stem = Path(source).resolve().stem
    for path in sorted(Path(directory).glob(f"{stem}-*.db"), reverse=True):
        try:
            return datetime.strptime(path.name[len(stem) + 1:-3], STAMP).replace(tzinfo=timezone.utc)
        except ValueError:
            continue  # not one of ours
    return None


def first_backup_in(newest: datetime | None, now: datetime, interval: float) -> float:
    """Seconds from a start to its first backup: an interval after the newest backup (at once if
    that has passed), or FIRST_BACKUP without one."""
    if newest is None:
        return min(interval, FIRST_BACKUP)
    return max(1.0, (newest - now).total_seconds() + interval)


@dataclass(frozen=True, slots=True)
class BackupNow:
    """A timer -> the backup actor: time for the scheduled backup."""


FIRST_RETRY = 60.0  # after a failed backup; doubling up to the interval
FIRST_BACKUP = 3600.0  # after the start, where there is no backup yet


class BackupActor(Supervised):
    """Backs the database up every `interval_hours` (0: never)."""

    def __init__(self, name: str, database_path: str, settings: BackupSettings, supervisor=None,
                 housekept: dict[str, str] | None = None):
        """`housekept`: where the time of the latest backup is kept for the stats (StatusReport)."""
        super().__init__(name, supervisor)
        self.database_path = database_path
        self.settings = settings
        self.housekept = {} if housekept is None else housekept
        self._timer: threading.Timer | None = None
        self._episode = Episode(log, "%s; trying again with backoff", "backups resumed after %.0f s of retrying",
                                FIRST_RETRY, settings.interval_hours * 3600 or FIRST_RETRY)

    def on_start(self):
        """The next backup is due an interval after the newest one, not after this start: a service
        restarted more often than its interval still backs up."""
        if not self.settings.interval_hours:
            return
        newest = newest_backup(self.database_path, self.settings.dir)
        if newest is not None:
            self.housekept["backup"] = newest.strftime("%Y-%m-%d %H:%M:%S")
        self._schedule(first_backup_in(newest, datetime.now(timezone.utc), self.settings.interval_hours * 3600))

    def on_stop(self):
        if self._timer is not None:
            self._timer.cancel()

    def on_receive(self, message):
        if not isinstance(message, BackupNow):
            log.warning("backup actor ignored an unexpected message: %r", message)
            return
        try:
            target = backup_database(self.database_path, self.settings.dir, self.settings.keep)
        except (BackupFailed, OSError) as exc:  # a locked or full disk, a damaged copy: try again soon
            self._schedule(self._episode.failed(exc))
            return
        self._episode.succeeded()
        self.housekept["backup"] = utc_now()
        log.info("backup written: %s (%.1f MiB, integrity_check ok)", target, target.stat().st_size / 2**20)
        self._schedule()

    def _schedule(self, delay: float | None = None) -> None:
        if self.settings.interval_hours:
            self._timer = self.tell_later(min(delay or math.inf, self.settings.interval_hours * 3600), BackupNow())
