"""What the MQTT link holds: pure, no broker, no actors. `InFlight` is the acknowledgement ledger:
every message taken from the broker and not yet acknowledged, with what is needed to hand it on
again if the actor holding it crashes. The delivery limit, which reads it, is limit.py."""

from __future__ import annotations

from dataclasses import dataclass

from actors.protocol.messages import Inbound, Request


@dataclass(slots=True)
class Held:
    """One message in hand."""
    packet_id: int | None  # the broker's packet id; None at QoS 0 (nothing to acknowledge)
    message: Inbound | Request
    route: str  # the actor it was handed to: "ingest/<type>" or "query/<n>"
    fingerprint: bytes | None = None  # set once it has failed before, or came back as a redelivery
    awaiting: str | None = None  # "count" or "look up": waiting for the writer's Struck before going on
    since: float = 0.0  # a request: when it came (time.monotonic), for the reply's latency

    @property
    def is_request(self) -> bool:
        return isinstance(self.message, Request)



class InFlight:
    """ack id -> Held, for every message taken and not yet acknowledged. With `limit` messages in
    hand the link stops reading the socket, and reads again once half of them are released."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held: dict[int, Held] = {}
        self.peak = 0

    def __len__(self) -> int:
        return len(self.held)

    def add(self, ack_id: int, held: Held) -> bool:
        """True when that fills the ledger: time to stop reading."""
        self.held[ack_id] = held
        n = len(self.held)
        if n > self.peak:
            self.peak = n
        return n >= self.limit

    def get(self, ack_id: int) -> Held | None:
        return self.held.get(ack_id)

    def reading_before(self, ack_id: int, route: str | None = None, key: bytes | None = None) -> bool:
        """Whether a reading received before `ack_id` is still in hand (not yet committed), of
        those handed to `route` (None: any) whose raw payload holds `key` (None: any). A payload
        with a JSON escape may spell the key otherwise: it counts. Ack ids grow with arrival and
        the ledger keeps that order, so this looks at the older messages only."""
        for other, held in self.held.items():
            if other >= ack_id:
                return False
            if held.is_request or (route is not None and held.route != route):
                continue
            if key is None or key in (payload := held.message.payload) or b"\\" in payload:
                return True
        return False

    @property
    def full(self) -> bool:
        return len(self.held) >= self.limit

    @property
    def roomy(self) -> bool:
        return len(self.held) <= self.limit // 2

    def release(self, ack_ids) -> list[Held]:
        """Those of `ack_ids` still in hand (the others were given up with a lost connection, or
        answered already: a message handed on twice is acknowledged once)."""
        pop = self.held.pop
        return [h for h in (pop(ack_id, None) for ack_id in ack_ids) if h is not None]

    def abandon(self) -> list[Held]:
        """The connection is gone: nothing in hand can be acknowledged on it any more."""
        held, self.held = list(self.held.values()), {}
        return held
