"""What the CLI's command groups share: the config and --json options, the SDK client,
and printing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from roost.errors import ValidationError

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="ROOST_CONFIG",
        help="client config (default: the local hub's client.toml)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``1h``, ``7d`` -> seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ValidationError(f"{text!r} is not a duration (like 30s, 15m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def connect(config: Path | None) -> Any:
    """The SDK client for the hub named by --config, $ROOST_CONFIG or the local hub."""
    from roost.client import RoostClient

    return RoostClient.from_config(config)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def console() -> Any:
    from rich.console import Console

    return Console()
