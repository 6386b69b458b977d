"""``roost deploy``, ``roost undeploy`` and ``roost rollout ...``: releases reach devices.

A deploy starts a rollout in waves; ``--wait`` and ``rollout show`` draw one progress bar
per wave (healthy devices of the wave's size, failures beside it).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect, console, parse_duration, print_json
from roost.errors import RolloutError, ValidationError
from roost.fleet.selectors import Selector

rollout_app = typer.Typer(
    help="Rollouts: releases reaching devices in waves.", no_args_is_help=True
)

# A rollout in one of these has stopped moving by itself.
FINAL = ("done", "halted", "aborted", "superseded")
POLL_S = 1.0


def deploy(
    release: Annotated[str, typer.Argument(help="NAME@VERSION from the catalog")],
    to: Annotated[
        str, typer.Option("--to", help="label selector, e.g. role=router,site=hq ('' = all)")
    ],
    waves: Annotated[
        str | None, typer.Option(help="cumulative waves, default 1,10%,50%,100%")
    ] = None,
    soak: Annotated[
        str | None, typer.Option(help="how long a device must stay healthy (default 60s)")
    ] = None,
    deadline: Annotated[
        str | None, typer.Option(help="how long a wave waits for its devices (default 10m)")
    ] = None,
    max_failures: Annotated[
        str | None, typer.Option(help="failures a wave tolerates, e.g. 10% (default 10%)")
    ] = None,
    canary_max_failures: Annotated[
        str | None, typer.Option(help="failures the canary wave tolerates (default 0)")
    ] = None,
    window: Annotated[
        list[str] | None,
        typer.Option(help="daily UTC maintenance window, e.g. 22:00-02:00 (repeatable)"),
    ] = None,
    wait: Annotated[bool, typer.Option(help="follow the rollout until it ends")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Roll a release out to the devices a selector picks, now and as they join."""
    name, sep, version = release.partition("@")
    if not sep or not name or not version:
        raise ValidationError(f"{release!r} is not NAME@VERSION")
    settings: dict[str, Any] = {}
    if waves is not None:
        settings["waves"] = [w.strip() for w in waves.split(",") if w.strip()]
    if soak is not None:
        settings["soak_s"] = parse_duration(soak)
    if deadline is not None:
        settings["deadline_s"] = parse_duration(deadline)
    if max_failures is not None:
        settings["failure_threshold"] = _fraction("--max-failures", max_failures)
    if canary_max_failures is not None:
        settings["canary_failure_threshold"] = _fraction(
            "--canary-max-failures", canary_max_failures
        )
    if window:
        settings["windows"] = window
    with connect(config) as client:
        rollout = client.deploy(name, version, to, **settings)
        if wait and not as_json:
            print(f"rollout {rollout['id']}: {name}@{version} to {to or 'all devices'}")
            rollout = follow(client, rollout)
    if as_json:
        print_json(rollout)
    elif not wait:
        print(f"rollout {rollout['id']} started: {name}@{version} to {to or 'all devices'}")
        _print_waves(rollout)
    _check_outcome(rollout, wait)


def undeploy(
    name: Annotated[str, typer.Argument(help="the app")],
    to: Annotated[
        str | None, typer.Option("--to", help="the deployment's selector, if it has several")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Remove an app from the devices a deployment reaches, and the deployment."""
    with connect(config) as client:
        found = [
            d
            for d in client.deployments()
            if d["app"] == name and (to is None or d["selector"] == str(Selector.parse(to)))
        ]
        if not found:
            where = f" to {to!r}" if to is not None else ""
            raise ValidationError(f"{name} is not deployed{where}")
        if len(found) > 1:
            selectors = ", ".join(repr(d["selector"]) for d in found)
            raise ValidationError(f"{name} is deployed to {selectors}; say which with --to")
        result = client.undeploy(found[0]["id"])
    where = found[0]["selector"] or "all devices"
    print(f"{name} undeployed from {where}: {result['devices']} device(s)")


@rollout_app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Rollouts, newest first."""
    with connect(config) as client:
        rollouts = client.rollouts()
    if as_json:
        print_json(rollouts)
        return
    from rich.table import Table

    table = Table(title=f"{len(rollouts)} rollout(s)")
    table.add_column("ID", no_wrap=True, min_width=18)  # ids are for copying: never cut
    for column in ("RELEASE", "TO", "STATUS", "WAVES", "DEVICES", "CREATED"):
        table.add_column(column)
    for r in rollouts:
        passed = sum(1 for w in r["waves"] if w["status"] == "passed")
        table.add_row(
            r["id"],
            f"{r['app']}@{r['version']}",
            r["selector"] or "(all)",
            r["status"],
            f"{passed}/{len(r['waves'])}",
            str(r.get("devices", 0)),
            r["created_at"][:19],
        )
    console().print(table)


@rollout_app.command("show")
def show(
    rollout_id: str,
    devices: Annotated[bool, typer.Option(help="list each device's progress")] = False,
    watch: Annotated[bool, typer.Option(help="follow it until it ends")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A rollout wave by wave, with a progress bar per wave."""
    with connect(config) as client:
        rollout = client.rollout(rollout_id, devices=devices)
        if watch and not as_json:
            rollout = follow(client, rollout)
        elif not as_json:
            _print_waves(rollout)
    if as_json:
        print_json(rollout)
        return
    for device, state in (rollout.get("device_states") or {}).items():
        print(f"{device}: {state}")


def _action(rollout_id: str, config: Any, action: str) -> None:
    with connect(config) as client:
        rollout = getattr(client, f"{action}_rollout")(rollout_id)
    print(f"rollout {rollout['id']} is {rollout['status']}")
    _print_waves(rollout)


@rollout_app.command("pause")
def pause(rollout_id: str, config: ConfigOpt = None) -> None:
    """Hold the rollout where it is: no wave starts or passes, no deadline runs."""
    _action(rollout_id, config, "pause")


@rollout_app.command("resume")
def resume(rollout_id: str, config: ConfigOpt = None) -> None:
    """Let a paused rollout go on."""
    _action(rollout_id, config, "resume")


@rollout_app.command("abort")
def abort(rollout_id: str, config: ConfigOpt = None) -> None:
    """End the rollout; every device it touched goes back to its previous version."""
    _action(rollout_id, config, "abort")


# -- drawing -----------------------------------------------------------------------------


def _waves_table(rollout: dict[str, Any]) -> Any:
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    title = f"{rollout['app']}@{rollout['version']}: {rollout['status']}"
    if rollout.get("reason"):
        title += f" ({rollout['reason']})"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in ("WAVE", "", "HEALTHY", "FAILED", "WAITING", "STATUS"):
        table.add_column(column)
    for wave in rollout["waves"]:
        label = "canary" if wave["index"] == 0 else f"wave {wave['index']}"
        table.add_row(
            label,
            ProgressBar(total=wave["size"], completed=wave["healthy"], width=30),
            f"{wave['healthy']}/{wave['size']}",
            str(wave["failed"]),
            str(wave["waiting"]),
            wave["status"],
        )
    if not rollout["waves"]:
        table.add_row("-", "", "", "", "", "waiting for a device the selector picks")
    return table


def _print_waves(rollout: dict[str, Any]) -> None:
    console().print(_waves_table(rollout))


def follow(client: Any, rollout: dict[str, Any], out: Any = None) -> dict[str, Any]:
    """Redraw the rollout's waves (on ``out``, a rich Console) until it stops by itself."""
    from rich.live import Live

    out = out or console()
    with Live(_waves_table(rollout), console=out, auto_refresh=False) as live:
        while rollout["status"] not in FINAL:
            time.sleep(POLL_S)
            rollout = client.rollout(rollout["id"])
            live.update(_waves_table(rollout), refresh=True)
    if not out.is_terminal:
        out.line()  # Live ends its last frame with a newline only on a terminal
    return rollout


def _check_outcome(rollout: dict[str, Any], waited: bool) -> None:
    if rollout["status"] in ("halted", "aborted"):
        raise RolloutError(f"rollout {rollout['id']} {rollout['status']}: {rollout['reason']}")
    if waited and rollout["status"] == "superseded":
        raise RolloutError(f"rollout {rollout['id']} was superseded: {rollout['reason']}")


def _fraction(option: str, text: str) -> float:
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValidationError(f"{option} takes a share like 10% or 0.1, not {text!r}") from None
    if not 0 <= value <= 1:
        raise ValidationError(f"{option} must be between 0% and 100%, not {text!r}")
    return value
