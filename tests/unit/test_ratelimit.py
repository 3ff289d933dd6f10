"""The per-app token bucket, on a fake clock."""

from conftest import FakeClock as Clock

from actors.mqtt.ratelimit import IDLE_APPS, RateLimiter


def test_a_burst_then_the_rate_and_each_app_on_its_own():
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another app has its own bucket
    clock.now = 0.5  # one token back at 2/s
    assert [limiter.allow("a") for _ in range(2)] == [True, False]
    clock.now = 100.0  # refills up to the burst, no further
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]


def test_no_limit_when_the_rate_is_zero():
    limiter = RateLimiter(rate=0, burst=1, clock=Clock())
    assert all(limiter.allow("a") for _ in range(1000))


def test_idle_apps_are_forgotten_so_memory_stays_bounded():
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    for i in range(IDLE_APPS):
        limiter.allow(f"app{i}")
    clock.now = 10.0  # every bucket is full again
    limiter.allow("busy")
    limiter.allow("one-more")
    assert len(limiter._buckets) <= 2
