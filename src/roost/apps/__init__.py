"""Apps on devices: manifests, bundles, and the installed versions on a device.

- ``manifest``: ``roost.toml`` parsed into a frozen, validated ``Manifest``; ``SemVer``.
- ``bundle``: an app folder as a reproducible ``.tar.gz``, checked member by member
  when built, inspected or unpacked.
- ``installs``: ``root/<app>/versions/<version>``, ``current``/``previous`` symlinks
  switched atomically, and a data dir installs never touch.

Standard library only: the agent imports this package and must stay small.
"""

from roost.apps.bundle import (
    BuiltBundle,
    BundleLimits,
    build_bundle,
    bundle_name,
    inspect_bundle,
    unpack_bundle,
)
from roost.apps.installs import AppInstalls, InstalledVersion
from roost.apps.manifest import (
    Data,
    Health,
    Install,
    Manifest,
    Port,
    Resources,
    Restart,
    SemVer,
    parse_size,
)

__all__ = [
    "AppInstalls",
    "BuiltBundle",
    "BundleLimits",
    "Data",
    "Health",
    "Install",
    "InstalledVersion",
    "Manifest",
    "Port",
    "Resources",
    "Restart",
    "SemVer",
    "build_bundle",
    "bundle_name",
    "inspect_bundle",
    "parse_size",
    "unpack_bundle",
]
