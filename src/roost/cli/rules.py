"""``roost rules ...``: apply rules files, look at the tenant's rules, try a file on events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect, print_json
from roost.errors import ValidationError
from roost.rules.dryrun import read_events

rules_app = typer.Typer(help="Rules: when events match, actions run.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(metavar="FILE", help="a rules file (YAML)")]


@rules_app.command("apply")
def apply(file: FileArg, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Apply a rules file: all its rules (replacing those of the same ids), or none."""
    text = _read(file)
    with connect(config) as client:
        applied = client.apply_rules(text, filename=str(file))
    if as_json:
        print_json(applied)
        return
    for rule in applied:
        print(f"{rule['id']}: {rule['change']} (version {rule['version']})")


@rules_app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The tenant's rules."""
    with connect(config) as client:
        rules = client.rules()
    if as_json:
        print_json(rules)
        return
    for rule in rules:
        state = "on " if rule["enabled"] else "off"
        window = f" window {rule['window']}" if rule["window"] else ""
        kinds = ",".join(str(k) for k in rule["actions"])
        print(f"{rule['id']}  {state}  v{rule['version']}  {_trigger(rule['trigger'])}{window}")
        print(f"    -> {kinds}" + (f"  ({rule['description']})" if rule["description"] else ""))


@rules_app.command("show")
def show(rule_id: str, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """One rule: its state and its YAML."""
    with connect(config) as client:
        rule = client.rule(rule_id)
    if as_json:
        print_json(rule)
        return
    state = "enabled" if rule["enabled"] else "disabled"
    print(f"# {rule['id']}: version {rule['version']}, {state}, updated {rule['updated_at']}")
    print(rule["source"], end="")


@rules_app.command("rm")
def rm(rule_id: str, config: ConfigOpt = None) -> None:
    """Remove a rule (and what its window counted)."""
    with connect(config) as client:
        client.remove_rule(rule_id)
    print(f"rule {rule_id} removed")


@rules_app.command("enable")
def enable(rule_id: str, config: ConfigOpt = None) -> None:
    """Enable a rule."""
    _switch(config, rule_id, True)


@rules_app.command("disable")
def disable(rule_id: str, config: ConfigOpt = None) -> None:
    """Disable a rule until it is enabled or applied again (its window starts anew)."""
    _switch(config, rule_id, False)


@rules_app.command("test")
def dry_run(
    file: FileArg,
    event: Annotated[
        Path, typer.Option("--event", help="a CloudEvent (JSON), or a list of them, in order")
    ],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: what the rules of FILE would make of the events; nothing is sent."""
    text = _read(file)
    events = read_events(_read(event))
    with connect(config) as client:
        report = client.test_rules(text, events, filename=str(file))
    if as_json:
        report.pop("text", None)
        print_json(report)
    else:
        print(report["text"])


@rules_app.command("actions")
def actions(
    config: ConfigOpt = None,
    status: Annotated[str, typer.Option(help="pending, delivered or dead")] = "",
    rule: Annotated[str, typer.Option(help="only this rule's")] = "",
    limit: Annotated[int, typer.Option(help="how many of the newest")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """The newest actions the rules put in the outbox, newest first."""
    with connect(config) as client:
        rows = client.actions(status, rule, limit)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        fields = json.dumps(row["fields"], default=str)
        when = row["created_at"][:19]
        print(f"{when} {row['status']:<9} {row['rule_id']} {row['kind']} {fields}")


def _switch(config: Path | None, rule_id: str, enabled: bool) -> None:
    with connect(config) as client:
        rule = client.enable_rule(rule_id, enabled)
    print(f"rule {rule_id} {'enabled' if rule['enabled'] else 'disabled'}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise ValidationError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{path} is not UTF-8 text") from None


def _trigger(trigger: Any) -> str:
    if not isinstance(trigger, dict):
        return str(trigger)
    return " ".join(f"{k}={v}" for k, v in trigger.items())
