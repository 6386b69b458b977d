"""``roost deadletters ...``: the actions the outbox gave up on; replay or drop them."""

from __future__ import annotations

from typing import Annotated

import typer

from roost.cli.common import ConfigOpt, JsonOpt, connect, console, print_json
from roost.errors import ValidationError

deadletters_app = typer.Typer(
    help="Dead letters: rules' actions given up on after their last try.", no_args_is_help=True
)


@deadletters_app.command("ls")
def ls(
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(help="how many of the newest")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """The tenant's dead letters, the newest first, with their last error."""
    with connect(config) as client:
        letters = client.deadletters(limit)
    if as_json:
        print_json(letters)
        return
    from rich import box
    from rich.table import Table

    table = Table(title=f"{len(letters)} dead letter(s)", box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("ID", "RULE", "KIND", "TRIES", "DIED", "LAST ERROR"):
        table.add_column(column, no_wrap=column != "LAST ERROR")
    for letter in letters:
        table.add_row(
            str(letter["id"]),
            letter["rule_id"],
            letter["kind"],
            str(letter["attempts"]),
            str(letter["died_at"])[:19],
            letter["last_error"],
        )
    console().print(table)


@deadletters_app.command("replay")
def replay(
    action_id: Annotated[int | None, typer.Argument(metavar="ID", help="a dead letter")] = None,
    all_: Annotated[bool, typer.Option("--all", help="every dead letter of the tenant")] = False,
    config: ConfigOpt = None,
) -> None:
    """Deliver a dead letter again (same idempotency key, tries counted from zero)."""
    if (action_id is None) == (not all_):
        raise ValidationError("name one dead letter (ID) or --all")
    with connect(config) as client:
        result = client.replay_deadletters() if all_ else client.replay_deadletter(action_id)
    print(f"{result['replayed']} dead letter(s) back in the outbox")


@deadletters_app.command("drop")
def drop(
    action_id: Annotated[int, typer.Argument(metavar="ID", help="a dead letter")],
    config: ConfigOpt = None,
) -> None:
    """Forget a dead letter."""
    with connect(config) as client:
        client.drop_deadletter(action_id)
    print(f"dead letter {action_id} dropped")
