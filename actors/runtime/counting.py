"""Counts that do not grow with what they count. TopCounts: the devices counted most often, from
a fixed number of counters (the Space-Saving algorithm, Metwally et al. 2005). While at most
`capacity` devices have been counted the counts are exact; past that, a device new to the counters
takes the place of the least counted and inherits its count, so a count may be too high by at most
what it inherited, and every device counted more often than total/capacity times is among them.
Histogram: durations counted into fixed buckets."""

from __future__ import annotations

from bisect import bisect_left

# seconds: from a fast commit or reply (a millisecond) to a database that waits for a lock
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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


class Histogram:
    """Observations counted into fixed buckets, as Prometheus' histograms report them: `counts[i]`
    holds those at most `bounds[i]` (and above the one before); the last, those above every bound."""

    def __init__(self, bounds: tuple[float, ...] = SECONDS_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> tuple[tuple[int, ...], float]:
        """(counts, sum), to be reported."""
        return tuple(self.counts), self.sum
