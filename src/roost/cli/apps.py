"""``roost app ...``: build bundles, publish them to the catalog, and look at it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect, console, print_json

apps_app = typer.Typer(help="Apps: bundles and the fleet's catalog.", no_args_is_help=True)


@apps_app.command("build")
def build(
    source: Annotated[Path, typer.Argument(help="the app's folder, with its roost.toml")],
    out: Annotated[Path, typer.Option(help="where the bundle goes")] = Path(),
) -> None:
    """Check an app's manifest and pack the folder into a bundle."""
    from roost.apps.bundle import build_bundle
    from roost.storage.quota import show_size

    built = build_bundle(source, out)
    print(f"built {built.path} ({show_size(built.size)}, sha256 {built.sha256[:16]}…)")


@apps_app.command("publish")
def publish(
    bundle: Annotated[Path, typer.Argument(help="a bundle made by `roost app build`")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a bundle: the hub checks it again, stores it and signs it into the catalog."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from roost.errors import ValidationError

    if not bundle.is_file():
        raise ValidationError(f"no bundle at {bundle}")
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with (
        connect(config) as client,
        Progress(*columns, transient=True, disable=as_json) as progress,
    ):
        task = progress.add_task("upload", total=bundle.stat().st_size)
        release = client.publish_app(bundle, lambda n: progress.advance(task, n))
    if as_json:
        print_json(release)
        return
    what = "published" if release["new"] else "already published (same content)"
    print(f"{release['name']}@{release['version']} {what}, sha256 {release['sha256'][:16]}…")


@apps_app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The apps in the catalog, with their newest versions."""
    with connect(config) as client:
        apps = client.apps()
    if as_json:
        print_json(apps)
        return
    from rich.table import Table

    table = Table(title=f"{len(apps)} app(s)")
    for column in ("NAME", "LATEST", "VERSIONS", "KIND", "DESCRIPTION"):
        table.add_column(column)
    for app in apps:
        table.add_row(
            app["name"], app["latest"], str(app["versions"]), app["kind"], app["description"]
        )
    console().print(table)


@apps_app.command("show")
def show(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """One app: its versions, who published them, and which devices run it."""
    with connect(config) as client:
        app = client.app(name)
    if as_json:
        print_json(app)
        return
    from rich.table import Table

    from roost.storage.quota import show_size

    table = Table(title=f"{name}: versions")
    for column in ("VERSION", "SIZE", "PUBLISHED", "BY", "SHA256"):
        table.add_column(column)
    for release in app["releases"]:
        table.add_row(
            release["version"],
            show_size(release["size"]),
            release["published_at"][:19],
            release["published_by"],
            release["sha256"][:16],
        )
    console().print(table)
    devices: dict[str, Any] = app["devices"]
    if not devices:
        print("no device runs it")
    for device_id, state in sorted(devices.items()):
        print(f"{device_id}: {state.get('version', '?')} {state.get('state', '')}".rstrip())


@apps_app.command("root-key")
def root_key(
    out: Annotated[Path, typer.Option(help="where the key goes (e.g. removable media)")],
    remove: Annotated[
        bool, typer.Option(help="then delete it from the hub (keep the copy safe!)")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Export the catalog's root signing key, to keep it offline."""
    from roost.atomic import write_private
    from roost.errors import ValidationError

    if out.exists():
        raise ValidationError(f"{out} exists; the root key is never written over a file")
    with connect(config) as client:
        write_private(out, client.catalog_root_key())
        print(f"root key written to {out} (mode 0600)")
        if remove:
            client.remove_catalog_root_key()
            print("root key removed from the hub; root re-signing and key rotation need it")


@apps_app.command("logs")
def logs(
    device: Annotated[str, typer.Argument(help="the device's id")],
    name: Annotated[str, typer.Argument(help="the app")],
    lines: Annotated[int, typer.Option("--lines", "-n", help="how many of the last lines")] = 100,
    config: ConfigOpt = None,
) -> None:
    """The last lines an app wrote on a device (its stdout and stderr, rotated by size)."""
    from roost.errors import RoostError

    with connect(config) as client:
        reply = client.command(device, "app-logs", {"app": name, "lines": lines})
    if reply["status"] != "ok":
        raise RoostError(f"logs of {name} on {device}: {reply['error']}")
    print("\n".join(reply["result"].get("lines", [])))
