"""The actors of the IoT data service, and the plain modules they share."""

__version__ = "1.2.0"
