"""Fingerprint readers: an event per attempt (so no liveness by default); summaries count passes,
fails and the distinct users of each bucket."""

from actors.devices.definition import DeviceType
from actors.devices.fields import Choice, Text
from actors.devices.kinds import Counts, Distinct

FINGERPRINT = DeviceType(
    "fingerprint", topic="home/fingerprint", request="home/getfingerprint", reply="home/datafingerprint",
    table="fingerprint_logs",
    fields=(Text("user_id"), Choice("authStatus", ("PASS", "FAIL"), column="auth_status")),
    summary=(Counts("authStatus", {"PASS": "pass", "FAIL": "fail"}, stored={"PASS": "passes", "FAIL": "fails"}),
             Distinct("user_id", "users")))
