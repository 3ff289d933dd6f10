"""The supervisor: starts the children in dependency order (writer, query pool, backup,
retention, availability, one ingest actor per device type, MQTT link), stops them in reverse, and restarts a child that crashes
(one_for_one). More than `max_restarts` crashes within `restart_window` seconds ends the
process with exit code 1: systemd's Restart=on-failure is the level above."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import pykka

from actors.availability import AvailabilityActor
from actors.backup import BackupActor
from actors.ingest import IngestActor
from actors.mqtt import MqttLink
from actors.mqtt.status import StatusReport
from actors.protocol.clock import ClockCheck
from actors.protocol.messages import ChildFailed, Restarted, Retired
from actors.protocol.sitetime import SiteTime
from actors.query import QueryActor, QueryRules
from actors.retention import RetentionActor, RetentionNow
from actors.runtime.handling import Marks
from actors.runtime.metrics import REFRESH, MetricsServer
from actors.runtime.peers import (
    AVAILABILITY,
    BACKUP,
    LINK,
    QUERY_POOL,
    RETENTION,
    WRITER,
    Peers,
    ingest_name,
    pool_member,
)
from actors.runtime.settings import Settings
from actors.storage.models import connect_database, is_sqlite
from actors.storage.readgate import ReadGate
from actors.writer import WriterActor

log = logging.getLogger(__name__)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 12.0  # all the children together


@dataclass(frozen=True)
class ChildSpec:
    name: str
    start: Callable[[str, pykka.ActorRef], pykka.ActorRef]  # (name, supervisor) -> a new, started instance
    start_timeout: float | None = START_TIMEOUT  # None: as long as it takes (a schema upgrade)
    # Told once it has started and is registered: its first work. Told by itself in on_start, it
    # could queue ahead of the supervisor's ask whether it has started (a retention pass over
    # millions of rows outlasted START_TIMEOUT that way, and start-up failed).
    then: object | None = None


class Supervisor(pykka.ThreadingActor):
    def __init__(self, settings: Settings, exit_process: Callable[[int], None], specs=None, retire: bool = False):
        """`retire`: run only to hand over and end this instance's broker session (see MqttLink)."""
        super().__init__()
        self.settings = settings
        self.retire = retire
        self.exit_process = exit_process  # tells system.py to stop everything and exit with a code
        self.peers = Peers()
        self._specs = specs
        self._children: dict[str, pykka.ActorRef] = {}  # in start order
        self._crashes: collections.deque[float] = collections.deque()
        self._starts: collections.Counter[str] = collections.Counter()  # instances started, by child
        self._db = None
        self._stopping = threading.Event()  # the writer stops waiting for locks
        # What the process says about itself (status, stats, metrics): it outlives any one child.
        self.report = StatusReport(settings.mqtt.client_id, settings.status)
        self.metrics = MetricsServer(self.report, settings) if settings.metrics.listen else None
        if self.metrics is not None:
            self.report.refresh = REFRESH

    def child_specs(self) -> list[ChildSpec]:
        s, peers = self.settings, self.peers
        # A connection per thread that uses one: writer, query actors, retention, and a spare.
        self._db = connect_database(s.database, s.queries.pool_size + 3, s.types)
        db, gate, site = self._db, ReadGate(), SiteTime(s.site.timezone)
        marks = Marks(s.database.path, s.mqtt.client_id)  # what a process that died was handling
        # The writer's start upgrades an older schema, which can take minutes on a big database (its
        # waits for someone else's lock are bounded on their own).
        # A restarted writer skips quick_check: the file was checked at this process's start.
        specs = [ChildSpec(WRITER, lambda name, sup: WriterActor.start(name, db, s.database, peers, sup, gate,
                                                                       self._stopping, marks,
                                                                       check=not self._starts[WRITER], site=site,
                                                                       types=s.types),
                           None)]
        live_types = frozenset(name for name in s.types if s.devices.stale_after(name))
        rules = QueryRules(s.limits.max_request_bytes, s.queries.max_reply_bytes, s.queries.max_page_records,
                           s.apps.readable, s.queries.max_summary_buckets, live_types, s.types, site)
        specs += [ChildSpec(pool_member(QUERY_POOL, i),
                            lambda name, sup: QueryActor.start(name, db, peers, rules, sup, gate, marks))
                  for i in range(s.queries.pool_size)]
        # The status outlives a link that crashes: its start time, connections and ack ids are the process's.
        report = self.report
        if not self.retire:  # housekeeping is for instances that stay
            if is_sqlite(db):  # a database server has its own backups (pg_dump)
                specs += [ChildSpec(BACKUP, lambda name, sup: BackupActor.start(name, s.database.path, s.backup, sup,
                                                                                report.housekept))]
            specs += [ChildSpec(RETENTION, lambda name, sup: RetentionActor.start(name, db, s.retention, peers, sup,
                                                                                  gate, report.housekept, s.types),
                                then=RetentionNow())]
            if live_types:
                specs += [ChildSpec(AVAILABILITY, lambda name, sup: AvailabilityActor.start(name, db, s.devices, peers,
                                                                                            sup))]
        clock = ClockCheck(s.limits.earliest_date, s.limits.max_clock_ahead, site)
        specs += [ChildSpec(ingest_name(d.name), lambda name, sup, d=d: IngestActor.start(
                      name, d, peers, s.limits.max_reading_bytes, clock, supervisor=sup, marks=marks))
                  for d in s.types.values()]
        specs += [ChildSpec(LINK, lambda name, sup: MqttLink.start(name, s.mqtt, s.status, s.apps, s.limits, peers,
                                                                   sup, self.retire, marks, s.database.commit_linger,
                                                                   report, s.devices.max_known + 1000, s.types))]
        return specs

    def on_start(self):
        if self.metrics is not None:
            try:
                self.metrics.start()
            except OSError as exc:  # the service's work goes on; Prometheus sees the target down
                log.error("metrics: cannot listen on %s (%s); running without /metrics", self.settings.metrics.listen,
                          exc)
                self.metrics = None
        try:
            if self._specs is None:
                self._specs = self.child_specs()
            self.peers.expect(spec.name for spec in self._specs)
            self.peers.define_pool(QUERY_POOL, sum(1 for c in self._specs if c.name.partition("/")[0] == QUERY_POOL))
            for spec in self._specs:
                self._start(spec)
            log.info("service started: %s", ", ".join(self._children))
        except Exception as exc:  # noqa: BLE001 - reported, and the process exits 1
            log.critical("start-up failed: %s", exc)
            self._stop_children()
            self.exit_process(1)

    def on_stop(self):
        self._stop_children()
        if self.metrics is not None:
            self.metrics.stop()
        log.info("service stopped")

    def on_failure(self, exception_type, exception_value, traceback):
        self._stop_children()
        self.exit_process(1)

    def on_receive(self, message):
        if isinstance(message, ChildFailed):
            self._child_failed(message)
        elif isinstance(message, Retired):
            self.exit_process(0)
        else:
            log.warning("supervisor ignored an unexpected message: %r", message)

    def _start(self, spec: ChildSpec) -> None:
        ref = spec.start(spec.name, self.actor_ref)
        try:
            # Waits for on_start; an actor whose on_start failed is dead by the time this asks.
            address = ref.proxy().address().get(timeout=spec.start_timeout)
        except (pykka.ActorDeadError, pykka.Timeout):
            ref.stop(block=False)
            raise RuntimeError(f"{spec.name} did not start (see the error above)") from None
        self._children[spec.name] = ref
        self._starts[spec.name] += 1
        self.peers.register(spec.name, address)
        if spec.then is not None:
            ref.tell(spec.then)

    def _child_failed(self, failed: ChildFailed) -> None:
        ref = self._children.get(failed.name)
        if ref is None or ref.actor_urn != failed.urn:
            return  # an instance we have already replaced
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > self.settings.supervisor.restart_window:
            self._crashes.popleft()
        if len(self._crashes) > self.settings.supervisor.max_restarts:
            log.critical("%s crashed (%s): more than %d crashes in %g s; exiting so that systemd "
                         "restarts the service", failed.name, failed.error,
                         self.settings.supervisor.max_restarts, self.settings.supervisor.restart_window)
            self.exit_process(1)
            return
        log.error("%s crashed (%s); restarting it", failed.name, failed.error)
        spec = next(s for s in self._specs if s.name == failed.name)
        try:
            self._start(spec)
        except RuntimeError as exc:
            log.critical("cannot restart %s: %s", failed.name, exc)
            self.exit_process(1)
            return
        if failed.name != LINK:
            # What the crashed actor held was never acknowledged: the link hands it on again.
            if LINK in self._children:
                self.peers.tell(LINK, Restarted(failed.name, failed.suspects))

    def _stop_children(self) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT  # for all of them: system.py exits at its own deadline
        for name, ref in reversed(list(self._children.items())):
            if name == WRITER:  # the last to stop: what it cannot commit now, the broker redelivers
                self._stopping.set()
            try:
                ref.stop(block=True, timeout=max(0.5, deadline - time.monotonic()))
            except pykka.Timeout:
                log.error("%s did not stop in time (busy: it is left to the process's exit)", name)
        self._children.clear()
        if self._db is not None:
            self._db.close()
