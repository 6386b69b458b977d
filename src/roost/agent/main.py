"""``roost agent join|run|emit``: the agent's entry points."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import signal
import sys
import time
import uuid
from typing import Any

from roost.agent.outbox import Outbox
from roost.settings import AgentSettings
from roost.wire.topics import Up


def setup_logging(settings: AgentSettings, verbose: bool = False) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        settings.data_dir / "agent.log", maxBytes=settings.log_max_bytes, backupCount=2
    )
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler, console]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # gmqtt logs every reconnect attempt at warning level; ours say it once.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)


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
