"""A stand-in for the original program of the seed README (mqtt_client.py in
/home/ubuntu/mqtt-client): paho-mqtt, the three reading topics at QoS 1 under MQTT_CLIENT_ID with a
persistent session, each reading inserted into mqtt_data.db (the seed's schema) and committed before
paho acknowledges it. Only what the move to the new service depends on; requests are not answered."""

import json
import os
import sqlite3
from datetime import datetime

import paho.mqtt.client as mqtt

db = sqlite3.connect("mqtt_data.db")
db.executescript("""
CREATE TABLE IF NOT EXISTS temperature_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
  temperature REAL, humidity REAL, status TEXT, timestamp TEXT NOT NULL, date TEXT NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS power_status_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
  ebstatus TEXT, dgstatus TEXT, timestamp TEXT NOT NULL, date TEXT NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS fingerprint_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
  user_id TEXT, auth_status TEXT, timestamp TEXT NOT NULL, date TEXT NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX IF NOT EXISTS idx_temp_device_date ON temperature_logs(device_id, date);
CREATE INDEX IF NOT EXISTS idx_power_device_date ON power_status_logs(device_id, date);
CREATE INDEX IF NOT EXISTS idx_fp_device_date ON fingerprint_logs(device_id, date);
""")


def on_message(client, userdata, msg):
    r = json.loads(msg.payload)
    date = datetime.fromisoformat(r["timestamp"]).date().isoformat()
    if msg.topic == "home/temperature":
        db.execute("INSERT INTO temperature_logs (device_id, temperature, humidity, status, timestamp, date)"
                   " VALUES (?, ?, ?, ?, ?, ?)",
                   (r["device_id"], r["temperature"], r["humidity"], r["status"], r["timestamp"], date))
    elif msg.topic == "home/power":
        source, state = r["status"].split("_")
        eb, dg = (state, "") if source == "EB" else ("", state)
        db.execute("INSERT INTO power_status_logs (device_id, ebstatus, dgstatus, timestamp, date)"
                   " VALUES (?, ?, ?, ?, ?)", (r["device_id"], eb, dg, r["timestamp"], date))
    else:
        db.execute("INSERT INTO fingerprint_logs (device_id, user_id, auth_status, timestamp, date)"
                   " VALUES (?, ?, ?, ?, ?)", (r["device_id"], r["user_id"], r["authStatus"], r["timestamp"], date))
    db.commit()


def on_connect(client, userdata, flags, rc):
    client.subscribe([("home/temperature", 1), ("home/power", 1), ("home/fingerprint", 1)])


client = mqtt.Client(os.environ.get("MQTT_CLIENT_ID", "mqtt_client_1"), clean_session=False)
if os.environ.get("MQTT_USERNAME"):
    client.username_pw_set(os.environ["MQTT_USERNAME"], os.environ.get("MQTT_PASSWORD"))
client.on_connect, client.on_message = on_connect, on_message
client.connect(os.environ.get("MQTT_BROKER_HOST", "localhost"), int(os.environ.get("MQTT_BROKER_PORT", 1883)))
client.loop_forever()
