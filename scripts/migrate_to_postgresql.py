#!/usr/bin/env python3
"""Copy a SQLite database of the service into an empty PostgreSQL database.

    sudo systemctl stop mqtt-client
    .venv/bin/python scripts/migrate_to_postgresql.py /var/lib/mqtt-client/mqtt_data.db \\
        postgresql://mqtt:secret@db.internal:5432/mqtt
    # then set DATABASE_URL in /etc/mqtt-client/mqtt-client.env and start the service(s)

Every row of every table, ids included, in batches; the id sequences then continue after the
largest id; the row counts are compared at the end. The SQLite file is only read (stop the
service first so that nothing arrives meanwhile: the broker keeps new readings for it). The
target must be empty; its tables are created with the service's schema. Exit code 0 when every
table matches."""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import sys
from pathlib import Path

import peewee
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.devices import BUILTIN_TYPES  # noqa: E402
from actors.runtime.settings import describe_url, load_settings  # noqa: E402
from actors.storage.models import all_models, connect_database  # noqa: E402
from actors.storage.schema import SCHEMA_VERSION, current_version, prepare  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sqlite_file")
    p.add_argument("postgresql_url")
    p.add_argument("--batch", type=int, default=5000, help="rows per transaction")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    where = describe_url(args.postgresql_url)

    source_path = Path(args.sqlite_file).resolve()
    if not source_path.is_file():
        print(f"migrate: {source_path} does not exist", file=sys.stderr)
        return 1
    source = peewee.SqliteDatabase(f"file:{source_path}?mode=ro", uri=True)
    version = current_version(source)
    if version != SCHEMA_VERSION:
        print(f"migrate: {source_path} has schema version {version}, not {SCHEMA_VERSION}: start the service "
              "once on it (it upgrades the file), stop it, then migrate", file=sys.stderr)
        return 1

    defaults = load_settings(environ={}).database
    target = connect_database(dataclasses.replace(defaults, url=args.postgresql_url), 2)
    try:
        target.connect()
        prepare(target)
        models = all_models(BUILTIN_TYPES)
        busy = [m._meta.table_name for m in models if m.select().exists()]
        if busy:
            print(f"migrate: {where} already has rows in {', '.join(busy)}; the target must be empty",
                  file=sys.stderr)
            return 1
        con = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
        ok = True
        for model in models:
            ok &= copy_table(con, target, model, args.batch, args.quiet)
        con.close()
    except peewee.DatabaseError as exc:
        print(f"migrate: {where}: {str(exc).strip()}", file=sys.stderr)
        return 1
    finally:
        target.close()
    print(f"migrate: {'done' if ok else 'MISMATCH'}: {source_path} -> {where}")
    return 0 if ok else 1


def copy_table(con: sqlite3.Connection, target: peewee.Database, model, batch: int, quiet: bool) -> bool:
    table = model._meta.table_name
    fields = model._meta.sorted_fields
    total = con.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    cursor = con.execute(f'SELECT {", ".join(f.column_name for f in fields)} FROM "{table}" ORDER BY id')
    with tqdm(total=total, unit="row", desc=table, disable=quiet) as bar:
        while rows := cursor.fetchmany(batch):
            with target.atomic():
                model.insert_many(rows, fields=fields).execute()
            bar.update(len(rows))
    # New rows continue after the copied ids.
    target.execute_sql(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                       f"(SELECT COALESCE(MAX(id), 0) + 1 FROM \"{table}\"), false)")
    copied = model.select().count()
    print(f"migrate: {table}: {copied:,} of {total:,} rows")
    return copied == total


if __name__ == "__main__":
    sys.exit(main())
