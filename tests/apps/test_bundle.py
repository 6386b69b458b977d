"""Bundles: reproducible builds, round trips, and every malicious shape refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from roost.apps import bundle
from roost.apps.bundle import (
    BundleLimits,
    build_bundle,
    inspect_bundle,
    unpack_bundle,
)
from roost.errors import BundleError

MANIFEST = b'name = "web"\nversion = "1.0.0"\ncommand = "bin/web"\n'
MiB = 1024 * 1024

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs: object) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def manifest_member() -> Member:
    return member("roost.toml", MANIFEST)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Member:
    return member(name, kind=kind, linkname=target)


def write_tar(path: Path, members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def gzip_bomb(path: Path, header: bytes, inflated: int) -> Path:
    """``header`` followed by ``inflated`` zero bytes, compressed (about 1000:1)."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip container
    zeros = bytes(MiB)
    parts = [squeeze.compress(header)]
    parts += [squeeze.compress(zeros) for _ in range(inflated // MiB)]
    path.write_bytes(b"".join([*parts, squeeze.flush()]))
    return path


def header(name: str, kind: bytes, size: int, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=fmt)


def make_app(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "share" / "empty").mkdir(parents=True)
    (root / "roost.toml").write_bytes(MANIFEST)
    (root / "bin" / "web").write_text("#!/bin/sh\necho web\n")
    (root / "bin" / "web").chmod(0o700)
    (root / "share" / "index.html").write_text("<h1>hi</h1>\n")
    (root / "share" / "index.html").chmod(0o600)
    (root / "share" / "home.html").symlink_to("index.html")
    (root / "start").symlink_to("bin/web")
    return root


def tree(root: Path) -> dict[str, tuple[str, int, str | bytes]]:
    """Every entry under ``root``: kind, permission bits, content or link target."""
    out: dict[str, tuple[str, int, str | bytes]] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        st = path.lstat()
        if path.is_symlink():
            out[name] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            out[name] = ("dir", stat.S_IMODE(st.st_mode), b"")
        else:
            out[name] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


# -- building ----------------------------------------------------------------------------


def test_build_inspect_unpack_round_trip(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    built = build_bundle(app, tmp_path / "out")
    assert built.path == tmp_path / "out" / "web-1.0.0.tar.gz"
    assert built.size == built.path.stat().st_size
    assert built.sha256 == hashlib.sha256(built.path.read_bytes()).hexdigest()
    assert built.manifest.name == "web"
    assert inspect_bundle(built.path) == built.manifest
    assert unpack_bundle(built.path, tmp_path / "x") == built.manifest
    unpacked = tree(tmp_path / "x")
    assert unpacked == {
        "bin": ("dir", 0o755, b""),
        "bin/web": ("file", 0o755, b"#!/bin/sh\necho web\n"),
        "roost.toml": ("file", 0o644, MANIFEST),
        "share": ("dir", 0o755, b""),
        "share/empty": ("dir", 0o755, b""),
        "share/home.html": ("link", 0, "index.html"),
        "share/index.html": ("file", 0o644, b"<h1>hi</h1>\n"),
        "start": ("link", 0, "bin/web"),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "out", "x"]


def test_build_is_reproducible(tmp_path: Path) -> None:
    first = build_bundle(make_app(tmp_path / "a"), tmp_path / "out-a")
    other = make_app(tmp_path / "b")
    os.utime(other / "roost.toml", (1_700_000_000, 1_700_000_000))
    (other / "share" / "index.html").chmod(0o664)
    (other / "bin" / "web").chmod(0o755)
    second = build_bundle(other, tmp_path / "out-b")
    assert first.sha256 == second.sha256
    raw = first.path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime
    with tarfile.open(first.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert "share/empty" in names
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode in (0o644, 0o755)


def test_a_hard_linked_source_file_is_bundled_as_a_plain_file(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    os.link(app / "bin" / "web", app / "bin" / "again")
    built = build_bundle(app, tmp_path / "out")
    with tarfile.open(built.path) as tar:
        assert tar.getmember("bin/again").isreg()


def refuse_build(tmp_path: Path, spoil: Callable[[Path], None], expected: str) -> None:
    app = make_app(tmp_path / "app")
    spoil(app)
    with pytest.raises(BundleError) as err:
        build_bundle(app, tmp_path / "out", max_bytes=MiB)
    assert expected in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda app: (app / "etc").symlink_to("/etc"),
         "member 'etc': symlink target '/etc' is absolute"),
        (lambda app: (app / "up").symlink_to("../x"),
         "member 'up': symlink target '../x' resolves outside the bundle"),
        (lambda app: (app / "bin" / "up").symlink_to("../.."),
         "member 'bin/up': symlink target '../..' resolves outside the bundle"),
        (lambda app: os.mkfifo(app / "pipe"), "member 'pipe': fifo cannot be bundled"),
        (lambda app: (app / "roost.toml").unlink(), "roost.toml: missing in"),
        (lambda app: (app / "roost.toml").write_bytes(MANIFEST.replace(b"web", b"Web")),
         "roost.toml: name: 'Web'"),
        (lambda app: (app / "big").write_bytes(bytes(MiB + 1)),
         f"member 'big': unpacked size above {MiB} bytes"),
    ],
)  # fmt: skip
def test_build_refuses(tmp_path: Path, spoil: Callable[[Path], None], expected: str) -> None:
    refuse_build(tmp_path, spoil, expected)


def test_build_refuses_to_write_inside_the_app(tmp_path: Path) -> None:
    app = make_app(tmp_path / "app")
    with pytest.raises(BundleError, match="outside the app folder"):
        build_bundle(app, app / "dist")


# -- refusing what a device is given -----------------------------------------------------

M = manifest_member
CASES: list[tuple[str, Callable[[], list[Member]], str]] = [
    ("absolute", lambda: [M(), member("/etc/cron.d/x", b"x")],
     "member '/etc/cron.d/x': absolute path"),
    ("traversal", lambda: [M(), member("../evil", b"x")],
     "member '../evil': path has a '..' component"),
    ("deep traversal", lambda: [M(), member("a/../../evil", b"x")],
     "member 'a/../../evil': path has a '..' component"),
    ("absolute symlink", lambda: [M(), link("etc", "/etc")],
     "member 'etc': symlink target '/etc' is absolute"),
    ("escaping symlink", lambda: [M(), link("a/up", "../../x")],
     "member 'a/up': symlink target '../../x' resolves outside the bundle"),
    ("symlink chain", lambda: [M(), link("a/root", ".."), link("out", "a/root/..")],
     "member 'out': symlink target 'a/root/..' resolves outside the bundle"),
    ("symlink loop", lambda: [M(), link("a", "b"), link("b", "a")],
     "member 'a': too many levels of symlinks"),
    ("write through symlink", lambda: [M(), link("l", "."), member("l/x", b"x")],
     "member 'l/x': lies under the symlink 'l'"),
    ("hard link", lambda: [M(), link("h", "roost.toml", tarfile.LNKTYPE)],
     "member 'h': hard link to 'roost.toml' is not allowed"),
    ("char device", lambda: [M(), member("null", kind=tarfile.CHRTYPE)],
     "member 'null': character device is not allowed"),
    ("block device", lambda: [M(), member("sda", kind=tarfile.BLKTYPE)],
     "member 'sda': block device is not allowed"),
    ("fifo", lambda: [M(), member("pipe", kind=tarfile.FIFOTYPE)],
     "member 'pipe': fifo is not allowed"),
    ("duplicate", lambda: [M(), member("roost.toml", MANIFEST)],
     "member 'roost.toml': duplicate member"),
    ("duplicate spelled differently", lambda: [M(), member("a", b"1"), member("./a", b"2")],
     "member 'a': duplicate member"),
    ("file over a directory", lambda: [M(), member("d/x", b"1"), member("d", b"2")],
     "member 'd': duplicate member"),
    ("too many members", lambda: [M(), *(member(f"f{i}", b"") for i in range(4))],
     "member 'f3': more than 4 members"),
    ("oversized by header", lambda: [M(), member("big", bytes(2 * MiB))],
     f"member 'big': unpacked size above {MiB} bytes"),
    ("no manifest", lambda: [member("bin/web", b"x")], "no roost.toml file at the bundle's root"),
    ("manifest in a folder", lambda: [member("app/roost.toml", MANIFEST)],
     "no roost.toml file at the bundle's root"),
    ("manifest a symlink", lambda: [member("m", MANIFEST), link("roost.toml", "m")],
     "no roost.toml file at the bundle's root"),
    ("invalid manifest", lambda: [member("roost.toml", b'name = "web"\nversion = "1"\n')],
     "roost.toml: version: '1' is not a semantic version"),
]  # fmt: skip
LIMITS = BundleLimits(max_bytes=MiB, max_members=4)


def read_with(how: str) -> Callable[[Path, BundleLimits], object]:
    if how == "inspect":
        return inspect_bundle
    return lambda path, limits: unpack_bundle(path, path.parent / "dest", limits)


@pytest.mark.parametrize("how", ["inspect", "unpack"])
@pytest.mark.parametrize(("case", "members", "expected"), CASES, ids=[c[0] for c in CASES])
def test_refused_with_the_member_named_and_nothing_left(
    tmp_path: Path, how: str, case: str, members: Callable[[], list[Member]], expected: str
) -> None:
    path = write_tar(tmp_path / "web.tar.gz", members())
    with pytest.raises(BundleError) as err:
        read_with(how)(path, LIMITS)
    assert expected in str(err.value), case
    assert str(err.value).startswith("web.tar.gz: ") or "roost.toml" in expected
    assert [p.name for p in tmp_path.iterdir()] == ["web.tar.gz"]


def test_the_same_members_pass_when_harmless(tmp_path: Path) -> None:
    members = [
        member("./", kind=tarfile.DIRTYPE),
        M(),
        member("d/x", b"1"),
        member("d", kind=tarfile.DIRTYPE),
        link("d/up", "../roost.toml"),
        link("d/self", "."),
        link("dangling", "nowhere/at/all"),
    ]
    path = write_tar(tmp_path / "web.tar.gz", members)
    assert inspect_bundle(path, LIMITS.__class__(max_members=7)).name == "web"
    unpack_bundle(path, tmp_path / "dest", BundleLimits(max_members=7))
    assert (tmp_path / "dest" / "d" / "up").read_bytes() == MANIFEST


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"not a gzip at all", "web.tar.gz: not a gzip-compressed tar: "),
        (gzip.compress(b"not a tar" * 100), "web.tar.gz: not a gzip-compressed tar: "),
        (gzip.compress(b""), "web.tar.gz: not a gzip-compressed tar: "),
    ],
)
def test_not_a_bundle(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "web.tar.gz"
    path.write_bytes(data)
    with pytest.raises(BundleError, match=f"^{expected}"):
        inspect_bundle(path)


def test_truncated_bundle(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "web.tar.gz", [M(), member("data", os.urandom(64 * 1024))])
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(BundleError, match=r"^web\.tar\.gz: "):
        unpack_bundle(path, tmp_path / "dest")
    assert [p.name for p in tmp_path.iterdir()] == ["web.tar.gz"]


def test_unpack_needs_a_fresh_destination(tmp_path: Path) -> None:
    built = build_bundle(make_app(tmp_path / "app"), tmp_path / "out")
    (tmp_path / "dest").mkdir()
    with pytest.raises(BundleError, match="already exists"):
        unpack_bundle(built.path, tmp_path / "dest")


# -- gzip bombs --------------------------------------------------------------------------

BOMBS = [
    ("gnu long name", header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 48 * MiB),
     "reading the first header: inflates past its budget"),
    ("pax header", header("x", tarfile.XHDTYPE, 48 * MiB, tarfile.USTAR_FORMAT),
     "reading the first header: inflates past its budget"),
    ("file data", header("roost.toml", tarfile.REGTYPE, 48 * MiB),
     "member 'roost.toml': larger than 65536 bytes"),
    ("second member", b"".join(i.tobuf(tarfile.GNU_FORMAT) + d.ljust(512, b"\0")
                               for i, d in [M()]) + header("big", tarfile.REGTYPE, 48 * MiB),
     f"member 'big': unpacked size above {MiB} bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "head", "expected"), BOMBS, ids=[b[0] for b in BOMBS])
def test_a_gzip_bomb_is_stopped_early(
    tmp_path: Path, case: str, head: bytes, expected: str
) -> None:
    path = gzip_bomb(tmp_path / "web.tar.gz", head, 48 * MiB)
    assert path.stat().st_size < MiB  # small on the wire, 48 MiB inflated
    tracemalloc.start()
    try:
        with pytest.raises(BundleError) as err:
            unpack_bundle(path, tmp_path / "dest", BundleLimits(max_bytes=MiB))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert expected in str(err.value), case
    assert peak < 4 * MiB, f"{case}: inflated {peak} bytes into memory"
    assert [p.name for p in tmp_path.iterdir()] == ["web.tar.gz"]


def test_real_bytes_are_counted_not_only_headers() -> None:
    checker = bundle._Checker("web.tar.gz", BundleLimits(max_bytes=100))
    checker.admit(bundle._Member("a", "file", size=10))
    checker.count("a", 100)
    with pytest.raises(BundleError, match="member 'a': unpacked size above 100 bytes"):
        checker.count("a", 1)


def test_limits_are_validated() -> None:
    with pytest.raises(BundleError):
        BundleLimits(max_bytes=0)
    with pytest.raises(BundleError):
        BundleLimits(max_members=-1)
