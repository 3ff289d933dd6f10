#!/usr/bin/env python3
"""Back up the service's database now, safely while it runs (SQLite's backup API, then
integrity_check), into the backup folder of the settings, keeping the newest `backup.keep`.

    .venv/bin/python scripts/backup.py                    # settings.toml (and the environment)
    .venv/bin/python scripts/backup.py --config site.toml --to /mnt/backups --keep 30
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.backup import BackupFailed, backup_database  # noqa: E402
from actors.runtime.settings import SettingsError, load_settings  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="PATH", help="settings file over the defaults in settings.toml")
    parser.add_argument("--to", metavar="DIR", help="backup folder (default: backup.dir)")
    parser.add_argument("--keep", type=int, help="how many backups to keep (default: backup.keep)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"settings error: {exc}", file=sys.stderr)
        return 2
    try:
        target = backup_database(settings.database.path, args.to or settings.backup.dir,
                                 args.keep or settings.backup.keep)
    except BackupFailed as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(f"backup written: {target} ({target.stat().st_size / 2**20:.1f} MiB, integrity_check ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
