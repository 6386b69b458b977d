"""Rules: a trigger, a CEL condition, an optional window and actions, over CloudEvents.

The pure core the hub (and later the agent) drives: ``parse_rules`` reads and checks a
rules file, ``Engine`` routes events to rules and says which fire, ``dry_run`` is
``roost rules test``. See docs/rules.md.
"""

from roost.rules.actions import RenderedAction
from roost.rules.dryrun import Report, check_event, dry_run, format_report, read_events
from roost.rules.engine import Engine, Firing, Outcome
from roost.rules.spec import Rule, parse_rules
from roost.rules.window import Limits

__all__ = [
    "Engine",
    "Firing",
    "Limits",
    "Outcome",
    "RenderedAction",
    "Report",
    "Rule",
    "check_event",
    "dry_run",
    "format_report",
    "parse_rules",
    "read_events",
]
