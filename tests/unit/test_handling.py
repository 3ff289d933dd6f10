"""Handling marks (actors/runtime/handling.py): what an actor marks survives its process, and the next
process reads it back once; a restarted actor's predecessor is read alone."""

from actors.runtime.handling import Mark, Marks, ack_id, packet_id


def test_an_ack_id_keeps_arrival_order_and_carries_the_packet_id():
    first, second = ack_id(1, 65535), ack_id(2, 1)
    assert first < second and packet_id(first) == 65535 and packet_id(second) == 1
    assert packet_id(ack_id(3, None)) == 0  # QoS 0: nothing the broker delivers again


def test_what_a_dead_process_had_marked_is_read_by_the_next_and_cleared_marks_name_nothing(tmp_path):
    db = str(tmp_path / "mqtt_data.db")
    marks = Marks(db, "svc-a")
    writer, ingest = marks.mark("writer"), marks.mark("ingest/temperature")
    writer.set((ack_id(1, 10), ack_id(2, 11)))
    ingest.set((ack_id(3, 12),))
    ingest.clear()  # done with it before the death
    # The process dies here: nothing is closed or flushed.
    after = Marks(db, "svc-a")
    assert after.left_by("link") == {10, 11}
    assert Marks(db, "svc-b").left_by("link") == frozenset()  # another instance's session, other marks


def test_a_restarted_link_reads_only_what_its_crashed_predecessor_marked(tmp_path):
    marks = Marks(str(tmp_path / "mqtt_data.db"), "svc")
    assert marks.left_by("link") == frozenset()  # the process's first start: nothing died
    writer, link = marks.mark("writer"), marks.mark("link")
    writer.set((ack_id(1, 7),))  # alive and well, handling something
    link.set((ack_id(2, 8),))  # the message the link failed on
    link.close()
    assert marks.left_by("link") == {8}
    marks.mark("link")  # its successor starts with an empty mark
    assert marks.left_by("link") == frozenset()


def test_without_a_place_for_marks_nobody_can_tell(tmp_path):
    marks = Marks(str(tmp_path / "missing" / "mqtt_data.db"), "svc")  # a directory that does not exist
    assert marks.left_by("link") is None
    Mark(None).set((1,))  # marks nothing, fails nothing
