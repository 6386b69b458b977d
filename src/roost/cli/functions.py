"""``roost fn ...``: functions on the hub and on devices.

``deploy`` reads a ``.py`` file (its module is the entry) or a directory (every ``.py``
file under it; ``main.py`` holds ``handle``) and sends it; the hub checks it (syntax,
``handle``, size) before it keeps a new version. ``--on`` places it (the hub, or the
devices a selector picks), ``--trigger``/``--subject``/``--source`` and ``--cron`` say
what starts it. ``invoke`` prints the result (exit 1 and
the function's error when it failed); ``logs`` lists recent invocations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from roost.apps.manifest import parse_size
from roost.cli.common import ConfigOpt, JsonOpt, connect, parse_duration, print_json
from roost.errors import ValidationError

fn_app = typer.Typer(
    help="Functions on the hub and on devices: deploy, invoke, logs.", no_args_is_help=True
)


def read_code(path: Path) -> tuple[dict[str, str], str]:
    """The files of a function and its entry module, from a .py file or a directory."""
    if path.is_file():
        if path.suffix != ".py":
            raise ValidationError(f"{path} is not a .py file")
        return {path.name: _text(path)}, path.stem
    if not path.is_dir():
        raise ValidationError(f"{path} is neither a .py file nor a directory")
    files = {
        file.relative_to(path).as_posix(): _text(file)
        for file in sorted(path.rglob("*.py"))
        if not any(part.startswith(".") or part == "__pycache__" for part in file.parts)
    }
    if "main.py" not in files:
        raise ValidationError(f"{path} has no main.py (the module that defines handle)")
    return files, "main"


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not UTF-8 text") from None


@fn_app.command("deploy")
def deploy(
    path: Annotated[Path, typer.Argument(help="a .py file, or a directory with main.py")],
    name: Annotated[str, typer.Option("--name", help="the function's name")],
    timeout: Annotated[str, typer.Option(help="wall time per invocation")] = "5s",
    memory: Annotated[str, typer.Option(help="address space of a worker, e.g. 128M")] = "128M",
    concurrency: Annotated[int, typer.Option(help="invocations at once")] = 4,
    network: Annotated[bool, typer.Option(help="ask for the network (if the hub allows)")] = False,
    on: Annotated[
        str, typer.Option("--on", help='"hub", "all" devices, or a label selector: role=sensor')
    ] = "hub",
    trigger: Annotated[
        list[str] | None,
        typer.Option("--trigger", help="event type pattern that starts it, e.g. app.door.*"),
    ] = None,
    subject: Annotated[
        list[str] | None, typer.Option(help="and only events whose subject matches")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option(help="and only events whose source matches")
    ] = None,
    cron: Annotated[str, typer.Option(help='start it on a schedule, e.g. "*/5 * * * *"')] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a function, or a new version of it, on the hub or on devices."""
    files, entry = read_code(path)
    if (subject or source) and not trigger:
        raise ValidationError("--subject and --source narrow a --trigger; give one")
    patterns = {"type": trigger, "subject": subject or [], "source": source or []}
    with connect(config) as client:
        row = client.deploy_function(
            name,
            files,
            entry,
            timeout_s=parse_duration(timeout),
            memory_bytes=parse_size(memory, "--memory"),
            concurrency=concurrency,
            network=network,
            on=on,
            trigger=patterns if trigger else None,
            cron=cron,
        )
    if as_json:
        print_json(row)
        return
    print(f"function {row['name']} version {row['version']} deployed ({_start(row)})")


@fn_app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The tenant's functions, their current version and limits."""
    with connect(config) as client:
        rows = client.functions()
    if as_json:
        print_json(rows)
        return
    for row in rows:
        print(_limits(row))


def _limits(row: dict[str, Any]) -> str:
    memory = row["memory_bytes"] >> 20
    return (
        f"{row['name']}  v{row['version']}  {_start(row)}  timeout {row['timeout_s']:g}s"
        f"  memory {memory}M  concurrency {row['concurrency']}"
        + ("  network" if row["network"] else "")
    )


def _start(row: dict[str, Any]) -> str:
    """Where it runs and what starts it: ``on hub, events app.door.*, cron '* * * * *'``."""
    on = row.get("on", "hub")
    parts = ["on hub" if on == "hub" else f"on devices {on}"]
    trigger = row.get("trigger") or {}
    if trigger.get("type"):
        narrowed = [f"{k} {' '.join(trigger[k])}" for k in ("subject", "source") if trigger.get(k)]
        parts.append(" ".join(["events", *trigger["type"], *narrowed]))
    if row.get("cron"):
        parts.append(f"cron {row['cron']!r}")
    return ", ".join(parts)


@fn_app.command("show")
def show(name: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """A function, its limits and its versions."""
    with connect(config) as client:
        row = client.function(name)
    if as_json:
        print_json(row)
        return
    print(_limits(row))
    for version in row["versions"]:
        print(
            f"  v{version['version']}  {str(version['created_at'])[:19]}  {version['size']} bytes"
            f"  {version['sha256'][:12]}  {', '.join(version['files'])}"
        )


@fn_app.command("rm")
def rm(name: str, config: ConfigOpt = None) -> None:
    """Remove a function, its versions and its invocations."""
    with connect(config) as client:
        client.remove_function(name)
    print(f"function {name} removed")


@fn_app.command("invoke")
def invoke(
    name: str,
    data: Annotated[str | None, typer.Option(help="the event's data, as JSON")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a function once and print its result (its error, and exit 1, if it failed)."""
    try:
        value = None if data is None else json.loads(data)
    except ValueError as err:
        raise ValidationError(f"--data is not JSON: {err}") from None
    with connect(config) as client:
        invocation = client.invoke_function(name, value)
    if as_json:
        print_json(invocation)
    elif invocation["ok"]:
        print(json.dumps(invocation["result"]))
    if not invocation["ok"]:
        print(f"error: {invocation['error']}", file=sys.stderr)
        sys.exit(1)  # click runs without standalone mode: typer.Exit would be lost


@fn_app.command("logs")
def logs(
    name: str,
    limit: Annotated[int, typer.Option(help="how many invocations")] = 20,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent invocations, newest first: time, duration, ok or error, output's tail."""
    with connect(config) as client:
        rows = client.function_logs(name, limit)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        outcome = "ok" if row["ok"] else f"error: {row['error']}"
        where = f"  device {row['device']}" if row.get("device") else ""
        print(
            f"{str(row['started_at'])[:23]}  v{row['version']}  {row['trigger']:6}"
            f"  {row['duration_ms']:8.1f} ms  {outcome}{where}"
        )
        for line in row["output"].splitlines()[-5:]:
            print(f"    | {line}")
