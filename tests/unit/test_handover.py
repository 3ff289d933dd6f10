"""Handing readings on in a commit window (actors/mqtt/handover.py), with a real asyncio loop and
fake ingest actors: sparse readings wait for others, a commit's worth or a waiting request does not."""

import asyncio
import time

import pytest

from actors.messages import Inbound, ReadingBatch
from actors.mqtt.handover import GROUP_ROWS, QUIET, HandOver
from actors.peers import Peers
from conftest import FakePeer


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


def test_the_tail_of_a_burst_goes_once_the_stream_pauses_but_a_lone_reading_waits(setup):
    make, loop, ingest, _ = setup
    hand_over = make(linger=3600)
    hand_over.add("ingest/temperature", reading(1))
    until = loop.time() + 4 * QUIET
    run_until(loop, lambda: loop.time() > until)
    assert told(ingest) == []  # one reading says nothing of a pace: it waits for the window
    for n in range(2, 5):  # a burst's tail, back to back
        hand_over.add("ingest/temperature", reading(n))
    run_until(loop, lambda: not ingest.inbox.empty())  # within a few QUIETs, not an hour
    assert [r.ack_id for r in told(ingest)[0].items] == [1, 2, 3, 4]
