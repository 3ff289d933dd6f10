"""Handling marks: which messages each actor is handling right now, kept where a process that
dies leaves them behind, so that the next process knows what the dead one died of.

An actor marks the broker's packet ids of what it takes in hand (an ingest batch while it is
validated, a transaction's rows until its statements have run, a request while it is answered)
and clears the mark once done: a small write to a file of its own, no fsync (a process that dies
leaves its writes in the page cache; only the machine's death loses them, and that is no
message's fault). A process killed from outside is usually waiting (on a commit's fsync, on the
network) with nothing marked, so it blames nothing; one that dies of a message dies with that
message marked, every time. The broker redelivers a message with its original packet id on
the resumed session, which is how the link recognises it (actors/mqtt/limit.py).

Ack ids carry the packet id in their low 16 bits (`packet_id`), so every actor can mark what it
holds from the ack ids it already has."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)
PACKET_BITS = 16
PACKET_MASK = (1 << PACKET_BITS) - 1


def ack_id(received: int, packet_id: int | None) -> int:
    """The ack id of the `received`-th message: arrival order above, the packet id (0 at QoS 0) below."""
    return received << PACKET_BITS | (packet_id or 0)


def packet_id(ack: int) -> int:
    return ack & PACKET_MASK


class Mark:
    """One actor's mark: a count and that many packet ids, rewritten in place."""

    def __init__(self, path: Path | None):
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) if path else None
        self._marked = False

    def set(self, ack_ids) -> None:
        if not ack_ids:  # e.g. a transaction of delivery counts only
            self.clear()
        elif self._fd is not None:
            ids = [a & PACKET_MASK for a in ack_ids]
            os.pwrite(self._fd, struct.pack(f"<I{len(ids)}H", len(ids), *ids), 0)
            self._marked = True

    def clear(self) -> None:
        if self._marked:
            os.pwrite(self._fd, b"\0\0\0\0", 0)
            self._marked = False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(path: Path) -> set[int]:
    try:
        data = path.read_bytes()
    except OSError:
        return set()
    if len(data) < 4:
        return set()
    (n,) = struct.unpack_from("<I", data)
    n = min(n, (len(data) - 4) // 2)
    return set(struct.unpack_from(f"<{n}H", data, 4)) - {0}


class Marks:
    """The marks of one service instance (one broker session: one client id), in a directory
    beside the database. Read once when the process starts, before any actor marks anything."""

    def __init__(self, beside: str, client_id: str):
        digest = hashlib.blake2b(client_id.encode(), digest_size=6).hexdigest()
        directory = Path(beside).resolve().parent / f".handling-{digest}"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            self.directory: Path | None = directory
        except OSError as exc:
            log.warning("cannot keep handling marks in %s (%s): after a process death, every message the "
                        "broker delivers again counts as a suspect of it", directory, exc)
            self.directory = None
        self._left: dict[str, set[int]] | None = None
        if self.directory is not None:
            self._left = {path.name: _read(path) for path in self.directory.iterdir()}

    def mark(self, name: str) -> Mark:
        """The mark of actor `name` (a new instance's starts empty)."""
        return Mark(self._file(name) if self.directory else None)

    def _file(self, name: str) -> Path:
        return self.directory / name.replace("/", "-")

    def left_by(self, name: str) -> frozenset[int] | None:
        """The packet ids the predecessor of actor `name` had marked: the first time, all that the
        dead process before this one left (every actor's); after that (`name` crashed and is
        started again), those of the crashed instance alone. Read before the successor marks
        anything. None when nobody can tell (no marks kept)."""
        if self.directory is None:
            return None
        if self._left is not None:
            left, self._left = self._left, None
            return frozenset().union(*left.values())
        return frozenset(_read(self._file(name)))
