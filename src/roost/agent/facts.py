"""What the agent tells about its device: inventory (once per connection) and metrics."""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

import psutil

from roost import __version__


def inventory() -> dict[str, Any]:
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    except OSError:
        os_name = platform.system()
    return {
        "hostname": socket.gethostname(),
        "os": os_name,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "memory_bytes": psutil.virtual_memory().total,
        "disk_bytes": psutil.disk_usage("/").total,
        "agent_version": __version__,
        "python": platform.python_version(),
    }


def metrics() -> dict[str, float | list[float]]:
    """CPU % since the last call, memory and disk use %, load averages, uptime seconds."""
    return {
        "cpu": psutil.cpu_percent(interval=None),
        "memory": psutil.virtual_memory().percent,
        "disk": psutil.disk_usage("/").percent,
        "load": [round(x, 2) for x in os.getloadavg()],
        "uptime": round(time.time() - psutil.boot_time()),
    }
