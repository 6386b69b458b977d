"""What hub and device agree on about edge functions: where a version lives in the
tenant's signed catalog, how a desired state names the versions a device runs, and how
the device reports what they did.

Standard library only: the agent reads desired states without loading the functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Where a function runs when it is not on devices (its placement is otherwise a selector).
HUB = "hub"
DESIRED_KEY = "functions"
# The event a device sends for each invocation of an edge function; its source is
# ``functions/<name>`` and its id the invocation's idempotency key.
INVOKED = "roost.function.invoked"
SOURCE_PREFIX = "functions/"


def target_path(name: str, version: int) -> str:
    """``functions/<name>/<name>-<version>.json``: where a version is in the catalog."""
    return f"functions/{name}/{name}-{version}.json"


def wanted_functions(desired: Mapping[str, Any]) -> dict[str, int]:
    """``{name: version}`` from a desired state's ``functions``; malformed entries skipped."""
    functions = desired.get(DESIRED_KEY)
    if not isinstance(functions, Mapping):
        return {}
    wanted = {}
    for name, entry in functions.items():
        version = entry.get("version") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and isinstance(version, int) and not isinstance(version, bool):
            wanted[name] = version
    return wanted
