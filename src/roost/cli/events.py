"""``roost events ...``: send events, look at the stored ones, follow them live."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated, Any

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect
from roost.errors import ValidationError

events_app = typer.Typer(help="The fleet's events.", no_args_is_help=True)
schedules_app = typer.Typer(help="Schedules: cron (UTC) that sends events.", no_args_is_help=True)

TypeOpt = Annotated[str, typer.Option("--type", help="event type, or a prefix ending in *")]
DeviceOpt = Annotated[str, typer.Option(help="only this device's events")]
# How often `tail` asks the hub for what is new.
TAIL_POLL_S = 1.0


@events_app.command("ls")
def ls(
    config: ConfigOpt = None,
    type: TypeOpt = "",
    device: DeviceOpt = "",
    limit: Annotated[int, typer.Option(help="how many of the newest")] = 50,
) -> None:
    """The newest stored events, oldest first, as JSON lines."""
    with connect(config) as client:
        events = client.events(type=type, device=device, limit=limit, newest=True)
    for event in events:
        print(json.dumps(event, default=str))


@events_app.command("tail")
def tail(
    config: ConfigOpt = None,
    type: TypeOpt = "",
    device: DeviceOpt = "",
    last: Annotated[int, typer.Option(help="show this many stored events first")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Follow the events as they are stored (Ctrl-C stops)."""
    with connect(config) as client:
        newest = client.events(limit=1, newest=True)
        after = newest[-1]["seq"] if newest else 0
        shown = client.events(type=type, device=device, limit=last, newest=True) if last else []
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                for event in shown:
                    print(json.dumps(event, default=str) if as_json else _line(event), flush=True)
                    after = max(after, event["seq"])
                time.sleep(TAIL_POLL_S)
                shown = client.events(type=type, device=device, after=after, limit=1000)


@events_app.command("send")
def send(
    event_type: Annotated[str, typer.Argument(metavar="TYPE", help="e.g. billing.invoice.paid")],
    data: Annotated[str, typer.Option(help="the event's data, JSON")] = "null",
    subject: Annotated[str, typer.Option(help="what the event is about")] = "",
    source: Annotated[str, typer.Option(help="who sends it (stored as roost://api/SOURCE)")] = "",
    event_id: Annotated[
        str, typer.Option("--id", help="its id (sending it again is a no-op)")
    ] = "",
    config: ConfigOpt = None,
) -> None:
    """Send a CloudEvent to the hub's event store."""
    payload = _json_option("--data", data)
    attributes: dict[str, Any] = {}
    if source:
        attributes["source"] = source
    if event_id:
        attributes["id"] = event_id
    with connect(config) as client:
        result = client.send_event(event_type, payload, subject, **attributes)
    print(result["ids"][0])


@schedules_app.command("add")
def schedule_add(
    name: str,
    cron: Annotated[str, typer.Option(help='cron expression in UTC, e.g. "0 7 * * *"')],
    event_type: Annotated[str, typer.Option("--type", help="the type of the events it sends")],
    subject: Annotated[str, typer.Option(help="their subject (default: the name)")] = "",
    data: Annotated[str, typer.Option(help="their data, JSON")] = "null",
    config: ConfigOpt = None,
) -> None:
    """Send an event each time a cron expression comes round."""
    payload = _json_option("--data", data)
    with connect(config) as client:
        row = client.add_schedule(name, cron, event_type, subject, payload)
    print(f"schedule {row['name']} added; first event at {row['next_at']}")


@schedules_app.command("ls")
def schedule_ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The tenant's schedules and when each fires next."""
    with connect(config) as client:
        rows = client.schedules()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        print(f"{row['name']}  {row['cron']}  {row['type']}  next {row['next_at']}")


@schedules_app.command("rm")
def schedule_rm(name: str, config: ConfigOpt = None) -> None:
    """Stop a schedule."""
    with connect(config) as client:
        client.remove_schedule(name)
    print(f"schedule {name} removed")


def _json_option(option: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ValidationError(f"{option} is not JSON: {text[:80]!r}") from None


def _line(event: dict[str, Any]) -> str:
    data = "" if event.get("data") is None else json.dumps(event["data"], default=str)
    subject = f" {event['subject']}" if event.get("subject") else ""
    return f"{str(event['time'])[:19]} {event['type']}{subject} {data}".rstrip()
