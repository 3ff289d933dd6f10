"""Pure protocol code, no broker and no database: the messages actors pass each other, what apps
may ask and how replies are encoded, the site's calendar, device clocks and liveness."""
