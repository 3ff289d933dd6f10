"""Counts kept per device without growing with the fleet: the devices counted most often, from
a fixed number of counters (the Space-Saving algorithm, Metwally et al. 2005). While at most
`capacity` devices have been counted the counts are exact; past that, a device new to the counters
takes the place of the least counted and inherits its count, so a count may be too high by at most
what it inherited, and every device counted more often than total/capacity times is among them."""

from __future__ import annotations


class TopCounts:
    def __init__(self, capacity: int = 100):
        self.capacity = capacity
        self.counts: dict[tuple, int] = {}
        self.total = 0

    def add(self, key: tuple, n: int = 1) -> None:
        self.total += n
        counts = self.counts
        if key in counts:
            counts[key] += n
        elif len(counts) < self.capacity:
            counts[key] = n
        else:  # O(capacity), only for a key new to the counters
            least = min(counts, key=counts.__getitem__)
            counts[key] = counts.pop(least) + n

    def top(self, n: int) -> list[tuple[tuple, int]]:
        """The `n` most counted keys with their counts, most first."""
        return sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))[:n]
