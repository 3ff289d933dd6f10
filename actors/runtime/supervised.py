"""What every supervised actor shares: telling its supervisor when it crashes (with the messages it
was handling, its suspects, for the delivery limit), handling marks, and timers."""

from __future__ import annotations

import threading

import pykka

from actors.protocol.messages import ChildFailed
from actors.runtime.handling import Mark, Marks


class Supervised(pykka.ThreadingActor):
    """An actor that tells its supervisor when it crashes. Pykka restarts nothing by itself:
    the supervisor starts a new instance under the same name."""

    def __init__(self, name: str, supervisor: pykka.ActorRef | None = None, marks: Marks | None = None):
        super().__init__()
        self.name = name
        self.supervisor = supervisor
        # Ack ids of the messages being handled right now: if this actor crashes, they are the
        # suspects, and a message that keeps crashing actors is set aside (the delivery limit).
        # The mark names them too, for the next process if this one dies (handling.py).
        self.suspects: tuple[int, ...] = ()
        self.mark = marks.mark(name) if marks is not None else Mark(None)

    def handling(self, ack_ids: tuple[int, ...]) -> None:
        self.suspects = ack_ids
        self.mark.set(ack_ids)

    def handled(self) -> None:
        self.suspects = ()
        self.mark.clear()

    def address(self):
        """What peers use to reach this actor (through Peers); waited on by the supervisor
        to know the actor has started."""
        return self.actor_ref

    def tell_later(self, seconds: float, message) -> threading.Timer:
        """Tell this actor `message` in `seconds` (scheduled passes, retries). Cancel the timer
        on stop; a message due after the actor has stopped is dropped."""
        def due():
            try:
                self.actor_ref.tell(message)
            except pykka.ActorDeadError:
                pass
        timer = threading.Timer(seconds, due)
        timer.daemon = True
        timer.start()
        return timer

    def on_failure(self, exception_type, exception_value, traceback):
        if self.supervisor is not None and self.supervisor.is_alive():
            self.supervisor.tell(ChildFailed(self.name, self.actor_urn, repr(exception_value), self.suspects))
        self.mark.close()  # what it holds stays in the file: the link's successor reads it (Marks.left_by)
