"""``roost``: the command line. Thin: parse, call the SDK, print.

Every failure is one line on stderr and a non-zero exit. ``roost agent ...`` is routed
before typer loads, to keep the agent's footprint small (see ``roost/agent/cli.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from roost.cli.apps import apps_app
from roost.cli.common import ConfigOpt, JsonOpt, connect, console, parse_duration, print_json
from roost.cli.deadletters import deadletters_app
from roost.cli.events import events_app, schedules_app
from roost.cli.functions import fn_app
from roost.cli.rollouts import deploy, rollout_app, undeploy
from roost.cli.rules import rules_app
from roost.cli.secrets import secrets_app
from roost.cli.store import drain as store_drain
from roost.cli.store import store_app
from roost.errors import RoostError, ValidationError

app = typer.Typer(
    help="Roost: a local cloud made of the Linux boxes you already own.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
devices_app = typer.Typer(help="The fleet's devices.", no_args_is_help=True)
token_app = typer.Typer(help="Join tokens for new devices.", no_args_is_help=True)
twin_app = typer.Typer(help="Desired and reported state of a device.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants (owner only).", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
app.add_typer(token_app, name="token")
app.add_typer(twin_app, name="twin")
app.add_typer(tenant_app, name="tenant")
app.add_typer(events_app, name="events")
app.add_typer(schedules_app, name="schedules")
app.add_typer(apps_app, name="app")
app.add_typer(rollout_app, name="rollout")
app.add_typer(deadletters_app, name="deadletters")
app.add_typer(secrets_app, name="secrets")
app.add_typer(rules_app, name="rules")
app.add_typer(fn_app, name="fn")
app.add_typer(store_app, name="store")
app.command("deploy")(deploy)
app.command("undeploy")(undeploy)


def parse_pairs(pairs: list[str], allow_remove: bool = False) -> dict[str, Any]:
    """``k=v`` pairs; with ``allow_remove``, ``k-`` removes k (value None)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if allow_remove and pair.endswith("-") and "=" not in pair:
            out[pair[:-1]] = None
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValidationError(f"{pair!r} is not key=value")
        out[key] = value
    return out


# -- hub ---------------------------------------------------------------------------------


@app.command()
def hub(
    data: Annotated[Path | None, typer.Option(help="data dir (default: per-user data dir)")] = None,
    listen: Annotated[
        str | None, typer.Option(help="HTTPS HOST:PORT (default 0.0.0.0:7443)")
    ] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="MQTT over TLS port (default 8883)")] = None,
    public_host: Annotated[
        str | None, typer.Option(help="the name devices reach the hub by (goes into tokens)")
    ] = None,
) -> None:
    """Run the hub: HTTPS API, its own CA, and a managed Mosquitto broker."""
    from roost.hub.main import run
    from roost.settings import HubSettings

    host = port = None
    if listen:
        host, _, port_text = listen.rpartition(":")
        if not port_text.isdigit():
            raise ValidationError("--listen takes HOST:PORT")
        port = int(port_text)
    settings_file = (data / "settings.toml") if data else None
    settings = HubSettings.load(
        settings_file,
        data_dir=data,
        listen_host=host or None,
        listen_port=port,
        mqtt_port=mqtt_port,
        public_host=public_host,
    )
    run(settings)


# -- tokens ------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    config: ConfigOpt = None,
    label: Annotated[list[str] | None, typer.Option(help="k=v label for devices that join")] = None,
    uses: Annotated[int, typer.Option(help="how many devices may join with it")] = 1,
    unlimited: Annotated[bool, typer.Option(help="any number of devices until it expires")] = False,
    ttl: Annotated[str, typer.Option(help="lifetime, e.g. 1h, 7d")] = "1h",
    as_json: JsonOpt = False,
) -> None:
    """Print a join token: `roost agent join TOKEN` on a device enrolls it."""
    with connect(config) as client:
        result = client.create_join_token(
            labels=parse_pairs(label or []),
            uses=None if unlimited else uses,
            ttl_s=int(parse_duration(ttl)),
        )
    if as_json:
        print_json(result)
    else:
        print(result["token"])


# -- devices -----------------------------------------------------------------------------


def _ago(value: str | None) -> str:
    if not value:
        return "never"
    import datetime as dt

    seconds = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(value)).total_seconds()
    if seconds < 90:
        return f"{max(0, int(seconds))}s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)}m ago"
    if seconds < 172800:
        return f"{int(seconds // 3600)}h ago"
    return f"{int(seconds // 86400)}d ago"


def devices_table(devices: list[dict[str, Any]]) -> Any:
    from rich import box
    from rich.table import Table

    # An 80-column terminal shows ids, status and labels whole (a label per line); the
    # architecture and the rest are in `roost devices show`.
    table = Table(
        title=f"{len(devices)} device(s)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    table.add_column("ID", no_wrap=True, min_width=21)
    table.add_column("STATUS", no_wrap=True, min_width=7)
    table.add_column("LABELS", min_width=12)
    table.add_column("SEEN", no_wrap=True)
    table.add_column("OS", no_wrap=True, overflow="ellipsis", max_width=12)
    for column in ("CPU", "MEM"):
        table.add_column(column, no_wrap=True)
    for d in devices:
        status = d["status"] if d["state"] == "active" else "revoked"
        color = {"online": "green", "offline": "yellow", "revoked": "red"}[status]
        inv, metrics = d.get("inventory", {}), d.get("metrics", {})
        table.add_row(
            d["id"],
            f"[{color}]{status}[/]",
            "\n".join(f"{k}={v}" for k, v in sorted(d["labels"].items())),
            _ago(d.get("last_seen")),
            str(inv.get("os", "")),
            f"{metrics['cpu']:.0f}%" if "cpu" in metrics else "",
            f"{metrics['memory']:.0f}%" if "memory" in metrics else "",
        )
    return table


@devices_app.command("ls")
def devices_ls(
    config: ConfigOpt = None,
    selector: Annotated[str, typer.Option("--selector", "-l", help="e.g. role=router")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List devices."""
    with connect(config) as client:
        devices = client.devices(selector)
    if as_json:
        print_json(devices)
    else:
        console().print(devices_table(devices))


@devices_app.command("show")
def devices_show(device_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Everything about one device."""
    with connect(config) as client:
        device = client.device(device_id)
    if as_json:
        print_json(device)
        return
    from rich.table import Table

    table = Table(show_header=False, title=device_id)
    table.add_column(style="bold")
    table.add_column()
    for key in ("status", "state", "labels", "last_seen", "enrolled_at", "agent_version"):
        table.add_row(key, json.dumps(device[key], default=str).strip('"'))
    for key, value in sorted(device["inventory"].items()):
        table.add_row(f"inventory.{key}", str(value))
    for key, value in sorted(device["metrics"].items()):
        table.add_row(f"metrics.{key}", str(value))
    table.add_row("certificate until", str(device["cert_not_after"]))
    table.add_row(
        "twin", f"desired v{device['desired_version']}, reported v{device['reported_version']}"
    )
    console().print(table)


@devices_app.command("label")
def devices_label(
    device_id: str,
    labels: Annotated[list[str], typer.Argument(help="k=v to set, k- to remove")],
    config: ConfigOpt = None,
) -> None:
    """Set or remove labels; the device learns them through its desired state."""
    with connect(config) as client:
        device = client.label(device_id, parse_pairs(labels, allow_remove=True))
    print(",".join(f"{k}={v}" for k, v in sorted(device["labels"].items())) or "(no labels)")


@devices_app.command("drain")
def devices_drain(
    device_id: Annotated[str, typer.Argument(help="the device to move shares off")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mark a device draining (it takes no new shares) and move every share it holds to
    other devices, before it is retired (the same as ``roost store drain``)."""
    store_drain(device_id, config, as_json)


@devices_app.command("revoke")
def devices_revoke(device_id: str, config: ConfigOpt = None) -> None:
    """Revoke a device: the broker and the API refuse it from now on."""
    with connect(config) as client:
        client.revoke(device_id)
    print(f"revoked {device_id}")


# -- twin --------------------------------------------------------------------------------


@twin_app.command("show")
def twin_show(device_id: str, config: ConfigOpt = None) -> None:
    """Desired and reported state (JSON)."""
    with connect(config) as client:
        print_json(client.twin(device_id))


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


@twin_app.command("set")
def twin_set(
    device_id: str,
    values: Annotated[
        list[str],
        typer.Argument(help="key=value (JSON or text), key- removes; e.g. heartbeat_interval=10"),
    ],
    config: ConfigOpt = None,
) -> None:
    """Change the desired state; the agent applies it and reports back."""
    patch = {
        k: (None if v is None else _json_or_text(v)) for k, v in parse_pairs(values, True).items()
    }
    with connect(config) as client:
        print_json(client.set_desired(device_id, patch))


# -- commands ----------------------------------------------------------------------------


@app.command("cmd")
def cmd(
    device_id: str,
    name: str,
    arg: Annotated[list[str] | None, typer.Option(help="k=v argument (JSON or text)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 10.0,
    config: ConfigOpt = None,
) -> None:
    """Run a command on a device (ping, reload-config, logs) and print its answer."""
    args = {k: _json_or_text(v) for k, v in parse_pairs(arg or []).items()}
    with connect(config) as client:
        result = client.command(device_id, name, args, timeout)
    if result["status"] != "ok":
        raise RoostError(f"{name} on {device_id}: {result['error']}")
    value = result["result"]
    if name == "logs" and isinstance(value, dict):
        print("\n".join(value.get("lines", [])))
    else:
        print_json(value)


# -- tenants and events ------------------------------------------------------------------


@tenant_app.command("create")
def tenant_create(name: str, config: ConfigOpt = None) -> None:
    """Create a tenant and print its admin token (shown once)."""
    with connect(config) as client:
        result = client.create_tenant(name)
    print(result["admin_token"])


@tenant_app.command("ls")
def tenant_ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    with connect(config) as client:
        tenants = client.tenants()
    if as_json:
        print_json(tenants)
    else:
        for tenant in tenants:
            print(tenant["name"])


# -- demo and simulator ------------------------------------------------------------------


@app.command()
def demo(
    devices: Annotated[int, typer.Option(help="how many agents to start")] = 3,
    duration: Annotated[float, typer.Option(help="stop after this many seconds (0: Ctrl-C)")] = 0.0,
    apps: Annotated[bool, typer.Option(help="publish a small app and roll it out")] = True,
) -> None:
    """A hub, its broker and N real agents on this machine; Ctrl-C stops everything."""
    from roost.cli.demo import run_demo

    run_demo(devices, duration, apps)


@app.command()
def sim(
    devices: Annotated[int, typer.Option(help="how many virtual devices")] = 100,
    data: Annotated[
        Path, typer.Option(help="where the virtual devices keep their identities")
    ] = Path(".roost/sim"),
    heartbeat: Annotated[float, typer.Option(help="seconds between heartbeats")] = 30.0,
    duration: Annotated[
        float, typer.Option(help="run this long, then stop (0: until Ctrl-C)")
    ] = 0.0,
    config: ConfigOpt = None,
) -> None:
    """Many light virtual devices in one process, over the real protocol."""
    from roost.sim.fleet import run_sim

    run_sim(config, devices, data, heartbeat, duration)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        from roost.agent.cli import main as agent_main

        sys.exit(agent_main(sys.argv[2:]))
    try:
        app(standalone_mode=False)
    except RoostError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except typer.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
