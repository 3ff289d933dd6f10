"""What an operator's Prometheus scrapes, and what a load balancer or curl asks: /metrics (the text
format, by prometheus_client), /healthz (the process is alive) and /readyz (connected to the broker
and the writer answering), on a thread of its own ([metrics] settings).

Nothing is counted here: the metrics are the numbers the stats topic publishes (StatusReport.numbers),
read when Prometheus scrapes, as the writer last gave them (every few seconds). Labels are device
types, request kinds, error codes, reason classes and actor names: a few dozen values whatever the fleet."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from actors import __version__
from actors.mqtt.status import StatusReport
from actors.protocol.liveness import epoch
from actors.runtime.settings import Settings
from actors.runtime.settings.values import split_address

log = logging.getLogger(__name__)
PREFIX = "mqtt_client_"
REFRESH = 5.0  # seconds between the writer's numbers while metrics are served (the heartbeat's)


class Numbers:
    """The collector: the report's latest numbers as metric families, with the few facts of this
    machine the alert rules need (readiness, free disk, the backup interval)."""

    def __init__(self, server: MetricsServer):
        self.server = server
        self.report = server.report

    def collect(self):
        info = GaugeMetricFamily(PREFIX + "build_info", "The running version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(PREFIX + "ready", "1 while /readyz says ready.", value=int(self.server.readiness()[0]))
        yield GaugeMetricFamily(PREFIX + "broker_connected", "1 while connected to the broker.",
                                value=int(self.report.connected))
        settings = self.server.settings
        if not settings.database.url:  # SQLite: the disk the database is on
            free = shutil.disk_usage(Path(settings.database.path).resolve().parent).free
            yield GaugeMetricFamily(PREFIX + "database_disk_free_bytes", "Free space on the database's disk.",
                                    value=free)
            yield GaugeMetricFamily(PREFIX + "backup_interval_seconds", "backup.interval_hours (0: no backups).",
                                    value=settings.backup.interval_hours * 3600)
        yield CounterMetricFamily(PREFIX + "broker_connections", "Connections to the broker since the start.",
                                  value=self.report.connections)
        numbers = self.report.latest
        if numbers is None:  # the writer has not answered yet
            return
        yield from self._readings(numbers)
        yield from self._requests(numbers)
        yield from self._writer(numbers)
        yield from self._health(numbers)

    @staticmethod
    def _readings(n: dict):
        received = CounterMetricFamily(PREFIX + "readings_received", "Readings taken from the broker "
                                       "(redeliveries too).", labels=["type"])
        for kind, count in n["received"].items():
            received.add_metric([kind], count)
        stored = CounterMetricFamily(PREFIX + "readings_stored", "Readings stored.", labels=["type"])
        for kind, count in n["stored"].items():
            stored.add_metric([kind], count)
        rejected = CounterMetricFamily(PREFIX + "readings_rejected", "Readings kept in rejected_messages instead, "
                                       "by reason class (set_aside: the delivery limit).", labels=["type", "reason"])
        for kind, reasons in n["rejected_by"].items():
            for reason, count in reasons.items():
                rejected.add_metric([kind, reason], count)
        clock = CounterMetricFamily(PREFIX + "clock_rejected", "Readings refused for their clock.", labels=["type"])
        for kind, count in n["clock_rejected_total"].items():
            clock.add_metric([kind], count)
        devices = GaugeMetricFamily(PREFIX + "devices", "Devices watched for liveness, by state.",
                                    labels=["type", "state"])
        for kind, counts in n["availability"]["by_type"].items():
            devices.add_metric([kind, "live"], counts["watched"] - counts["stale"])
            devices.add_metric([kind, "stale"], counts["stale"])
        last = GaugeMetricFamily(PREFIX + "last_stored_timestamp_seconds", "When readings of the type were last "
                                 "stored (Unix time).", labels=["type"])
        for kind, at in n["last_stored_at"].items():
            last.add_metric([kind], epoch(at))
        yield from (received, stored, rejected, clock, devices, last)

    @staticmethod
    def _requests(n: dict):
        requests = CounterMetricFamily(PREFIX + "requests", "Requests answered, by kind and outcome (ok, or the "
                                       "error code).", labels=["kind", "outcome"])
        for kind, outcomes in n["requests"]["by_kind"].items():
            for outcome, count in outcomes.items():
                requests.add_metric([kind, outcome], count)
        yield requests
        yield histogram(PREFIX + "reply_duration_seconds", "From a request's arrival to its reply.",
                        n["reply_seconds"])

    @staticmethod
    def _writer(n: dict):
        yield CounterMetricFamily(PREFIX + "commits", "Transactions committed.", value=n["commits"])
        yield CounterMetricFamily(PREFIX + "commit_failures", "Commits that failed (retried).",
                                  value=n["commit_failures"])
        yield histogram(PREFIX + "commit_duration_seconds", "How long each commit took.", n["commit_seconds"])
        yield GaugeMetricFamily(PREFIX + "messages_in_hand", "Messages taken from the broker, not yet acknowledged.",
                                value=n["in_hand"])
        yield GaugeMetricFamily(PREFIX + "writer_backlog_rows", "Rows waiting for a commit.", value=n["writer_backlog"])
        yield GaugeMetricFamily(PREFIX + "database_bytes", "The database file and its WAL.", value=n["database_bytes"])
        yield GaugeMetricFamily(PREFIX + "wal_bytes", "The write-ahead log.", value=n["wal_bytes"])
        yield GaugeMetricFamily(PREFIX + "outbox_waiting", "Retained states waiting for the broker's window.",
                                value=n["outbox"]["waiting"])
        yield CounterMetricFamily(PREFIX + "outbox_dropped", "Retained states dropped past the outbox's bound.",
                                  value=n["outbox"]["dropped"])

    @staticmethod
    def _health(n: dict):
        yield CounterMetricFamily(PREFIX + "link_restarts", "MQTT link restarts after a crash.", value=n["link_restarts"])
        restarts = CounterMetricFamily(PREFIX + "actor_restarts", "Actors restarted by the supervisor.",
                                       labels=["actor"])
        for actor, count in n["actor_restarts"].items():
            restarts.add_metric([actor], count)
        yield restarts
        for key, name, what in (("last_retention_at", "last_retention_timestamp_seconds", "retention pass finished"),
                                ("last_backup_at", "last_backup_timestamp_seconds", "backup written and checked"),
                                ("last_checkpoint_at", "last_checkpoint_timestamp_seconds",
                                 "truncating WAL checkpoint")):
            if n[key] is not None:  # none yet since the start: no sample (absent() tells)
                yield GaugeMetricFamily(PREFIX + name, f"When the latest {what} was (Unix time).", value=epoch(n[key]))


def histogram(name: str, documentation: str, h: dict) -> HistogramMetricFamily:
    """A histogram as the stats keep it (a count per bucket) as Prometheus wants it (cumulative)."""
    buckets, total = [], 0
    for bound, count in zip(h["le"], h["counts"]):
        total += count
        buckets.append(("+Inf" if bound == "+Inf" else repr(float(bound)), total))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=h["sum"])


class MetricsServer:
    """The HTTP endpoints, served on a daemon thread while the service runs."""

    def __init__(self, report: StatusReport, settings: Settings, clock=time.monotonic):
        self.report = report
        self.settings = settings
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Numbers(self))
        self.registry.register(ProcessCollector(namespace=PREFIX.rstrip("_"), registry=None))
        self._server: ThreadingHTTPServer | None = None

    def readiness(self) -> tuple[bool, str]:
        """Ready: connected to the broker, and the writer answered within three heartbeats."""
        if not self.report.connected:
            return False, "not connected to the MQTT broker"
        if self.report.latest is None:
            return False, "the database writer has not answered yet"
        silent = self.clock() - self.report.latest_at
        if silent > 3 * REFRESH + 1:
            return False, f"the database writer has not answered for {silent:.0f} s"
        return True, "connected to the broker; the database writer answers"

    def start(self) -> None:
        """Bind and serve; OSError if the address cannot be had (in use, not ours)."""
        self._server = _Server(split_address(self.settings.metrics.listen), _handler(self))
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        log.info("metrics: http://%s/metrics, /healthz and /readyz", self.settings.metrics.listen)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET  # before the socket is made
        super().__init__(address, handler)


def _handler(server: MetricsServer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok: the process is alive\n")
            elif path == "/readyz":
                ready, reason = server.readiness()
                self._send(200 if ready else 503, f"{'ready' if ready else 'not ready'}: {reason}\n".encode())
            else:
                self._send(404, b"not found: /metrics, /healthz or /readyz\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            log.debug("metrics: %s - %s", self.address_string(), format % args)
    return Handler
