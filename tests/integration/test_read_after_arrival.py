"""Read after arrival: a request is answered with every reading that reached the service before it.
A device and an app, two clients, publish back to back 200 times; every reply holds the reading."""

from conftest import MqttClient


def test_a_request_sees_the_reading_published_just_before_it_by_another_client(db_service, broker, client):
    db_service.start().wait_ready()
    app = MqttClient(broker.port)
    try:
        apps = [f"reader{n}" for n in range(4)]  # within each app's rate limit (bursts of 100)
        for app_id in apps:
            app.subscribe_replies(app_id)
        for i in range(200):
            # The broker has the reading (it acknowledged it) before the app asks.
            client.publish("home/temperature", {"device_id": "raa", "temperature": 20.0, "humidity": 50.0,
                                                "status": "LOW", "timestamp": f"2026-05-05T10:{i // 60:02d}:{i % 60:02d}"})
            reply = app.request("temp", apps[i % 4], {"device_id": "raa", "date": "2026-05-05"})
            assert reply["count"] == i + 1, f"request {i} did not see the reading sent just before it"
    finally:
        app.close()
