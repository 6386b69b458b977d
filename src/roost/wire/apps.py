"""What hub and device agree on about apps: where a release lives in the tenant's signed
catalog, and how a desired state names the versions a device should run.

Standard library only: the agent reads desired states without loading the apps machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def target_path(name: str, version: str) -> str:
    """``apps/<name>/<name>-<version>.tar.gz``, the TUF target path of a release."""
    return f"apps/{name}/{name}-{version}.tar.gz"


def wanted_apps(desired: Mapping[str, Any]) -> dict[str, str]:
    """``{name: version}`` from a desired state's ``apps``; malformed entries are skipped."""
    apps = desired.get("apps")
    if not isinstance(apps, Mapping):
        return {}
    wanted = {}
    for name, entry in apps.items():
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and isinstance(version, str) and version:
            wanted[name] = version
    return wanted
