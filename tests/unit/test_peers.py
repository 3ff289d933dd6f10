"""How actors reach each other: a peer that died drops what it is told (the MQTT link hands it on
again); a name that was never registered is a bug, and says so."""

import pykka
import pytest
from conftest import FakePeer

from actors.runtime.peers import Peers


class Echo(pykka.ThreadingActor):
    def on_receive(self, message):
        return message


def test_a_message_to_a_peer_that_died_is_dropped_and_said_so():
    peers, ref = Peers(), Echo.start()
    peers.register("writer", ref)
    assert peers.tell("writer", "hello") is True
    ref.stop()
    assert peers.tell("writer", "hello") is False
    with pytest.raises(pykka.ActorDeadError):
        peers.ask("writer", "hello", timeout=1)


def test_a_name_that_was_never_registered_is_an_error_not_a_silent_drop():
    peers = Peers()
    peers.register("writer", FakePeer())
    with pytest.raises(KeyError, match="no actor is named 'wrtier'"):
        peers.tell("wrtier", "hello")
    with pytest.raises(KeyError):
        peers.ask("nobody", "hello", timeout=1)


def test_a_child_that_has_not_started_yet_drops_what_it_is_told():
    peers = Peers()
    peers.expect(["writer", "link"])
    assert peers.tell("link", "hello") is False
    link = FakePeer()
    peers.register("link", link)
    assert peers.tell("link", "hello") is True and link.next() == "hello"


def test_a_pool_is_told_round_robin_and_says_which_member_it_told():
    peers, fakes = Peers(), [FakePeer(), FakePeer()]
    for i, fake in enumerate(fakes):
        peers.register(f"query/{i}", fake)
    peers.define_pool("query", 2)
    assert [peers.tell_pool("query", n) for n in range(4)] == ["query/0", "query/1", "query/0", "query/1"]
    assert [fakes[0].next(), fakes[0].next(), fakes[1].next(), fakes[1].next()] == [0, 2, 1, 3]
