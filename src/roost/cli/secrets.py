"""``roost secrets ...``: a tenant's named values on the hub (webhook signing keys).

``set`` reads the value from standard input, so it never lands in the shell's history
or the process list: ``roost secrets set doctor-sms < key.txt``.
"""

from __future__ import annotations

import sys

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect, print_json
from roost.errors import ValidationError

secrets_app = typer.Typer(
    help="Secrets the hub keeps for rules (sealed; never shown again).", no_args_is_help=True
)


@secrets_app.command("set")
def set_(name: str, config: ConfigOpt = None) -> None:
    """Set secret NAME to the value read from standard input (one trailing newline dropped)."""
    if sys.stdin.isatty():
        print(f"value of {name} (then Enter):", file=sys.stderr)
        value = sys.stdin.readline()
    else:
        value = sys.stdin.read()
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ValidationError("no value on standard input")
    with connect(config) as client:
        client.set_secret(name, value)
    print(f"secret {name} set")


@secrets_app.command("ls")
def ls(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The tenant's secrets: names and when they were set."""
    with connect(config) as client:
        rows = client.secrets()
    if as_json:
        print_json(rows)
        return
    for row in rows:
        print(f"{row['name']}  set {str(row['updated_at'])[:19]}")


@secrets_app.command("rm")
def rm(name: str, config: ConfigOpt = None) -> None:
    """Delete a secret (webhooks that name it become dead letters until it is set again)."""
    with connect(config) as client:
        client.remove_secret(name)
    print(f"secret {name} removed")
