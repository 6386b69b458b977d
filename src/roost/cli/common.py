"""What the CLI's command groups share: the config and --json options, the SDK client,
and printing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="ROOST_CONFIG",
        help="client config (default: the local hub's client.toml)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def connect(config: Path | None) -> Any:
    """The SDK client for the hub named by --config, $ROOST_CONFIG or the local hub."""
    from roost.client import RoostClient

    return RoostClient.from_config(config)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def console() -> Any:
    from rich.console import Console

    return Console()
