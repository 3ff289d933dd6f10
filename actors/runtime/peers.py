"""How actors reach each other: their names, defined once, and Peers, the address book."""

from __future__ import annotations

import itertools
import logging
import threading

import pykka

log = logging.getLogger(__name__)

# The children's names, defined once: the supervisor's child specs give each actor its own, and
# actors reach each other by them.
WRITER, LINK, BACKUP, RETENTION, AVAILABILITY = "writer", "link", "backup", "retention", "availability"
QUERY_POOL = "query"  # its members are query/0, query/1, ...


def ingest_name(device_type: str) -> str:
    return f"ingest/{device_type}"


def pool_member(pool: str, index: int) -> str:
    return f"{pool}/{index}"


class Peers:
    """The current address of every child, by name ("writer", "ingest/power", "query/0", "link").

    The supervisor replaces an entry when it restarts a child, so senders always reach the
    live instance. A message sent to an instance that has just died is dropped: it held only
    readings and requests the broker has not been acknowledged for, and the supervisor tells the
    MQTT link, which hands them on again. A name that was never registered is a bug, not a peer
    that died: telling it raises KeyError."""

    def __init__(self):
        self._refs: dict[str, object] = {}
        self._pools: dict[str, itertools.cycle] = {}
        self._lock = threading.Lock()

    def expect(self, names) -> None:
        """The children to come (from the supervisor's child specs): until each has started, what
        is told to it is dropped, as to a peer that died."""
        for name in names:
            self._refs.setdefault(name, None)

    def register(self, name: str, ref) -> None:
        """`ref` is anything with `tell(message)`: an ActorRef, or the MQTT link's loop handle."""
        self._refs[name] = ref

    def define_pool(self, prefix: str, size: int) -> None:
        self._pools[prefix] = itertools.cycle([pool_member(prefix, i) for i in range(size)])

    def knows(self, name: str) -> bool:
        """Whether a child of that name is part of this service (started or to come)."""
        return name in self._refs

    def tell(self, name: str, message) -> bool:
        if name not in self._refs:
            raise KeyError(f"no actor is named {name!r} (known: {', '.join(self._refs) or 'none'})")
        try:
            ref = self._refs[name]
            if ref is None:
                raise pykka.ActorDeadError(name)  # not started yet
            ref.tell(message)
            return True
        except pykka.ActorDeadError:
            log.debug("%s is not running; dropped %s (the broker will deliver it again)",
                      name, type(message).__name__)
            return False

    def ask(self, name: str, message, timeout: float):
        """Send and wait for the answer: for the rare exchange whose sender must wait (the
        retention actor's deletes). pykka.ActorDeadError when `name` is not running, KeyError if it never was."""
        if name not in self._refs:
            raise KeyError(f"no actor is named {name!r}")
        if (ref := self._refs[name]) is None:
            raise pykka.ActorDeadError(name)
        return ref.ask(message, timeout=timeout)

    def tell_pool(self, prefix: str, message) -> str:
        """Round-robin over a pool of actors (the query actors); the name of the one told."""
        with self._lock:
            name = next(self._pools[prefix])
        self.tell(name, message)
        return name
