"""``roost store ...``: objects kept sealed and erasure-coded across the fleet's devices."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect, console, print_json

store_app = typer.Typer(
    help="Storage across the devices: put, get, ls, rm, stat, usage, quota.",
    no_args_is_help=True,
)

BucketOpt = Annotated[str, typer.Option("--bucket", "-b", help="the bucket")]
DEFAULT_BUCKET = "default"
# Below this a progress bar would only flicker.
PROGRESS_FROM = 8 << 20


def _progress(total: int | None, quiet: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    big = total is None or total >= PROGRESS_FROM
    return Progress(
        *columns, transient=True, disable=quiet or not big, console=Console(stderr=True)
    )


@store_app.command("put")
def put(
    file: Annotated[Path, typer.Argument(help="the file to store")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    name: Annotated[str, typer.Option(help="the object's name (default: the file's)")] = "",
    code: Annotated[
        str, typer.Option(help="K-of-N instead of the fleet's default, e.g. 2-of-4")
    ] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a file: sealed, split into shares and spread over devices that offer space."""
    from roost.errors import ValidationError

    if not file.is_file():
        raise ValidationError(f"no file at {file}")
    wanted = _code(code) if code else None
    size = file.stat().st_size
    with connect(config) as client, _progress(size, as_json) as progress:
        task = progress.add_task("put", total=size)
        stored = client.put_object(
            bucket, name or file.name, file, lambda n: progress.advance(task, n), wanted
        )
    if as_json:
        print_json(stored)
        return
    print(
        f"stored {stored['bucket']}/{stored['name']} ({stored['size']} bytes, "
        f"{stored['k']}-of-{stored['n']})"
    )


def _code(text: str) -> tuple[int, int]:
    from roost.errors import ValidationError

    k, sep, n = text.lower().partition("-of-")
    if not (sep and k.isdigit() and n.isdigit()):
        raise ValidationError(f"--code {text!r}: write it as K-of-N, e.g. 2-of-4")
    return int(k), int(n)


@store_app.command("get")
def get(
    name: Annotated[str, typer.Argument(help="the object's name")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="where to write it ('-': stdout)")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Read an object back from the devices' shares."""
    target = out or Path(name)
    with connect(config) as client:
        if str(target) == "-":
            client.get_object(bucket, name, sys.stdout.buffer)
            return
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as f, _progress(None, False) as progress:
                task = progress.add_task("get", total=None)
                size = client.get_object(bucket, name, f, lambda n: progress.advance(task, n))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    print(f"wrote {target} ({size} bytes)", file=sys.stderr)


@store_app.command("ls")
def ls(bucket: BucketOpt = "", config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The stored objects (of one bucket, with --bucket)."""
    with connect(config) as client:
        objects = client.objects(bucket)
    if as_json:
        print_json(objects)
        return
    from rich.table import Table

    table = Table(title=f"{len(objects)} object(s)")
    for column in ("BUCKET", "NAME", "SIZE", "CODE", "STORED"):
        table.add_column(column)
    for o in objects:
        table.add_row(
            o["bucket"], o["name"], str(o["size"]), f"{o['k']}-of-{o['n']}", o["created_at"]
        )
    console().print(table)


@store_app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(help="the object's name")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    config: ConfigOpt = None,
) -> None:
    """Delete an object and ask its devices to drop their shares."""
    with connect(config) as client:
        client.delete_object(bucket, name)
    print(f"deleted {bucket}/{name}")


@store_app.command("repair")
def repair(
    name: Annotated[str, typer.Argument(help="the object's name")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the shares that are not stored on an online device, on other devices."""
    with connect(config) as client:
        info = client.repair_object(bucket, name)
    if as_json:
        print_json(info)
        return
    stored = sum(1 for s in info["shares"] if s["state"] == "stored" and s["online"])
    print(f"{bucket}/{name}: {stored} of {info['n']} shares stored, {info['health']}")


@store_app.command("drain")
def drain(
    device_id: Annotated[str, typer.Argument(help="the device to move shares off")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark a device draining (it takes no new shares) and move every share it holds to
    other devices, before it is retired (also ``roost devices drain``)."""
    with connect(config) as client:
        done = client.drain_device(device_id)
    if as_json:
        print_json(done)
    else:
        print(f"{device_id}: moved {done['moved']} share(s) of {done['objects']} object(s)")
        for name, why in done["failed"].items():
            print(f"  not moved: {name}: {why}")
    if done["failed"]:
        sys.exit(1)  # the CLI runs click without standalone mode: typer.Exit would be lost


@store_app.command("stat")
def stat(
    name: Annotated[str, typer.Argument(help="the object's name")],
    bucket: BucketOpt = DEFAULT_BUCKET,
    check: Annotated[
        bool, typer.Option("--check", help="have the devices re-hash their shares first")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """An object's code, health, and where each of its shares lives."""
    with connect(config) as client:
        info = client.stat_object(bucket, name, check)
    if as_json:
        print_json(info)
        return
    print(
        f"{info['bucket']}/{info['name']}: {info['size']} bytes, {info['k']}-of-{info['n']}, "
        f"{info['health']}"
    )
    from rich.table import Table

    table = Table()
    for column in ("SHARE", "DEVICE", "STATE", "ONLINE", "SIZE"):
        table.add_column(column)
    for s in info["shares"]:
        online = "yes" if s["online"] else "no"
        table.add_row(str(s["index"]), s["device_id"], s["state"], online, str(s["size"]))
    console().print(table)


@store_app.command("usage")
def usage(
    tenant: Annotated[str, typer.Option(help="another tenant's usage (the hub's owner only)")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tenant's objects and bytes against its quota, and its shares on each device."""
    from roost.storage.quota import show_size

    with connect(config) as client:
        info = client.store_usage(tenant)
    if as_json:
        print_json(info)
        return
    quota = info["quota_bytes"]
    limit = "no quota" if quota is None else f"quota {show_size(quota)}"
    source = "" if quota is None and info["quota_from"] == "hub" else f" ({info['quota_from']})"
    print(
        f"{info['tenant']}: {info['objects']} object(s), {show_size(info['bytes'])} of "
        f"{limit}{source}; {show_size(info['raw_bytes'])} in shares on devices"
    )
    if info["pending_objects"]:
        print(f"  puts in progress: {info['pending_objects']}, {show_size(info['pending_bytes'])}")
    from rich.table import Table

    table = Table()
    for column in ("DEVICE", "ONLINE", "SHARES", "BYTES", "OFFERED", "FREE"):
        table.add_column(column)
    for d in info["devices"]:
        table.add_row(
            d["device_id"],
            "yes" if d["online"] else "no",
            str(d["shares"]),
            show_size(d["bytes"]),
            "-" if d["offered_bytes"] is None else show_size(d["offered_bytes"]),
            "-" if d["free_bytes"] is None else show_size(d["free_bytes"]),
        )
    console().print(table)


quota_app = typer.Typer(help="Tenants' storage quotas (the hub's owner).", no_args_is_help=True)
store_app.add_typer(quota_app, name="quota")


@quota_app.command("set")
def quota_set(
    size: Annotated[
        str,
        typer.Argument(
            help="bytes of objects the tenant may keep: 500M, 10G, a number of bytes; "
            "'none' for no limit; 'default' for the hub's store_tenant_quota_bytes"
        ),
    ],
    tenant: Annotated[str, typer.Option(help="the tenant (default: your own)")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a tenant's storage quota: puts that would pass it are refused."""
    default = size.lower() == "default"
    quota = None if default else _quota(size)
    with connect(config) as client:
        info = (
            client.unset_store_quota(tenant) if default else client.set_store_quota(quota, tenant)
        )
    if as_json:
        print_json(info)
        return
    from roost.storage.quota import show_size

    limit = "no limit" if info["quota_bytes"] is None else show_size(info["quota_bytes"])
    print(
        f"{info['tenant']}: quota {limit} ({info['quota_from']}), {show_size(info['bytes'])} used"
    )


def _quota(text: str) -> int | None:
    from roost.apps.manifest import parse_size
    from roost.errors import BundleError, ValidationError

    if text.lower() == "none":
        return None
    if text.isdigit():
        return int(text)
    try:
        return parse_size(text, "SIZE")
    except BundleError as err:
        raise ValidationError(
            f"{text!r} is not a quota: write 500M, 10G, a number of bytes, none or default"
        ) from err
