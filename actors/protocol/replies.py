"""Replies encoded once: a reply's JSON spliced around records already encoded, and as many of
them as fit in the bytes a broker takes, cut from one encoding of them all."""

from __future__ import annotations

import orjson


def splice(head: dict, key: str, items: bytes, tail: dict) -> bytes:
    """A reply's JSON, byte for byte what orjson makes of the dict {**head, key: [...], **tail} (tail
    entries that are None left out), around `items` already encoded (without the array's brackets)."""
    start = orjson.dumps(head)
    tail = {k: v for k, v in tail.items() if v is not None}
    end = b"," + orjson.dumps(tail)[1:] if tail else b"}"
    return b"".join((start[:-1], b',"', key.encode(), b'":[', items, b"]", end))


BETWEEN = b'},{"'  # only ever between two records: inside a JSON string a '"' is escaped


def cut(array: bytes, count: int, room: int) -> tuple[bytes, int]:
    """The first records of a JSON array of `count` objects (as orjson writes it) that take at
    most `room` bytes with a comma each, without the brackets; and how many they are."""
    if len(array) - 1 <= room:
        return array[1:-1], count
    end = array.rfind(BETWEEN, 0, room + len(BETWEEN) - 1)  # the '}' that ends the last one that fits
    if end < 0:
        return b"", 0
    # Those left out are counted: fewer, as a page reads little more than fits (DayPages.page).
    return array[1:end + 1], count - 1 - array.count(BETWEEN, end + 1)
