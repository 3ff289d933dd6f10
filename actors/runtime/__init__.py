"""What runs the actors and the process: settings, logging, systemd's notify protocol, TLS, the
start-up check, actors' addresses and base class, handling marks, counts and the metrics server."""
