"""``roost agent join|run|emit``: the agent's entry points."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from roost.agent.outbox import Outbox
from roost.settings import AgentSettings
from roost.wire.topics import Up


class RotatingLog(logging.FileHandler):
    """``agent.log`` rotated to ``agent.log.1`` past ``max_bytes``.

    Not ``logging.handlers``: that module pulls in pickle, queue and more (~1 MB of RSS)
    for handlers the agent never uses.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.max_bytes = max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is not None and self.stream.tell() > self.max_bytes:
            self.acquire()
            try:
                self.stream.close()
                os.replace(self.baseFilename, self.baseFilename + ".1")
                self.stream = self._open()
            finally:
                self.release()
        super().emit(record)


def setup_logging(settings: AgentSettings, verbose: bool = False) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handler = RotatingLog(settings.data_dir / "agent.log", settings.log_max_bytes)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler, console]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # gmqtt logs every reconnect attempt at warning level; ours say it once.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    # Except when TLS refuses us (a revoked or expired certificate): say why, in one line.
    protocol = logging.getLogger("gmqtt.mqtt.protocol")
    protocol.setLevel(logging.WARNING)
    protocol.addFilter(_tls_refusal)


def _tls_refusal(record: logging.LogRecord) -> bool:
    """Log gmqtt's connections lost to a TLS alert as one line of ours; drop the rest."""
    import ssl

    error = record.exc_info[1] if record.exc_info else None
    # An alert from the broker, not a connection that merely broke off.
    if isinstance(error, ssl.SSLError) and "ALERT" in (error.reason or ""):
        logging.getLogger("roost.agent").warning("the broker refused the TLS connection: %s", error)
    return False


def run(settings: AgentSettings) -> None:
    """Run an enrolled agent until SIGINT or SIGTERM."""
    from roost.agent.runtime import Agent

    async def main() -> None:
        agent = Agent(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    asyncio.run(main())


def emit(
    settings: AgentSettings, event_type: str, data: Any, subject: str = "", source: str = "cli"
) -> str:
    """Queue a CloudEvent in the device's outbox; the running agent delivers it."""
    import uuid

    event_id = str(uuid.uuid4())
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "datacontenttype": "application/json",
        "data": data,
    }
    outbox = Outbox(settings.data_dir / "agent.db", settings.outbox_max_messages)
    try:
        outbox.put(Up.EVENT, {"event": event}, time.time())
    finally:
        outbox.close()
    return event_id
