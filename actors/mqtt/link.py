"""The MQTT link: the only actor that talks to the broker. It runs the session (session.py) in an
asyncio loop on a thread of its own; the other actors reach that loop through its LoopHandle, so
acknowledgements keep flowing while the actor's own thread is busy stopping."""

from __future__ import annotations

import asyncio
import logging
import threading

import pykka

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.mqtt.session import OUTBOX_DRAIN, Session
from actors.mqtt.status import StatusReport
from actors.protocol.messages import Crash, Retired
from actors.runtime.handling import Marks
from actors.runtime.peers import Peers
from actors.runtime.settings import AppsSettings, LimitsSettings, MqttSettings, StatusSettings
from actors.runtime.supervised import Supervised

log = logging.getLogger(__name__)


class LoopHandle:
    """How the writer and the query actors reach the session: straight into its event loop,
    so acknowledgements keep flowing while the link's actor thread is busy stopping."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: Session):
        self._loop = loop
        self._session = session

    def tell(self, message) -> None:
        try:
            self._loop.call_soon_threadsafe(self._session.receive, message)
        except RuntimeError:  # the loop has closed
            raise pykka.ActorDeadError("the MQTT link has stopped") from None


class MqttLink(Supervised):
    def __init__(self, name: str, settings: MqttSettings, status: StatusSettings, apps: AppsSettings,
                 limits: LimitsSettings, peers: Peers, supervisor=None, retire: bool = False, marks: Marks | None = None,
                 linger: float = 0.0, report: StatusReport | None = None, max_waiting: int = 250_000,
                 types: DeviceTypes = BUILTIN_TYPES):
        """`linger`: how long sparse readings wait for others before they are handed on (handover.py);
        `report`: the process's status (see Session); `max_waiting`: see Outbox."""
        # What the process (or the link) before this one died handling: read before this link marks.
        self.died_with = marks.left_by(name) if marks is not None else frozenset()
        super().__init__(name, supervisor, marks)
        self.retire = retire
        self.linger = linger
        self.settings = settings
        self.apps = apps
        self.limits = limits
        self.status_settings = status
        self.peers = peers
        self.report = report or StatusReport(settings.client_id, status)
        self.max_waiting = max_waiting
        self.types = types
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._session: Session | None = None

    def on_start(self):
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="mqtt-link")
        self._thread.start()
        ready.wait()
        if self._session is None:
            raise RuntimeError("the MQTT link's event loop did not start")

    def address(self):
        return LoopHandle(self._loop, self._session)

    def on_receive(self, message):
        if isinstance(message, Crash):
            raise RuntimeError(message.error)
        else:
            log.warning("MQTT link ignored an unexpected message: %r", message)

    def on_stop(self):
        self._stop_loop(self.settings.drain_timeout + OUTBOX_DRAIN + 2)

    def on_failure(self, exception_type, exception_value, traceback):
        self._stop_loop(5)
        super().on_failure(exception_type, exception_value, traceback)

    def _stop_loop(self, timeout: float) -> None:
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass  # the loop already ended
            self._thread.join(timeout)

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor through the actor
            log.error("MQTT link failed: %s", exc)
            try:
                self.actor_ref.tell(Crash(str(exc)))
            except pykka.ActorDeadError:
                pass
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        on_retired = (lambda: self.supervisor.tell(Retired())) if self.retire else None
        self._session = Session(self.settings, self.status_settings, self.peers, self.apps, self.limits, on_retired,
                                self.died_with, self.mark, self.linger, self.report, self.max_waiting,
                                self.types)
        # Reachable before it connects: the writer's answers to what the broker delivers first
        # (Struck, Committed) must not be dropped as if told to a link that has not started.
        self.peers.register(self.name, self.address())
        ready.set()
        await self._session.run(self._stop_event)
