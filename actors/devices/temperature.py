"""Temperature sensors: a reading every minute or so; stale after three of their usual intervals."""

from actors.devices.definition import DeviceType
from actors.devices.fields import Choice, Number
from actors.devices.kinds import Counts, Gauge

TEMPERATURE = DeviceType(
    "temperature", topic="home/temperature", request="home/gettemp", reply="home/datatemp",
    table="temperature_logs", stale_after="auto",
    fields=(Number("temperature"), Number("humidity", 0, 100), Choice("status", ("HIGH", "LOW"))),
    summary=(Gauge("temperature"), Gauge("humidity"), Counts("status", {"HIGH": "high", "LOW": "low"})))
