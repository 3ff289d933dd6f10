"""Where messages go and which requests are taken (actors/mqtt/routing.py), without a broker."""

from actors.mqtt.packets import publish_size
from actors.mqtt.ratelimit import RateLimiter
from actors.mqtt.routing import Refusal, Router
from actors.protocol.messages import Request
from actors.runtime.settings import load_settings

APPS = load_settings(environ={}).apps


def test_readings_go_to_their_types_ingest_actor_and_the_subscriptions_follow_the_shared_group():
    router = Router(APPS)
    assert router.reading_routes == {"home/temperature": "ingest/temperature", "home/power": "ingest/power",
                                     "home/fingerprint": "ingest/fingerprint"}
    assert "home/gettemp/+" in router.subscriptions and "home/getdevices/+" in router.subscriptions
    assert len(router.subscriptions) == 7
    shared = Router(APPS, shared_group="site")
    assert shared.subscriptions == [f"$share/site/{t}" for t in router.subscriptions]


def test_a_request_is_admitted_with_its_reply_topic_and_the_room_the_broker_leaves():
    request = Router(APPS).admit(7, "home/getpower/app-1", b"{}", max_packet=2048)
    assert isinstance(request, Request)
    assert (request.ack_id, request.device, request.app_id, request.reply_topic) == (7, "power", "app-1",
                                                                                      "home/datapower/app-1")
    assert request.max_bytes == 2048 - publish_size("home/datapower/app-1", b"")
    assert Router(APPS).admit(1, "home/getpower/app-1", b"{}").max_bytes is None  # no broker limit


def test_a_catalogue_request_is_admitted_for_the_query_pool_and_answered_on_datadevices():
    request = Router(APPS).admit(3, "home/getdevices/app-1", b"{}")
    assert (request.device, request.reply_topic, request.topic) == ("devices", "home/datadevices/app-1",
                                                                    "home/getdevices/app-1")


def test_a_response_topic_below_the_apps_own_reply_topics_is_used_with_its_correlation_data():
    request = Router(APPS).admit(1, "home/gettemp/a", b"{}", "home/datafingerprint/a/screen", b"c")
    assert (request.reply_topic, request.correlation) == ("home/datafingerprint/a/screen", b"c")


def test_other_response_topics_are_refused_with_an_error_on_the_apps_own_reply_topic():
    router = Router(APPS)
    for asked, why in [("home/datatemp/b", "reply topics"), ("home/datatemp/a/#", "wildcard"),
                       ("home/datatemp/a/" + "/".join("x" * 6), "levels"), ("", "reply topics")]:
        refusal = router.admit(1, "home/gettemp/a", b"{}", asked, b"c")
        assert isinstance(refusal, Refusal) and refusal.code == "invalid_response_topic"
        assert (refusal.reply_topic, refusal.correlation) == ("home/datatemp/a", b"c") and why in refusal.message


def test_no_reply_topic_could_name_one_app_so_such_requests_are_ignored():
    router = Router(APPS)
    assert router.admit(1, "home/gettemp/a+b", b"{}") is None
    assert router.admit(1, "home/gettemp/" + "x" * 65, b"{}") is None
    assert router.admit(1, "home/nothing/a", b"{}") is None


def test_an_app_over_its_rate_is_refused_until_its_bucket_fills_again():
    now = [0.0]
    router = Router(APPS, limiter=RateLimiter(1.0, 2, clock=lambda: now[0]))
    assert [type(router.admit(i, "home/gettemp/a", b"{}")).__name__ for i in range(3)] == ["Request", "Request",
                                                                                         "Refusal"]
    assert router.admit(9, "home/gettemp/other", b"{}") is not None  # other apps are not held up
    now[0] = 1.0
    assert isinstance(router.admit(4, "home/gettemp/a", b"{}"), Request)
