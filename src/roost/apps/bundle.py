"""App bundles: an app folder as one reproducible ``<name>-<version>.tar.gz``.

A bundle holds the app folder with ``roost.toml`` at its root. The same rules hold when a
bundle is built from a folder and again when one is inspected or unpacked on a device,
whoever built it; a refusal is one ``BundleError`` line naming the member at fault.
Refused: absolute paths, ``..`` components, symlinks whose target is absolute or resolves
outside the bundle, members under a symlink, hard links, device files, fifos, sockets,
sparse files, duplicate members, more than ``BundleLimits.max_members`` members, more
than ``BundleLimits.max_bytes`` of file data, and a missing or invalid ``roost.toml``.

Builds are reproducible: members sorted by path, mtime 0, uid/gid 0 with empty names,
modes 0o755 (directories, executables, symlinks) or 0o644, and a gzip header without a
name or a time, so the same folder gives the same sha256 on any machine.

Reading never trusts a tar header alone. The decompressed stream is metered: reading a
header (with its pax or GNU long-name records) may inflate at most ``_HEADER_BUDGET``
bytes and a file's data at most its declared size plus a record, and file data is
counted as it is really read. A gzip bomb is stopped after a few KiB of inflation, not
after it has filled the memory or the disk. Nothing is extracted with ``tarfile``'s own
extraction: files, directories and symlinks are created one by one inside a temporary
sibling of the destination, which is renamed into place only when every member passed.

``_Checker`` is the pure core: it takes member descriptions and decides; the rest is the
shell that walks folders, reads tar streams and writes files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import shutil
import stat
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal, Protocol

from roost.apps.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from roost.atomic import fsync_dir
from roost.errors import BundleError

MiB: Final = 1024 * 1024
DEFAULT_MAX_BYTES: Final = 256 * MiB
DEFAULT_MAX_MEMBERS: Final = 10_000
BUNDLE_SUFFIX: Final = ".tar.gz"

_HEADER_BUDGET: Final = 64 * 1024  # one header with its pax / long-name records
_SLACK: Final = 2 * tarfile.RECORDSIZE  # padding plus the tar stream's read-ahead
_CHUNK: Final = 64 * 1024
_MAX_LINK_HOPS: Final = 40  # as Linux's own limit on nested symlinks


@dataclass(frozen=True)
class BundleLimits:
    """Safety budgets for reading a bundle: file data in bytes, and members."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_members < 1:
            raise BundleError(f"bundle limits must be positive, not {self}")


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle file as ``build_bundle`` wrote it."""

    path: Path
    manifest: Manifest
    sha256: str
    size: int


def bundle_name(manifest: Manifest) -> str:
    """The file name of an app's bundle: ``<name>-<version>.tar.gz``."""
    return f"{manifest.name}-{manifest.version}{BUNDLE_SUFFIX}"


# -- the pure core -----------------------------------------------------------------------

Kind = Literal["file", "dir", "link"]


@dataclass(frozen=True)
class _Member:
    """One member as the rules see it: a normalised relative path and what it is."""

    name: str
    kind: Kind
    size: int = 0
    executable: bool = False
    target: str = ""

    @property
    def mode(self) -> int:
        return 0o755 if self.kind != "file" or self.executable else 0o644


def _normalise(label: str, raw: str) -> str:
    """``./a//b`` is ``a/b``; absolute paths and ``..`` components are refused."""
    if raw.startswith("/"):
        raise BundleError(f"{label}: member {raw!r}: absolute path")
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{label}: member {raw!r}: path has a '..' component")
    return "/".join(parts)


class _Checker:
    """Admits members one by one against the rules and the limits; pure."""

    def __init__(self, label: str, limits: BundleLimits) -> None:
        self.label = label
        self.limits = limits
        self.members = 0
        self.declared = 0  # bytes of file data the headers announced
        self.read = 0  # bytes of file data really read
        self.files: set[str] = set()
        self.dirs: set[str] = set()  # explicit directory members
        self.parents: set[str] = set()  # every directory some member lies in
        self.links: dict[str, str] = {}

    def refuse(self, name: str, problem: str) -> BundleError:
        return BundleError(f"{self.label}: member {name!r}: {problem}")

    def admit(self, member: _Member) -> None:
        name = member.name
        self.members += 1
        if self.members > self.limits.max_members:
            raise self.refuse(name, f"more than {self.limits.max_members} members")
        if not name:
            if member.kind != "dir":
                raise self.refuse(name, "the bundle's root must be a directory")
            return
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self.links:
                raise self.refuse(name, f"lies under the symlink {parent!r}")
            if parent in self.files:
                raise self.refuse(name, f"lies under the file {parent!r}")
        taken = name in self.files or name in self.links or name in self.dirs
        if taken or (member.kind != "dir" and name in self.parents):
            raise self.refuse(name, "duplicate member")
        self.parents.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
        if member.kind == "dir":
            self.dirs.add(name)
        elif member.kind == "link":
            self._admit_link(member)
        else:
            if name == MANIFEST_NAME and member.size > MAX_MANIFEST_BYTES:
                raise self.refuse(name, f"larger than {MAX_MANIFEST_BYTES} bytes")
            self.declared += member.size
            if self.declared > self.limits.max_bytes:
                raise self.refuse(name, f"unpacked size above {self.limits.max_bytes} bytes")
            self.files.add(name)

    def _admit_link(self, member: _Member) -> None:
        if not member.target:
            raise self.refuse(member.name, "symlink has an empty target")
        if member.target.startswith("/"):
            raise self.refuse(member.name, f"symlink target {member.target!r} is absolute")
        self.links[member.name] = member.target

    def count(self, name: str, size: int) -> None:
        """Count ``size`` bytes of file data really read for member ``name``."""
        self.read += size
        if self.read > self.limits.max_bytes:
            raise self.refuse(name, f"unpacked size above {self.limits.max_bytes} bytes")

    def finish(self) -> None:
        """The checks that need every member: symlink targets and ``roost.toml``."""
        for name in sorted(self.links):
            self._resolve(name)
        if MANIFEST_NAME not in self.files:
            raise BundleError(f"{self.label}: no {MANIFEST_NAME} file at the bundle's root")

    def _resolve(self, name: str) -> None:
        """Follow ``name`` through every symlink of the bundle; refuse if it leaves."""
        pending = deque([*name.split("/")[:-1], *self.links[name].split("/")])
        path: list[str] = []
        hops = 0
        while pending:
            part = pending.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not path:
                    raise self.refuse(
                        name, f"symlink target {self.links[name]!r} resolves outside the bundle"
                    )
                path.pop()
                continue
            path.append(part)
            target = self.links.get("/".join(path))
            if target is not None:
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise self.refuse(name, "too many levels of symlinks")
                path.pop()
                pending.extendleft(reversed(target.split("/")))


# -- building ----------------------------------------------------------------------------


def build_bundle(source: Path, out_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> BuiltBundle:
    """Pack the app folder ``source`` into ``out_dir/<name>-<version>.tar.gz``.

    The folder is checked by the rules a device applies; the file is written through a
    temporary file and a rename, so a refused or failed build leaves nothing.
    """
    manifest = Manifest.load(source)
    source_real, out_real = source.resolve(), out_dir.resolve()
    if out_real == source_real or source_real in out_real.parents:
        raise BundleError(f"{out_dir}: the bundle must be written outside the app folder")
    checker = _Checker(str(source), BundleLimits(max_bytes=max_bytes))
    try:
        members = list(_scan(source, checker))
    except OSError as err:
        raise BundleError(f"{source}: cannot read the app folder: {err}") from err
    checker.finish()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / bundle_name(manifest)
    tmp = out_dir / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with tmp.open("wb") as raw:
            _write_tar(source, members, raw)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise BundleError(f"{source}: cannot build {path}: {err}") from err
    finally:
        tmp.unlink(missing_ok=True)
    return BuiltBundle(path, manifest, _sha256(path), path.stat().st_size)


def _scan(source: Path, checker: _Checker) -> Iterator[_Member]:
    """Every entry under ``source``, sorted by path, admitted by ``checker``."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(source, onerror=_raise):
        rel = os.path.relpath(dirpath, source)
        for entry in (*dirnames, *filenames):
            found.append(entry if rel == "." else f"{rel}/{entry}")
    for name in sorted(found):
        st = os.lstat(source / name)
        if stat.S_ISDIR(st.st_mode):
            member = _Member(name, "dir")
        elif stat.S_ISREG(st.st_mode):
            member = _Member(name, "file", st.st_size, bool(st.st_mode & 0o111))
        elif stat.S_ISLNK(st.st_mode):
            member = _Member(name, "link", target=os.readlink(source / name))
        else:
            raise checker.refuse(name, f"{_file_type(st.st_mode)} cannot be bundled")
        checker.admit(member)
        yield member


def _raise(err: OSError) -> None:
    raise err


def _file_type(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _write_tar(source: Path, members: list[_Member], raw: IO[bytes]) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = member.mode
            if member.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif member.kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, member.target
                tar.addfile(info)
            else:
                info.size = member.size
                # O_NOFOLLOW: the file was checked as a regular file; a swap is refused.
                fd = os.open(source / member.name, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as file:
                    tar.addfile(info, file)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- reading -----------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _MeteredStream:
    """The decompressed tar stream, refusing to inflate more than it was allowed."""

    def __init__(self, inner: _Readable, label: str) -> None:
        self._inner = inner
        self._label = label
        self._consumed = 0
        self._limit = 0
        self._doing = "reading the first header"

    def allow(self, size: int, doing: str) -> None:
        self._limit = self._consumed + size
        self._doing = doing

    def read(self, size: int = -1) -> bytes:
        room = self._limit - self._consumed
        if room <= 0:
            raise BundleError(
                f"{self._label}: {self._doing}: inflates past its budget (a gzip bomb?)"
            )
        data = self._inner.read(room if size < 0 else min(size, room))
        self._consumed += len(data)
        return data


class _Sink:
    """Where members go; this one drops them (inspection)."""

    def directory(self, member: _Member) -> None:
        """Nothing to make: inspection only checks."""

    def link(self, member: _Member) -> None:
        """Nothing to make: inspection only checks."""

    def file(self, member: _Member, chunks: Iterator[bytes]) -> None:
        # Read to the end all the same: the data is counted against the limits.
        deque(chunks, maxlen=0)


def inspect_bundle(path: Path, limits: BundleLimits | None = None) -> Manifest:
    """Check every member of a bundle and return its manifest; writes nothing."""
    return _read(path, limits or BundleLimits(), _Sink())


def _read(path: Path, limits: BundleLimits, sink: _Sink) -> Manifest:
    label = path.name
    checker = _Checker(label, limits)
    manifest: Manifest | None = None
    try:
        with path.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            stream = _MeteredStream(gz, label)
            stream.allow(_HEADER_BUDGET, "reading the first header")
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                while (info := tar.next()) is not None:
                    member = _member(label, info)
                    checker.admit(member)
                    if member.kind == "dir":
                        sink.directory(member)
                    elif member.kind == "link":
                        sink.link(member)
                    else:
                        stream.allow(member.size + _SLACK, f"member {member.name!r}")
                        chunks = _chunks(tar, info, member.name, checker)
                        if member.name == MANIFEST_NAME:
                            text = b"".join(chunks)
                            manifest = Manifest.from_bytes(text)
                            chunks = iter((text,))
                        sink.file(member, chunks)
                    stream.allow(_HEADER_BUDGET, f"the header after {member.name!r}")
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise BundleError(f"{label}: not a gzip-compressed tar: {err}") from err
    except OSError as err:
        raise BundleError(f"{label}: {err}") from err
    checker.finish()
    assert manifest is not None  # finish() refuses a bundle without one
    return manifest


def _member(label: str, info: tarfile.TarInfo) -> _Member:
    """A tar header as the rules see it; the kinds a bundle may not hold are refused."""
    name = _normalise(label, info.name)
    refuse = f"{label}: member {info.name!r}:"
    if info.sparse is not None:
        raise BundleError(f"{refuse} sparse files are not allowed")
    if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return _Member(name, "file", info.size, bool(info.mode & 0o111))
    if info.type == tarfile.DIRTYPE:
        return _Member(name, "dir")
    if info.type == tarfile.SYMTYPE:
        return _Member(name, "link", target=info.linkname)
    kinds = {
        tarfile.LNKTYPE: f"hard link to {info.linkname!r}",
        tarfile.CHRTYPE: "character device",
        tarfile.BLKTYPE: "block device",
        tarfile.FIFOTYPE: "fifo",
    }
    what = kinds.get(info.type, f"member type {info.type!r}")
    raise BundleError(f"{refuse} {what} is not allowed")


def _chunks(
    tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, checker: _Checker
) -> Iterator[bytes]:
    """A file's data as really read, each chunk counted against the limit."""
    data = tar.extractfile(info)
    if data is None:  # pragma: no cover - regular members always have data
        return
    while chunk := data.read(_CHUNK):
        checker.count(name, len(chunk))
        yield chunk


# -- unpacking ---------------------------------------------------------------------------


class _Unpacker(_Sink):
    """Creates members under ``root``, never following a link and never overwriting."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: list[Path] = [root]

    def _path(self, member: _Member) -> Path:
        path = self.root / member.name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def directory(self, member: _Member) -> None:
        if member.name:
            path = self._path(member)
            path.mkdir(exist_ok=True)
            path.chmod(0o755)
            self.dirs.append(path)

    def link(self, member: _Member) -> None:
        os.symlink(member.target, self._path(member))

    def file(self, member: _Member, chunks: Iterator[bytes]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(self._path(member), flags, member.mode)
        with os.fdopen(fd, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            os.fchmod(fd, member.mode)
            file.flush()
            os.fsync(fd)

    def sync(self) -> None:
        for path in self.dirs:
            fsync_dir(path)


def unpack_bundle(path: Path, dest: Path, limits: BundleLimits | None = None) -> Manifest:
    """Check and extract a bundle into ``dest``, which must not exist yet.

    Members go into a temporary sibling of ``dest``, renamed to ``dest`` once every
    member passed and is on disk; on any refusal nothing is left behind.
    """
    if os.path.lexists(dest):
        raise BundleError(f"{path.name}: cannot unpack into {dest}: it already exists")
    tmp = dest.with_name(f".{dest.name}.unpack-{secrets.token_hex(4)}")
    try:
        tmp.mkdir(mode=0o755)
        unpacker = _Unpacker(tmp)
        manifest = _read(path, limits or BundleLimits(), unpacker)
        unpacker.sync()
        tmp.rename(dest)
        fsync_dir(dest.parent)
    except OSError as err:
        raise BundleError(f"{path.name}: cannot unpack into {dest}: {err}") from err
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
