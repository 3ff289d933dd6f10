"""A device for the system tests: publishes COUNT temperature readings at QoS 1, RATE per second,
and appends the number of each reading the broker acknowledged to ACKED (flushed at once, so a
power cut of the machine leaves the file as true as the broker's acknowledgements).
    python3 device.py COUNT RATE ACKED [DEVICE_ID] [BROKER_PORT]"""

import sys
import threading
import time

import paho.mqtt.client as mqtt

count, rate, acked = int(sys.argv[1]), float(sys.argv[2]), open(sys.argv[3], "a", buffering=1)
device = sys.argv[4] if len(sys.argv) > 4 else "dev_1"
sent, done, lock, published = {}, threading.Event(), threading.Lock(), [0]


def on_publish(client, userdata, mid):
    with lock:  # the acknowledgement may come back before publish() has returned its mid
        acked.write(f"{sent.pop(mid)}\n")
        if not sent and published[0] == count:
            done.set()


port = int(sys.argv[5]) if len(sys.argv) > 5 else 1883
if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2 (the project's venv); Debian 12 has 1.6
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, f"device-{device}")
else:
    client = mqtt.Client(f"device-{device}")
client.on_publish = on_publish
client.max_inflight_messages_set(100)
client.connect("localhost", port)
client.loop_start()
for n in range(count):
    payload = (f'{{"device_id": "{device}", "temperature": {n / 10:.1f}, "humidity": 50.0, "status": "LOW",'
               f' "timestamp": "2026-03-01T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}"}}')
    with lock:
        sent[client.publish("home/temperature", payload, qos=1).mid] = n
        published[0] += 1
    time.sleep(1 / rate)
done.wait(60)
client.loop_stop()
