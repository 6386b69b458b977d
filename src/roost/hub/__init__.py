"""The hub: composes the parts into one process (API, broker, MQTT link, loops)."""
