"""The supervisor, with small fake children that record their lives."""

import dataclasses
import queue
import threading

from conftest import wait_until

from actors.runtime.settings import load_settings
from actors.runtime.supervised import Supervised
from actors.supervisor import ChildSpec, Supervisor


class Child(Supervised):
    def __init__(self, name, events, supervisor, fail_start=False):
        super().__init__(name, supervisor)
        self.events, self.fail_start = events, fail_start

    def on_start(self):
        if self.fail_start:
            raise OSError("no such device")
        self.events.put(("start", self.name))

    def on_stop(self):
        self.events.put(("stop", self.name))

    def on_receive(self, message):
        if message == "crash":
            raise ValueError("boom")
        self.events.put(("got", self.name, message))


class Exit:
    def __init__(self):
        self.codes = queue.Queue()

    def __call__(self, code):
        self.codes.put(code)


def supervise(names, max_restarts=3, fail_start=()):
    settings = load_settings(environ={})
    settings = dataclasses.replace(settings, supervisor=dataclasses.replace(
        settings.supervisor, max_restarts=max_restarts, restart_window=3600))
    events, exit_process = queue.Queue(), Exit()
    specs = [ChildSpec(n, lambda name, sup: Child.start(name, events, sup, fail_start=name in fail_start))
             for n in names]
    return Supervisor.start(settings, exit_process, specs), events, exit_process


def drain(events):
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


def test_children_start_in_order_and_stop_in_reverse():
    sup, events, _ = supervise(["writer", "query/0", "ingest/power", "link"])
    sup.stop()
    assert drain(events) == [("start", "writer"), ("start", "query/0"), ("start", "ingest/power"),
                             ("start", "link"), ("stop", "link"), ("stop", "ingest/power"),
                             ("stop", "query/0"), ("stop", "writer")]


def test_a_crashed_child_is_replaced_and_peers_reach_the_new_instance():
    sup, events, exit_process = supervise(["writer", "query/0"])
    peers = sup.proxy().peers.get()
    assert [events.get(timeout=5) for _ in range(2)] == [("start", "writer"), ("start", "query/0")]
    peers.tell("query/0", "crash")
    assert events.get(timeout=10) == ("start", "query/0")  # one_for_one: only the crashed child
    wait_until(lambda: peers.tell("query/0", "hello"), what="the new instance to be registered")
    assert events.get(timeout=10) == ("got", "query/0", "hello")
    assert exit_process.codes.empty()


def test_past_the_restart_limit_the_process_is_told_to_exit_non_zero():
    sup, events, exit_process = supervise(["writer"], max_restarts=2)
    peers = sup.proxy().peers.get()
    events.get(timeout=5)
    for _ in range(2):  # each crash reaches the newest instance, once it is registered
        wait_until(lambda: peers.tell("writer", "crash"), what="a live writer")
        assert events.get(timeout=10) == ("start", "writer")
    wait_until(lambda: peers.tell("writer", "crash"), what="a live writer")
    assert exit_process.codes.get(timeout=10) == 1
    assert events.empty(), "restarted past the limit"


def test_a_child_that_cannot_start_fails_start_up_with_exit_code_1():
    sup, events, exit_process = supervise(["writer", "link"], fail_start={"link"})
    assert exit_process.codes.get(timeout=10) == 1
    assert drain(events) == [("start", "writer"), ("stop", "writer")]  # what started is stopped
    sup.stop()  # as system.py does once told to exit


def test_a_childs_first_work_is_told_once_it_has_started_so_long_work_never_holds_up_the_start():
    """ChildSpec.then: a retention pass over millions of rows, told by the actor to itself in
    on_start, could queue ahead of the supervisor's ask whether it had started, and fail start-up."""
    settings = load_settings(environ={})
    events, release = queue.Queue(), threading.Event()

    class Housekeeper(Child):
        def on_receive(self, message):
            events.put(("working", self.name))
            release.wait(60)  # long work: the mailbox is held meanwhile

    specs = [ChildSpec("retention", lambda name, sup: Housekeeper.start(name, events, sup), then="pass"),
             ChildSpec("link", lambda name, sup: Child.start(name, events, sup))]
    sup = Supervisor.start(settings, Exit(), specs)
    try:
        # the next child starts while the first one's work holds its mailbox: start-up does not wait for it
        seen = wait_until(lambda: {("start", "link"), ("working", "retention")} <= set(events.queue) and list(events.queue),
                          what="the next child started and the first one working")
        assert not release.is_set() and seen.index(("start", "retention")) < seen.index(("working", "retention"))
        assert seen.count(("working", "retention")) == 1  # told once
    finally:
        release.set()
        sup.stop()
