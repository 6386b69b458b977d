"""What the agent tells about its device: inventory (once per connection) and metrics.

On Linux (every Roost device) the figures come straight from ``/proc`` and ``statvfs``:
psutil would cost the agent another megabyte of RSS for the same numbers. Elsewhere
(a developer's laptop) psutil answers.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

from roost import __version__

PROC = Path("/proc")


def _meminfo() -> dict[str, int]:
    values = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values


def _disk(path: str = "/") -> tuple[int, float]:
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    # Like df: the share of what non-root users could have.
    usable = used + st.f_bavail * st.f_frsize
    return total, round(100.0 * used / usable, 1) if usable else 0.0


class _CpuMeter:
    """CPU busy % between two readings of ``/proc/stat``."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def percent(self) -> float:
        total, idle = self._read()
        last_total, last_idle = self._last
        self._last = (total, idle)
        spent = total - last_total
        return round(100.0 * (spent - (idle - last_idle)) / spent, 1) if spent > 0 else 0.0


_LINUX = (PROC / "stat").exists()
_cpu: _CpuMeter | None = None


def inventory() -> dict[str, Any]:
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    except OSError:
        os_name = platform.system()
    if _LINUX:
        memory = _meminfo()["MemTotal"]
        disk = _disk()[0]
    else:
        import psutil

        memory, disk = psutil.virtual_memory().total, psutil.disk_usage("/").total
    return {
        "hostname": socket.gethostname(),
        "os": os_name,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "memory_bytes": memory,
        "disk_bytes": disk,
        "agent_version": __version__,
        "python": platform.python_version(),
    }


def metrics() -> dict[str, float | list[float]]:
    """CPU % since the last call, memory and disk use %, load averages, uptime seconds."""
    global _cpu  # noqa: PLW0603  (one meter per process, made on first use)
    load = [round(x, 2) for x in os.getloadavg()]
    if not _LINUX:
        import psutil

        return {
            "cpu": psutil.cpu_percent(interval=None),
            "memory": psutil.virtual_memory().percent,
            "disk": psutil.disk_usage("/").percent,
            "load": load,
            "uptime": round(time.time() - psutil.boot_time()),
        }
    if _cpu is None:
        _cpu = _CpuMeter()
    mem = _meminfo()
    available = mem.get("MemAvailable", mem.get("MemFree", 0))
    return {
        "cpu": _cpu.percent(),
        "memory": round(100.0 * (mem["MemTotal"] - available) / mem["MemTotal"], 1),
        "disk": _disk()[1],
        "load": load,
        "uptime": round(float((PROC / "uptime").read_text().split()[0])),
    }
