"""Handing readings on in a commit window (actors/mqtt/handover.py), with a real asyncio loop and
fake ingest actors: sparse readings wait for others, a commit's worth or a waiting request does not."""

import asyncio
import time

import pytest
from conftest import FakePeer

from actors.mqtt.handover import BURST_GAP, GROUP_ROWS, QUIET, HandOver
from actors.protocol.messages import Inbound, ReadingBatch
from actors.runtime.peers import Peers


@pytest.fixture
def setup():
    loop = asyncio.new_event_loop()
    peers, ingest, flushed = Peers(), FakePeer(), []
    peers.register("ingest/temperature", ingest)

    def make(linger):
        hand_over = HandOver(peers, linger, lambda: flushed.append(True))
        hand_over.start(loop)
        return hand_over
    yield make, loop, ingest, flushed
    loop.close()


def run_until(loop, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        loop.run_until_complete(asyncio.sleep(0.001))


def told(ingest) -> list[ReadingBatch]:
    out = []
    while not ingest.inbox.empty():
        out.append(ingest.inbox.get_nowait())
    return out


def reading(n):
    return Inbound(n, "home/temperature", b"{}")


def test_sparse_readings_wait_for_others_then_go_together(setup):
    make, loop, ingest, flushed = setup
    hand_over = make(linger=0.05)
    hand_over.add("ingest/temperature", reading(1))
    hand_over.add("ingest/temperature", reading(2), forget=("ab",))
    assert told(ingest) == []  # nothing before the window closes (it is a loop timer)
    run_until(loop, lambda: not ingest.inbox.empty())
    [batch] = told(ingest)
    assert [r.ack_id for r in batch.items] == [1, 2] and batch.forget == ("ab",) and flushed == [True]


def test_a_commits_worth_goes_at_once_without_waiting_for_the_window(setup):
    make, loop, ingest, _ = setup
    hand_over = make(linger=3600)
    for n in range(GROUP_ROWS):
        hand_over.add("ingest/temperature", reading(n))
    run_until(loop, lambda: not ingest.inbox.empty())
    [batch] = told(ingest)
    assert len(batch.items) == GROUP_ROWS


def test_while_requests_wait_readings_go_at_once(setup):
    make, loop, ingest, _ = setup
    hand_over = make(linger=3600)
    hand_over.add("ingest/temperature", reading(1))
    hand_over.now()  # a request is held: what came before it goes now
    assert [r.ack_id for r in told(ingest)[0].items] == [1]
    hand_over.hurried = True
    hand_over.add("ingest/temperature", reading(2))
    run_until(loop, lambda: not ingest.inbox.empty())
    assert [r.ack_id for r in told(ingest)[0].items] == [2]


def test_soon_replaces_a_pending_window(setup):
    """The delivery limit's counts go soon, taking any lingering readings with them."""
    make, loop, ingest, flushed = setup
    hand_over = make(linger=3600)
    hand_over.add("ingest/temperature", reading(1))
    hand_over.soon()
    run_until(loop, lambda: flushed)
    assert [r.ack_id for r in told(ingest)[0].items] == [1]


def test_the_tail_of_a_burst_goes_once_the_stream_pauses(setup):
    make, loop, ingest, _ = setup
    hand_over = make(linger=3600)
    for n in range(1, 5):  # a burst's tail, back to back
        hand_over.add("ingest/temperature", reading(n))
    run_until(loop, lambda: not ingest.inbox.empty())  # within a few QUIETs, not an hour
    assert [r.ack_id for r in told(ingest)[0].items] == [1, 2, 3, 4]


class Clock:
    """Just enough of an event loop for the window's timers, on a clock the test moves."""

    def __init__(self):
        self.now, self.handles, self.fired = 0.0, [], []

    def time(self):
        return self.now

    def get_debug(self):
        return False

    def _timer_handle_cancelled(self, handle):
        pass

    def call_at(self, when, callback):
        self.handles.append(handle := asyncio.TimerHandle(when, callback, (), self))
        return handle

    def call_soon(self, callback):
        self.handles.append(handle := asyncio.TimerHandle(self.now, callback, (), self))
        return handle

    def advance(self, seconds):
        self.now += seconds
        while due := sorted((h for h in self.handles if not h.cancelled() and h.when() <= self.now),
                            key=asyncio.TimerHandle.when):
            self.handles.remove(due[0])
            self.fired.append(due[0].when())
            due[0]._run()


def test_the_timer_of_a_burst_that_goes_on_fires_ever_later():
    peers, ingest, clock = Peers(), FakePeer(), Clock()
    peers.register("ingest/temperature", ingest)
    hand_over = HandOver(peers, 3600, lambda: None)
    hand_over.start(clock)
    for n in range(80):  # readings 1 ms apart, for 80 ms
        hand_over.add("ingest/temperature", reading(n))
        clock.advance(0.001)
    assert told(ingest) == []
    assert len(clock.fired) == 4  # after 5, 10, 20 and 40 ms of no pause; not one per QUIET
    clock.advance(0.1)  # the stream has paused
    [batch] = told(ingest)
    assert len(batch.items) == 80 and clock.fired[-1] <= 0.08 + 80 * QUIET


def test_a_trickle_arms_no_timer_but_its_window():
    peers, ingest, clock = Peers(), FakePeer(), Clock()
    peers.register("ingest/temperature", ingest)
    hand_over = HandOver(peers, 1.0, lambda: None)
    hand_over.start(clock)
    for n in range(10):  # 10 readings/s: one commit a second, one timer
        hand_over.add("ingest/temperature", reading(n))
        clock.advance(0.1)
    clock.advance(0.01)
    assert clock.fired == [pytest.approx(1.0)] and len(told(ingest)[0].items) == 10


def test_a_lone_reading_waits_half_the_window_and_a_trickle_all_of_it():
    peers, ingest, clock = Peers(), FakePeer(), Clock()
    peers.register("ingest/temperature", ingest)
    hand_over = HandOver(peers, 0.4, lambda: None)
    hand_over.start(clock)
    hand_over.add("ingest/temperature", reading(1))
    clock.advance(0.199)
    assert told(ingest) == []
    clock.advance(0.002)  # no company came: half the window
    assert [r.ack_id for r in told(ingest)[0].items] == [1]
    started = clock.now
    for n in range(2, 5):  # a trickle: gaps far wider than a burst's
        hand_over.add("ingest/temperature", reading(n))
        clock.advance(10 * BURST_GAP)
    clock.advance(started + 0.399 - clock.now)
    assert told(ingest) == []  # the pause of a trickle does not end its window
    clock.advance(0.1)
    assert [r.ack_id for r in told(ingest)[0].items] == [2, 3, 4]
