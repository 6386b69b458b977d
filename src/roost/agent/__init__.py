"""The agent: a small asyncio program on every device.

It enrolls once (``roost agent join``), then runs (``roost agent run``): keeps an mTLS
MQTT link to the broker, reports birth, heartbeats and reported state, applies desired
state, answers commands, renews its certificate, and never loses what it must deliver
(a local SQLite outbox). Heavy modules (``cryptography``) load only when needed.
"""
