"""The actors of the IoT data service, one module each: the supervisor, the writer, the query
actors, one ingest actor per device type, availability, backup, retention, and the MQTT link
(mqtt/). What they share lives beside them: the device types (devices/), pure protocol code
(protocol/), the database (storage/) and what runs them (runtime/)."""

__version__ = "1.2.0"
