"""Where messages go, and which requests are taken: pure, no broker.

The topic tables come from the device types (readings by type; requests and replies per app), the
subscriptions from them and the shared group. A request is admitted as a `Request` for the query
pool, or refused here with what the app is told (a `Refusal`), or ignored (None) when no reply
topic could name one app."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.mqtt.packets import publish_size, topic_problem
from actors.mqtt.ratelimit import RateLimiter
from actors.protocol.messages import Request
from actors.protocol.requests import stems
from actors.runtime.peers import ingest_name
from actors.runtime.settings import AppsSettings

log = logging.getLogger(__name__)
APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the last level of a request topic


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request answered here with an error, on `reply_topic`."""
    reply_topic: str
    correlation: bytes | None
    code: str
    message: str
    kind: str  # what it asked for: a device type, or the catalogue


class Router:
    def __init__(self, apps: AppsSettings, shared_group: str = "", limiter: RateLimiter | None = None,
                 types: DeviceTypes = BUILTIN_TYPES):
        self.reading_kinds = {topic: d.name for topic, d in types.by_reading_topic.items()}
        self.reading_routes = {topic: ingest_name(name) for topic, name in self.reading_kinds.items()}
        self.stems = stems(types)
        self._request_stems = {request: kind for kind, (request, _) in self.stems.items()}
        topics = [*self.reading_routes, *(f"{stem}/+" for stem in self._request_stems)]
        # Several instances in one shared group take turns: the broker hands each message to one.
        self.subscriptions = [f"$share/{shared_group}/{t}" for t in topics] if shared_group else topics
        self.limiter = limiter or RateLimiter(apps.rate, apps.burst)
        self._limited: set[str] = set()  # apps over their rate now: logged once per episode

    def admit(self, ack_id: int, topic: str, payload: bytes, response_topic=None, correlation=None,
              max_packet: int | None = None) -> Request | Refusal | None:
        """A request on `topic`, with its MQTT 5 Response Topic and Correlation Data if any, under a
        broker whose Maximum Packet Size is `max_packet` (None: no limit)."""
        stem, _, app_id = topic.rpartition("/")
        device = self._request_stems.get(stem)
        if device is None:
            log.warning("ignored a message on unexpected topic %r", topic)
            return None
        if not APP_ID.fullmatch(app_id):  # its reply topic would not be a plain name of one app
            log.warning("ignored a request on %r: an app id is 1-64 letters, digits, '_' or '-'", topic)
            return None
        reply_topic = f"{self.stems[device][1]}/{app_id}"
        if not isinstance(correlation, (bytes, type(None))):
            correlation = None
        if response_topic is not None:  # MQTT 5 request/response: only inside this app's own reply topics
            if (problem := self.response_topic_problem(response_topic, app_id)) is not None:
                log.warning("refused a request on %r: its response topic %r %s", topic, response_topic, problem)
                return Refusal(reply_topic, correlation, "invalid_response_topic", f"the Response Topic {problem}",
                               device)
            reply_topic = response_topic
        if not self._within_rate(app_id):
            return Refusal(reply_topic, correlation, "rate_limited",
                           f"more than {self.limiter.rate:g} requests per second (bursts of "
                           f"{self.limiter.burst}); slow down", device)
        # The largest reply payload the broker takes on that topic, with that correlation data.
        room = max_packet - publish_size(reply_topic, b"", 0, correlation) if max_packet else None
        return Request(ack_id, topic, device, app_id, payload, reply_topic, correlation, room)

    def _within_rate(self, app_id: str) -> bool:
        if self.limiter.allow(app_id):
            if app_id in self._limited:
                self._limited.discard(app_id)
                log.info("app %s is within its request rate again", app_id)
            return True
        if app_id not in self._limited:
            self._limited.add(app_id)
            log.warning("app %s asks more than %g requests/s: its requests get rate_limited replies",
                        app_id, self.limiter.rate)
        return False

    def response_topic_problem(self, asked, app_id: str) -> str | None:
        """Why the service will not reply on `asked` for app `app_id`; None if it may."""
        if isinstance(asked, str) and not any(asked == f"{reply}/{app_id}" or asked.startswith(f"{reply}/{app_id}/")
                                              for _, reply in self.stems.values()):
            return f"is not one of app {app_id}'s reply topics (home/data<type>/{app_id}[/...])"
        return topic_problem(asked)
