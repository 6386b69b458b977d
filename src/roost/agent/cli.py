"""``roost agent ...``: argparse rather than typer, so a device's agent stays small.

``roost agent join TOKEN [--data DIR] [--no-run]``, ``roost agent run [--data DIR]``,
``roost agent emit TYPE [--payload JSON] [--subject S] [--data DIR]``.

``run`` (and ``join`` when it goes on to run) starts in ``selfupdate.boot``, which may
replace the process with the agent version the device updated itself to; when the agent
stops to try a new version of itself, the process is replaced with ``roost agent run``
again, whose boot starts the trial (``roost.agent.selfupdate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from roost.errors import RoostError, ValidationError
from roost.settings import AgentSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roost agent", description="The Roost device agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    join = commands.add_parser("join", help="enroll this device with a join token, then run")
    join.add_argument("token")
    join.add_argument("--no-run", action="store_true", help="enroll only")
    run = commands.add_parser("run", help="run an enrolled agent")
    emit = commands.add_parser("emit", help="queue an event for the hub (delivered by the agent)")
    emit.add_argument("type", help="event type, e.g. com.example.door.forced")
    emit.add_argument("--payload", default="null", help="event data as JSON")
    emit.add_argument("--subject", default="")
    emit.add_argument("--source", default="cli")
    for sub in (join, run, emit):
        sub.add_argument("--data", type=Path, help="the agent's data dir")
        sub.add_argument("-v", "--verbose", action="store_true")
    return parser


def _run_args(args: argparse.Namespace) -> list[str]:
    """The arguments of ``roost agent run`` that runs this agent again (never ``join``)."""
    again = ["run"]
    if args.data:
        again += ["--data", str(args.data)]
    return [*again, "-v"] if args.verbose else again


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = AgentSettings.load(
            (args.data / "settings.toml") if args.data else None, data_dir=args.data
        )
        if args.command == "emit":
            from roost.agent.main import emit

            try:
                data = json.loads(args.payload)
            except ValueError as err:
                raise ValidationError(f"--payload is not JSON: {err}") from err
            print(emit(settings, args.type, data, args.subject, args.source))
            return 0
        from roost.agent import selfupdate
        from roost.agent.main import run, setup_logging

        setup_logging(settings, args.verbose)
        if args.command == "join":
            from roost.agent.enroll import join

            identity = join(args.token, settings.data_dir)
            print(f"enrolled as {identity.device_id} (data in {settings.data_dir})", flush=True)
            if args.no_run:
                return 0
        again = _run_args(args)
        selfupdate.boot(settings.data_dir, settings.self_update_grace_s, again)
        run(settings)
        if selfupdate.restart_requested():
            selfupdate.exec_boot(again)
    except RoostError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
