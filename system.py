"""The IoT data service: MQTT readings into SQLite, and answers to mobile apps.

Run `python system.py [--config PATH]`. This file only wires things together: settings,
logging, signals and the supervisor actor, which starts and watches everything else."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading

import pykka

from actors.runtime.check import check_config
from actors.runtime.logs import configure_logging
from actors.runtime.notify import notify
from actors.runtime.settings import SettingsError, describe_url, load_settings
from actors.storage.redate import redate_command
from actors.supervisor import Supervisor

log = logging.getLogger("system")
EXIT_CONFIG = 2  # bad settings: restarting will not help (see RestartPreventExitStatus)
STOP_DEADLINE = 14.0  # seconds from SIGTERM to exit, whatever is in flight (systemd allows 30)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ExitCode:
    """Set once, by a signal (0) or by the supervisor (1); the main thread waits on it."""

    def __init__(self):
        self._event = threading.Event()
        self.code = 0

    def set(self, code: int) -> None:
        if not self._event.is_set():
            self.code = code
            self._event.set()

    def wait(self) -> int:
        self._event.wait()  # a signal's handler runs inside the wait (waking twice a second cost ~0.02% of a core)
        return self.code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="PATH", help="settings file over the defaults in settings.toml")
    parser.add_argument("--check-config", action="store_true",
                        help="check the settings, the database and the broker, then exit (0: all good)")
    parser.add_argument("--retire", action="store_true",
                        help="remove this instance (its MQTT_CLIENT_ID) for good: store and answer what the "
                             "broker kept for it, end its session, exit 0; stop the running service first")
    parser.add_argument("--redate", action="store_true",
                        help="move the stored readings to the site's calendar (site.timezone): their dates and "
                             "the summaries' hours, in one transaction; stop the running service first")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"{'FAILED  settings' if args.check_config else 'settings error'}: {exc}", file=sys.stderr)
        return EXIT_CONFIG  # a check and a start agree: restarting will not help
    if args.check_config:
        return 0 if check_config(settings) else 1
    if args.redate:
        return redate_command(settings)
    configure_logging(settings.logging)
    for warning in settings.warnings:
        log.warning("settings: %s", warning)

    exit_code = ExitCode()
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, frame: exit_code.set(0))

    log.info("starting: broker %s:%s, client id %s, database %s", settings.mqtt.host,
             settings.mqtt.port, settings.mqtt.client_id,
             describe_url(settings.database.url) if settings.database.url else settings.database.path)
    # Threads hand the GIL over every 5 ms by default; a reply waiting on it showed up as a
    # 10+ ms p99. 1 ms brought the p99 of a 1,440-reading reply to 8.8 ms at no measurable cost.
    sys.setswitchinterval(0.001)
    # What start-up made lives as long as the process: the collector need not scan it again. And
    # the service makes short-lived containers by the thousand (a reply's rows and records, a
    # burst's readings) but few cycles: collecting the youngest every 20,000 of them instead of 700
    # took 5% off a 1,440-reading reply's instructions.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    if args.retire:
        log.info("retiring instance %s: taking over its session to hand over what the broker kept for it",
                 settings.mqtt.client_id)
    # The stop signals go to the main thread alone, asleep in exit_code.wait(): the threads started from
    # here on block them (they inherit the mask). One the kernel handed another thread would set
    # Python's flag there and leave the main thread asleep: under load a SIGTERM once went unanswered
    # for 15 s. One that comes meanwhile waits, pending, until the main thread unblocks it.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    supervisor = Supervisor.start(settings, exit_code.set, retire=args.retire)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = exit_code.wait()
    # Whatever is in flight (a retention pass, a commit waiting for a lock), the process ends in
    # time: what was not committed is not acknowledged, and the broker delivers it again. Armed
    # before anything else, a log line included: a write to a stalled disk or pipe may block.
    deadline = threading.Timer(STOP_DEADLINE, _exit_now, (code,))
    deadline.daemon = True
    deadline.start()
    notify("STOPPING=1")
    log.info("stopping (exit code %d)", code)
    try:
        supervisor.stop(block=True, timeout=STOP_DEADLINE)
    except pykka.Timeout:
        log.error("the supervisor did not stop in time")
    pykka.ActorRegistry.stop_all(block=True, timeout=1)
    return code


def _exit_now(code: int) -> None:
    """Exit now. The last log line gets half a second on a thread of its own: logging takes locks
    that a thread stuck in a write may hold, and the exit must not wait for them."""
    def last_words():
        log.error("not stopped within %g s of the signal; exiting anyway (what was not committed is "
                  "delivered again)", STOP_DEADLINE)
        logging.shutdown()
    words = threading.Thread(target=last_words, daemon=True)
    words.start()
    words.join(0.5)
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
