"""Installed versions: install, switch, roll back, prune, remove, and crash clean-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.apps.bundle import build_bundle
from roost.apps.installs import MARKER, AppInstalls
from roost.apps.manifest import SemVer
from roost.errors import BundleError, NotFoundError, ValidationError


def make_bundle(tmp_path: Path, version: str, name: str = "web", extra: str = "") -> Path:
    source = tmp_path / "src" / f"{name}-{version}"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(
        f'name = "{name}"\nversion = "{version}"\ncommand = "bin/run"\n{extra}'
    )
    (source / "bin").mkdir()
    (source / "bin" / "run").write_text(f"#!/bin/sh\necho {version}\n")
    return build_bundle(source, tmp_path / "bundles").path


def v(text: str) -> SemVer:
    return SemVer.parse(text)


@pytest.fixture
def installs(tmp_path: Path) -> AppInstalls:
    return AppInstalls(tmp_path / "apps")


def test_install(tmp_path: Path, installs: AppInstalls) -> None:
    installed = installs.install(make_bundle(tmp_path, "1.0.0"))
    root = tmp_path / "apps" / "web"
    assert installed.path == root / "versions" / "1.0.0"
    assert (installed.app, installed.version) == ("web", v("1.0.0"))
    assert (installed.path / "bin" / "run").read_text() == "#!/bin/sh\necho 1.0.0\n"
    assert (installed.path / MARKER).is_file()
    assert (root / "data").is_dir()
    assert installs.versions("web") == (v("1.0.0"),)
    assert installs.apps() == ("web",)
    assert installs.current("web") is None
    assert installs.installed("web", "1.0.0") == installed
    assert not any((tmp_path / "apps" / ".incoming").iterdir())


def test_installing_a_complete_version_again_is_a_no_op(
    tmp_path: Path, installs: AppInstalls
) -> None:
    bundle = make_bundle(tmp_path, "1.0.0")
    first = installs.install(bundle)
    (first.path / "bin" / "run").write_text("touched")
    marker_inode = (first.path / MARKER).stat().st_ino
    assert installs.install(bundle) == first
    assert (first.path / "bin" / "run").read_text() == "touched"
    assert (first.path / MARKER).stat().st_ino == marker_inode


def test_no_data_dir_for_an_app_without_persistent_data(
    tmp_path: Path, installs: AppInstalls
) -> None:
    installs.install(make_bundle(tmp_path, "1.0.0", extra="[data]\npersistent = false\n"))
    assert not installs.data_dir("web").exists()


def test_activate_and_rollback(tmp_path: Path, installs: AppInstalls) -> None:
    for version in ("1.0.0", "1.1.0"):
        installs.install(make_bundle(tmp_path, version))
    app = tmp_path / "apps" / "web"

    installs.activate("web", "1.0.0")
    assert (installs.current("web"), installs.previous("web")) == (v("1.0.0"), None)
    assert os.readlink(app / "current") == "versions/1.0.0"
    assert (app / "current" / "bin" / "run").read_text().endswith("1.0.0\n")

    installs.activate("web", v("1.1.0"))
    assert (installs.current("web"), installs.previous("web")) == (v("1.1.0"), v("1.0.0"))
    assert os.readlink(app / "previous") == "versions/1.0.0"

    installs.activate("web", "1.1.0")  # already current: previous stays
    assert installs.previous("web") == v("1.0.0")

    assert installs.rollback("web") == v("1.0.0")
    assert (installs.current("web"), installs.previous("web")) == (v("1.0.0"), v("1.1.0"))
    assert installs.rollback("web") == v("1.1.0")
    assert not list(app.glob(".*.tmp"))


def test_refusals(tmp_path: Path, installs: AppInstalls) -> None:
    installs.install(make_bundle(tmp_path, "1.0.0"))
    with pytest.raises(NotFoundError, match=r"web 2\.0\.0 is not installed"):
        installs.activate("web", "2.0.0")
    installs.activate("web", "1.0.0")
    with pytest.raises(NotFoundError, match="web has no previous version to roll back to"):
        installs.rollback("web")
    with pytest.raises(ValidationError, match="is not an app name"):
        installs.current("../etc")
    with pytest.raises(ValidationError, match="is not a version"):
        installs.activate("web", "latest")
    with pytest.raises(ValidationError):
        installs.prune("web", keep=-1)


PRUNE = [
    # installed, current, previous, keep, removed
    (["1", "2", "3", "4", "5"], "5", "2", 2, ["1", "3", "4"]),
    (["1", "2", "3", "4", "5"], "5", "2", 3, ["1", "3"]),
    (["1", "2", "3", "4", "5"], "5", "2", 0, ["1", "3", "4"]),
    (["1", "2", "3"], "1", None, 2, ["2"]),
    (["1", "2", "3", "4"], "1", None, 2, ["2", "3"]),
    (["1", "2", "3"], None, None, 1, ["1", "2"]),
    (["1", "2", "3"], None, None, 5, []),
]


@pytest.mark.parametrize(("installed", "current", "previous", "keep", "removed"), PRUNE)
def test_prune_never_removes_current_or_previous(
    tmp_path: Path,
    installs: AppInstalls,
    installed: list[str],
    current: str | None,
    previous: str | None,
    keep: int,
    removed: list[str],
) -> None:
    for major in installed:
        installs.install(make_bundle(tmp_path, f"{major}.0.0"))
    for version in (previous, current):
        if version is not None:
            installs.activate("web", f"{version}.0.0")
    assert installs.prune("web", keep=keep) == tuple(v(f"{m}.0.0") for m in removed)
    left = [m for m in installed if m not in removed]
    assert installs.versions("web") == tuple(v(f"{m}.0.0") for m in left)
    versions_dir = tmp_path / "apps" / "web" / "versions"
    assert sorted(p.name for p in versions_dir.iterdir()) == sorted(f"{m}.0.0" for m in left)
    assert installs.current("web") == (v(f"{current}.0.0") if current else None)
    assert installs.previous("web") == (v(f"{previous}.0.0") if previous else None)


def test_versions_are_ordered_by_precedence(tmp_path: Path, installs: AppInstalls) -> None:
    for version in ("1.10.0", "1.0.0", "1.0.0-rc.1", "1.2.0", "1.0.0-alpha"):
        installs.install(make_bundle(tmp_path, version))
    assert [str(x) for x in installs.versions("web")] == [
        "1.0.0-alpha",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
    ]


def test_data_is_kept_until_asked(tmp_path: Path, installs: AppInstalls) -> None:
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        installs.install(make_bundle(tmp_path, version))
        installs.activate("web", version)
        (installs.data_dir("web") / "db").write_text(f"written by {version}")
    installs.prune("web", keep=0)
    installs.rollback("web")
    installs.remove("web")
    assert (installs.data_dir("web") / "db").read_text() == "written by 3.0.0"
    assert [p.name for p in (tmp_path / "apps" / "web").iterdir()] == ["data"]
    assert installs.versions("web") == ()
    assert installs.current("web") is None

    installs.install(make_bundle(tmp_path, "4.0.0"))
    assert (installs.data_dir("web") / "db").read_text() == "written by 3.0.0"
    installs.remove("web", data=True)
    assert not (tmp_path / "apps" / "web").exists()
    installs.remove("web")  # nothing there: fine


def test_a_refused_bundle_leaves_nothing(tmp_path: Path, installs: AppInstalls) -> None:
    bundle = make_bundle(tmp_path, "1.0.0")
    bundle.write_bytes(bundle.read_bytes()[:-40])
    with pytest.raises(BundleError):
        installs.install(bundle)
    assert list((tmp_path / "apps").rglob("*")) == []


def test_the_marker_name_is_reserved(tmp_path: Path, installs: AppInstalls) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "roost.toml").write_text('name = "web"\nversion = "1.0.0"\ncommand = "x"\n')
    (source / MARKER).write_text("{}")
    bundle = build_bundle(source, tmp_path / "out").path
    with pytest.raises(BundleError, match=f"member '{MARKER}': the name is reserved"):
        installs.install(bundle)
    assert installs.versions("web") == ()
    assert not (tmp_path / "apps" / "web" / "versions" / "1.0.0").exists()


def test_a_crash_is_cleaned_up_by_the_next_use(tmp_path: Path) -> None:
    root = tmp_path / "apps"
    installs = AppInstalls(root)
    installs.install(make_bundle(tmp_path, "1.0.0"))
    installs.activate("web", "1.0.0")
    app = root / "web"
    # A crash while unpacking: a half-written staging dir and unpack temp dir.
    half = root / ".incoming" / "5f2a"
    (half / "bin").mkdir(parents=True)
    (half / "bin" / "run").write_text("#!/bin/s")
    (root / ".incoming" / ".77ab.unpack-0c1d").mkdir()
    # A version dir without its marker, and one half removed (marker dropped first).
    (app / "versions" / "2.0.0" / "bin").mkdir(parents=True)
    (app / "versions" / "2.0.0" / "roost.toml").write_text("name = ")
    # A temporary symlink of an interrupted switch, and a trash dir.
    (app / ".current.9f8e.tmp").symlink_to("versions/2.0.0")
    (app / "versions" / ".trash-1").mkdir()
    # Until cleaned, the unmarked version does not count.
    assert installs.versions("web") == (v("1.0.0"),)
    with pytest.raises(NotFoundError):
        installs.activate("web", "2.0.0")

    again = AppInstalls(root)
    assert not (root / ".incoming").exists()
    assert sorted(p.name for p in (app / "versions").iterdir()) == ["1.0.0"]
    assert sorted(p.name for p in app.iterdir()) == ["current", "data", "versions"]
    assert again.current("web") == v("1.0.0")

    # The version that was half there installs cleanly now.
    installed = again.install(make_bundle(tmp_path, "2.0.0"))
    assert (installed.path / MARKER).is_file()
    assert again.versions("web") == (v("1.0.0"), v("2.0.0"))


def test_an_unmarked_dir_in_the_way_is_replaced(tmp_path: Path, installs: AppInstalls) -> None:
    bundle = make_bundle(tmp_path, "1.0.0")
    stale = tmp_path / "apps" / "web" / "versions" / "1.0.0"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    installed = installs.install(bundle)
    assert not (installed.path / "junk").exists()
    assert (installed.path / MARKER).is_file()


def test_current_pointing_at_a_removed_version_is_none(
    tmp_path: Path, installs: AppInstalls
) -> None:
    installs.install(make_bundle(tmp_path, "1.0.0"))
    installs.activate("web", "1.0.0")
    (tmp_path / "apps" / "web" / "versions" / "1.0.0" / MARKER).unlink()
    assert installs.current("web") is None
