"""Whether the hub can sandbox its function workers: the agent's bubblewrap probe."""

from __future__ import annotations

from roost.agent.supervisor import isolation


def working_bwrap() -> str | None:
    """The path of a bubblewrap that works here, or None. Blocking: it runs it once."""
    return isolation.working_bwrap()
