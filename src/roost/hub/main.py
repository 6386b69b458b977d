"""``roost hub``: serve the API over HTTPS with the hub's own certificate."""

from __future__ import annotations

import logging

import uvicorn

from roost.hub.app import create_app
from roost.settings import HubSettings


def run(settings: HubSettings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Not a line per webhook or per MQTT packet: the hub logs what it decides itself.
    for chatty in ("httpx", "gmqtt"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))
    app = create_app(settings)
    identity = app.state.hub.identity
    config = uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        ssl_certfile=str(identity.server_cert),
        ssl_keyfile=str(identity.server_key),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    uvicorn.Server(config).run()
