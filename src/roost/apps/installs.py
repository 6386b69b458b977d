"""The installed versions of apps on a device, laid out so that a crash breaks nothing.

::

    root/
      .incoming/              bundles being unpacked; emptied whenever AppInstalls starts
      <app>/
        versions/<version>/   an unpacked bundle; counts only with its marker file
        current -> versions/<version>
        previous -> versions/<version>
        data/                 the app's persistent data; installs never touch it

Invariants, and why they survive a crash at any point:

- A version dir appears by one ``rename`` of a fully unpacked, fsync'd tree that already
  holds the marker ``.roost-complete`` (written last, fsync'd). A version dir without the
  marker is debris and is removed; removal drops the marker first, so a half-removed
  version never counts.
- ``current`` and ``previous`` are symlinks replaced atomically (a temporary symlink and
  ``os.replace``). ``activate`` moves ``previous`` before ``current`` and ``rollback``
  moves ``current`` before ``previous``: a crash in between leaves ``current`` on a
  version that was good, never on nothing.
- Debris (``.incoming``, temporary symlinks, unmarked version dirs) is cleaned up when an
  ``AppInstalls`` is made, so one ``AppInstalls`` per root may be in use at a time.

The shell around ``bundle.unpack_bundle``: it does file I/O and nothing else, no clock and
no processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from roost.apps.bundle import BundleLimits, inspect_bundle, unpack_bundle
from roost.apps.manifest import APP_NAME_RE, Manifest, SemVer
from roost.atomic import fsync_dir
from roost.errors import BundleError, NotFoundError, RoostError, ValidationError

MARKER: Final = ".roost-complete"
_INCOMING: Final = ".incoming"
_VERSIONS: Final = "versions"
_DATA: Final = "data"
_CURRENT: Final = "current"
_PREVIOUS: Final = "previous"


@dataclass(frozen=True)
class InstalledVersion:
    """A complete version of an app on this device."""

    app: str
    version: SemVer
    path: Path
    manifest: Manifest


class AppInstalls:
    """The apps installed under ``root``; making one cleans up after a crash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._recover()

    # -- reading -----------------------------------------------------------------------

    def apps(self) -> tuple[str, ...]:
        """The apps with a directory here, sorted."""
        return tuple(sorted(p.name for p in self.root.iterdir() if APP_NAME_RE.fullmatch(p.name)))

    def versions(self, app: str) -> tuple[SemVer, ...]:
        """The complete versions of ``app``, oldest first by SemVer precedence."""
        found = []
        for path in self._versions_dir(app).glob("*"):
            version = _version_of(path.name)
            if version is not None and (path / MARKER).is_file():
                found.append(version)
        return tuple(sorted(found, key=lambda v: (v.precedence, str(v))))

    def current(self, app: str) -> SemVer | None:
        """The version ``current`` points at, if it is complete."""
        return self._pointed(app, _CURRENT)

    def previous(self, app: str) -> SemVer | None:
        """The version ``previous`` points at, if it is complete."""
        return self._pointed(app, _PREVIOUS)

    def installed(self, app: str, version: SemVer | str) -> InstalledVersion:
        """A complete version, or ``NotFoundError``."""
        version = _as_version(version)
        path = self._versions_dir(app) / str(version)
        if not (path / MARKER).is_file():
            raise NotFoundError(f"{app} {version} is not installed")
        return InstalledVersion(app, version, path, Manifest.load(path))

    def data_dir(self, app: str) -> Path:
        """The persistent data dir of ``app`` (it may not exist yet)."""
        return self._app_dir(app) / _DATA

    # -- changing ----------------------------------------------------------------------

    def install(self, bundle: Path, limits: BundleLimits | None = None) -> InstalledVersion:
        """Unpack ``bundle`` as a complete version; a no-op if it is installed already."""
        manifest = inspect_bundle(bundle, limits)
        with contextlib.suppress(NotFoundError):
            return self.installed(manifest.name, manifest.version)
        incoming = self.root / _INCOMING
        incoming.mkdir(exist_ok=True)
        staging = incoming / secrets.token_hex(8)
        try:
            manifest = unpack_bundle(bundle, staging, limits)
            if os.path.lexists(staging / MARKER):
                raise BundleError(f"{bundle.name}: member {MARKER!r}: the name is reserved")
            _write_synced(staging / MARKER, json.dumps(manifest.to_dict(), sort_keys=True))
            fsync_dir(staging)
            versions = self._versions_dir(manifest.name)
            versions.mkdir(parents=True, exist_ok=True)
            if manifest.kind == "app" and manifest.data.persistent:
                self.data_dir(manifest.name).mkdir(exist_ok=True)
            dest = versions / str(manifest.version)
            if os.path.lexists(dest):  # debris: a complete one was returned above
                _drop_version(dest)
            staging.rename(dest)
            fsync_dir(versions)
        except OSError as err:
            raise BundleError(f"{bundle.name}: cannot install: {err}") from err
        finally:
            if os.path.lexists(staging):
                shutil.rmtree(staging, ignore_errors=True)
        return InstalledVersion(manifest.name, manifest.version, dest, manifest)

    def activate(self, app: str, version: SemVer | str) -> InstalledVersion:
        """Point ``current`` at ``version`` and ``previous`` at the old current."""
        target = self.installed(app, version)
        current = self.current(app)
        if current == target.version:
            return target
        if current is not None:
            self._point(app, _PREVIOUS, current)
        self._point(app, _CURRENT, target.version)
        return target

    def rollback(self, app: str) -> SemVer:
        """Swap ``current`` and ``previous``; returns the version now current."""
        previous = self.previous(app)
        if previous is None:
            raise NotFoundError(f"{app} has no previous version to roll back to")
        current = self.current(app)
        self._point(app, _CURRENT, previous)
        if current is not None:
            self._point(app, _PREVIOUS, current)
        return previous

    def remove(self, app: str, *, data: bool = False) -> None:
        """Remove every version of ``app``, and its data dir only when ``data``."""
        app_dir = self._app_dir(app)
        if not app_dir.exists():
            return
        for link in (_CURRENT, _PREVIOUS):
            (app_dir / link).unlink(missing_ok=True)
        versions = app_dir / _VERSIONS
        if versions.is_dir():
            for path in versions.iterdir():
                _drop_version(path)
            versions.rmdir()
        if data:
            shutil.rmtree(app_dir / _DATA, ignore_errors=True)
        for leftover in app_dir.iterdir():
            if leftover.name != _DATA:
                _remove_path(leftover)
        if not any(app_dir.iterdir()):
            app_dir.rmdir()

    def prune(self, app: str, keep: int = 2) -> tuple[SemVer, ...]:
        """Remove old versions, keeping the newest ``keep`` and always current and previous.

        Returns the versions removed, oldest first.
        """
        if keep < 0:
            raise ValidationError(f"prune keeps {keep} versions; it must be 0 or more")
        kept = {v for v in (self.current(app), self.previous(app)) if v is not None}
        versions = self.versions(app)
        for version in reversed(versions):
            if len(kept) >= keep:
                break
            kept.add(version)
        removed = tuple(v for v in versions if v not in kept)
        for version in removed:
            _drop_version(self._versions_dir(app) / str(version))
        return removed

    # -- helpers -----------------------------------------------------------------------

    def _app_dir(self, app: str) -> Path:
        if not APP_NAME_RE.fullmatch(app):
            raise ValidationError(f"{app!r} is not an app name")
        return self.root / app

    def _versions_dir(self, app: str) -> Path:
        return self._app_dir(app) / _VERSIONS

    def _pointed(self, app: str, link: str) -> SemVer | None:
        try:
            target = os.readlink(self._app_dir(app) / link)
        except OSError:
            return None
        head, _, name = target.partition("/")
        version = _version_of(name) if head == _VERSIONS else None
        if version is None or not (self._versions_dir(app) / name / MARKER).is_file():
            return None
        return version

    def _point(self, app: str, link: str, version: SemVer) -> None:
        app_dir = self._app_dir(app)
        tmp = app_dir / f".{link}.{secrets.token_hex(4)}.tmp"
        os.symlink(f"{_VERSIONS}/{version}", tmp)
        os.replace(tmp, app_dir / link)
        fsync_dir(app_dir)

    def _recover(self) -> None:
        """Remove what a crash left: staging dirs, temporary links, unmarked versions."""
        shutil.rmtree(self.root / _INCOMING, ignore_errors=True)
        for app in self.apps():
            app_dir = self.root / app
            for path in app_dir.glob(".*.tmp"):
                _remove_path(path)
            versions = app_dir / _VERSIONS
            if not versions.is_dir():
                continue
            for path in versions.iterdir():
                if path.name.startswith(".") or not (path / MARKER).is_file():
                    _remove_path(path)


def _version_of(name: str) -> SemVer | None:
    try:
        return SemVer.parse(name)
    except BundleError:
        return None


def _as_version(version: SemVer | str) -> SemVer:
    if isinstance(version, SemVer):
        return version
    try:
        return SemVer.parse(version)
    except RoostError as err:
        raise ValidationError(f"{version!r} is not a version like 1.2.3") from err


def _drop_version(path: Path) -> None:
    """Un-mark first: from then on a crash leaves debris, never a broken version."""
    marker = path / MARKER
    if marker.is_file():
        marker.unlink()
        fsync_dir(path)
    _remove_path(path)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_synced(path: Path, text: str) -> None:
    with path.open("x", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
