"""The ingest actor: validates and normalizes the readings of one device type into rows,
sets aside the ones that cannot be stored (with the reason; those whose clock cannot be right
are counted per device too), and hands both to the writer."""

from __future__ import annotations

import logging

from actors.devices import DeviceType, InvalidMessage
from actors.protocol.clock import ClockCheck
from actors.protocol.messages import ReadingBatch, Rejection, WriteBatch
from actors.runtime.peers import WRITER, Peers
from actors.runtime.supervised import Supervised

log = logging.getLogger(__name__)


class IngestActor(Supervised):
    def __init__(self, name: str, device: DeviceType, peers: Peers, max_bytes: int, clock: ClockCheck,
                 supervisor=None, marks=None):
        super().__init__(name, supervisor, marks)
        self.device = device
        self.peers = peers
        self.max_bytes = max_bytes
        self.clock = clock

    def on_receive(self, message):
        if isinstance(message, ReadingBatch):
            self.handling(tuple(item.ack_id for item in message.items))  # see Supervised.suspects
            batch = self.validate(message)
            self.handled()
            self.peers.tell(WRITER, batch)
        else:
            log.warning("%s ignored an unexpected message: %r", self.name, message)

    def validate(self, batch: ReadingBatch) -> WriteBatch:
        rows, rejections, wrong_clocks = [], [], []
        parse, site, clock_problem = self.device.parse, self.clock.site, self.clock.at(batch.received_at)
        for item in batch.items:
            payload = item.payload
            try:
                if len(payload) > self.max_bytes:
                    payload = payload[:self.max_bytes]  # a huge payload must not bloat the table
                    raise InvalidMessage(f"payload is {len(item.payload)} bytes, over the {self.max_bytes}-byte "
                                         f"limit (only its first {self.max_bytes} bytes are kept)")
                row = parse(payload, site)
                if (problem := clock_problem(row[-2], row[-1])) is not None:
                    wrong_clocks.append(row[0])
                    raise InvalidMessage(problem)
                rows.append(row)
            except InvalidMessage as exc:
                log.warning("rejected a reading on %s: %s", item.topic, exc)
                rejections.append(Rejection(item.topic, payload, str(exc), batch.received_at, item.again))
            except Exception as exc:  # noqa: BLE001 - a bug must cost one reading, kept, not the actor
                log.exception("failed to validate a reading on %s (payload %r); kept in rejected_messages",
                              item.topic, payload[:512])
                rejections.append(Rejection(item.topic, payload, f"internal error while validating: {exc!r}",
                                            batch.received_at, item.again))
        return WriteBatch(self.device.name, tuple(rows), tuple(rejections),
                          tuple(item.ack_id for item in batch.items), batch.alone, batch.forget, tuple(wrong_clocks))
