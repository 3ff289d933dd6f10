"""`python system.py`, with a test-only fault hook: a message whose payload holds one of these
markers crashes what handles it, every time, as a bug would. Started by the tests in place of
system.py (tests/faults/test_poison.py).

- POISON-INGEST: the ingest actor crashes while validating the batch that holds it;
- POISON-WRITER: the writer crashes while committing the transaction that holds it;
- POISON-QUERY: the query actor crashes while answering it;
- POISON-EXIT: the whole process dies (exit 70) while handling it, reading or request;
- POISON-OVERSIZE: a request whose reply is too large for the broker, published all the same
  (the outbox's size check is bypassed for it): the broker drops the connection."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import system  # noqa: E402
from actors.ingest import IngestActor  # noqa: E402
from actors.mqtt.outbox import Outbox  # noqa: E402
from actors.protocol.messages import Reply, Request  # noqa: E402
from actors.query import QueryActor  # noqa: E402
from actors.writer import WriterActor  # noqa: E402

_validate, _on_receive, _write = IngestActor.validate, QueryActor.on_receive, WriterActor._write
_fits = Outbox.fits


def validate(self, batch):
    payloads = [item.payload for item in batch.items]
    if any(b"POISON-EXIT" in p for p in payloads):
        os._exit(70)
    if any(b"POISON-INGEST" in p for p in payloads):
        raise RuntimeError("injected: a reading that crashes the ingest actor")
    return _validate(self, batch)


def on_receive(self, message):
    if isinstance(message, Request):
        if b"POISON-EXIT" in message.payload or b"POISON-QUERY" in message.payload:
            self.handling((message.ack_id,))  # as the real on_receive does before answering
        if b"POISON-EXIT" in message.payload:
            os._exit(70)
        if b"POISON-QUERY" in message.payload:
            raise RuntimeError("injected: a request that crashes the query actor")
        if b"POISON-OVERSIZE" in message.payload:
            self.peers.tell("link", Reply(message.ack_id, b'{"POISON-OVERSIZE": "' + b"x" * 10_000 + b'"}'))
            return None
    return _on_receive(self, message)


def fits(self, topic, payload, *args):
    return b"POISON-OVERSIZE" in payload or _fits(self, topic, payload, *args)


def write(self, batches, *args):
    if any("POISON-WRITER" in str(row) for b in batches for row in b.rows):
        raise RuntimeError("injected: a reading that crashes the writer")
    return _write(self, batches, *args)


IngestActor.validate, QueryActor.on_receive, WriterActor._write = validate, on_receive, write
Outbox.fits = fits

if __name__ == "__main__":
    sys.exit(system.main())
