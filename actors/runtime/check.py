"""`python system.py --check-config`: the settings, the database and the broker, checked without
starting the service. One line per check; True when all pass."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import gmqtt
import peewee
from gmqtt.mqtt.constants import MQTTv50

from actors.runtime.settings import Settings, describe_url
from actors.runtime.tls import explain, tls_context
from actors.storage.models import connect_database
from actors.storage.store import quick_check


class CheckFailed(Exception):
    """A check did not pass; the message says why."""


def check_config(settings: Settings, out=print) -> bool:
    database = describe_url(settings.database.url) if settings.database.url else settings.database.path
    out(f"ok      settings: {settings.mqtt.client_id} -> {settings.mqtt.host}:{settings.mqtt.port}, "
        f"database {database}")
    for warning in settings.warnings:
        out(f"WARNING settings: {warning}")
    ok = True
    for name, probe in (("database", check_database), ("broker", check_broker)):
        try:
            out(f"ok      {name}: {probe(settings)}")
        except CheckFailed as exc:
            out(f"FAILED  {name}: {exc}")
            ok = False
    return ok


def check_database(settings: Settings) -> str:
    if settings.database.url:
        return check_server(settings)
    path = Path(settings.database.path).resolve()
    if not path.exists():
        if not path.parent.is_dir():
            raise CheckFailed(f"{path.parent} does not exist, so {path.name} cannot be created there")
        if not os.access(path.parent, os.W_OK):
            raise CheckFailed(f"{path} cannot be created: {path.parent} is not writable by this user")
        return f"{path} does not exist yet; it will be created"
    for p in (path, path.parent):  # the file, and the directory its -wal and -shm files go in
        if not os.access(p, os.W_OK):
            raise CheckFailed(f"{p} is not writable by this user")
    report = quick_check(path) or ["it cannot be opened"]
    if report != ["ok"]:
        raise CheckFailed(f"{path} is damaged: {'; '.join(report)}")
    return f"{path} ({path.stat().st_size / 2**20:.1f} MiB): quick_check ok, writable"


def check_server(settings: Settings) -> str:
    """PostgreSQL: reachable, and this user may create the tables (or they exist)."""
    where = describe_url(settings.database.url)
    db = connect_database(settings.database, 1)
    try:
        db.connect()
        version = db.execute_sql("SHOW server_version").fetchone()[0]
        tables = set(db.get_tables())
        if "temperature_logs" not in tables and not db.execute_sql(
                "SELECT has_schema_privilege(current_schema(), 'CREATE')").fetchone()[0]:
            raise CheckFailed(f"{where}: this user may not create the tables in schema {db.execute_sql('SELECT current_schema()').fetchone()[0]}")
    except peewee.DatabaseError as exc:
        raise CheckFailed(f"cannot use {where}: {str(exc).strip()}") from None
    finally:
        db.close()
    return f"{where}: PostgreSQL {version}" + (", tables present" if "temperature_logs" in tables else ", tables will be created")


def check_broker(settings: Settings) -> str:
    s = settings.mqtt
    logging.getLogger("gmqtt").setLevel(logging.CRITICAL)  # the line below says what went wrong

    async def connect():
        # Another client id: connecting as the service's own would take over its session.
        client = gmqtt.Client(f"{s.client_id}-check", clean_session=True, session_expiry_interval=0)
        if s.username:
            client.set_auth_credentials(s.username, s.password or None)
        await asyncio.wait_for(client.connect(s.host, s.port, ssl=tls_context(s) or False, version=MQTTv50),
                               s.connect_timeout)
        await client.disconnect()

    try:
        asyncio.run(connect())
    except gmqtt.MQTTConnectError as exc:
        raise CheckFailed(f"{s.host}:{s.port} refused the connection: {exc}") from None
    except ssl.SSLError as exc:
        raise CheckFailed(f"{s.host}:{s.port}: {explain(exc, s)}") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise CheckFailed(f"cannot reach {s.host}:{s.port}: {exc or 'no answer'}") from None
    return (f"{s.host}:{s.port} accepts our MQTT 5 connection" + (" over TLS" if s.tls else "")
            + (f" as {s.username}" if s.username else ""))
