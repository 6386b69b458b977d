"""The hub's MQTT link: one gmqtt client with the hub's own certificate.

It keeps a persistent session (client id ``roost-hub``), so QoS 1 messages that devices
send while the hub is away wait in the broker. Received messages go straight to a
callback without awaiting; publishing never blocks the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50

from roost.errors import BrokerError
from roost.wire import topics

log = logging.getLogger("roost.hub.link")

# The broker keeps the hub's session (and its queued QoS 1 messages) this long.
SESSION_EXPIRY_S = 7 * 24 * 3600


def client_tls(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.load_cert_chain(cert, key)
    return context


class HubLink:
    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext,
        on_message: Callable[[str, bytes], None],
        client_id: str = topics.HUB_IDENTITY,
        subscription: str = topics.HUB_UP_FILTER,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._on_message = on_message
        self._subscription = subscription
        self.connected = asyncio.Event()
        self._client = Client(
            client_id, clean_session=False, session_expiry_interval=SESSION_EXPIRY_S
        )
        self._client.on_message = self._message
        self._client.on_connect = self._connected
        self._client.on_disconnect = self._disconnected
        # gmqtt retries forever with this delay between attempts.
        self._client.set_config({"reconnect_retries": -1, "reconnect_delay": 1})

    def _message(self, _client: Any, topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        self._on_message(topic, payload)
        return 0

    def _connected(self, client: Any, _flags: int, _rc: int, _props: Any) -> None:
        client.subscribe(self._subscription, qos=1)
        self.connected.set()
        log.info("connected to the broker at %s:%s", self.host, self.port)

    def _disconnected(self, _client: Any, _packet: Any, _exc: Any = None) -> None:
        if self.connected.is_set():
            log.warning("lost the broker; reconnecting")
        self.connected.clear()

    async def start(self, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                await self._client.connect(
                    self.host, self.port, ssl=self._tls, keepalive=30, version=MQTTv50
                )
                break
            except (OSError, ssl.SSLError) as err:
                if asyncio.get_running_loop().time() > deadline:
                    raise BrokerError(
                        f"cannot connect to the broker at {self.host}:{self.port}: {err}"
                    ) from err
                await asyncio.sleep(0.2)
        await asyncio.wait_for(self.connected.wait(), timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.disconnect()
