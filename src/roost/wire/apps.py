"""What hub and device agree on about apps: where a release lives in the tenant's signed
catalog, and how a desired state names the versions a device should run.

Standard library only: the agent reads desired states without loading the apps machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class WantedApp(NamedTuple):
    """One app of a desired state: the release to run, and whether to switch to it now
    (``apply=False``: download, verify and unpack it, but keep running the current one)."""

    version: str
    apply: bool = True


def target_path(name: str, version: str) -> str:
    """``apps/<name>/<name>-<version>.tar.gz``, the TUF target path of a release."""
    return f"apps/{name}/{name}-{version}.tar.gz"


def wanted_apps(desired: Mapping[str, Any]) -> dict[str, WantedApp]:
    """``{name: WantedApp}`` from a desired state's ``apps``; malformed entries are skipped.

    ``apply`` is true unless the entry says ``"apply": false``; an ``apply`` that is not a
    boolean makes the entry malformed.
    """
    apps = desired.get("apps")
    if not isinstance(apps, Mapping):
        return {}
    wanted = {}
    for name, entry in apps.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping):
            continue
        version, apply = entry.get("version"), entry.get("apply", True)
        if isinstance(version, str) and version and isinstance(apply, bool):
            wanted[name] = WantedApp(version, apply)
    return wanted
