"""Per-app request rate limits: a token bucket per app id, kept by the MQTT link (one thread)."""

from __future__ import annotations

import time

IDLE_APPS = 10_000  # buckets kept before the full (idle) ones are dropped


class RateLimiter:
    """Each app may make `rate` requests per second on average and `burst` at once."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # app id -> (tokens, when)

    def allow(self, app_id: str) -> bool:
        if not self.rate:
            return True
        now = self.clock()
        tokens, then = self._buckets.get(app_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._buckets[app_id] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > IDLE_APPS:
            self._forget_idle(now)
        return allowed

    def _forget_idle(self, now: float) -> None:
        """A bucket that would be full again is the same as no bucket: memory stays bounded
        however many app ids come and go."""
        self._buckets = {app: (tokens, then) for app, (tokens, then) in self._buckets.items()
                         if tokens + (now - then) * self.rate < self.burst}
