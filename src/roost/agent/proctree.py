"""The process tree, as ``/proc`` shows it: standard library only, so the agent's
self-update watchdog can use it after the modules of the version it replaced are gone."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(root: int) -> set[int]:
    """All living descendants of ``root``, found by walking /proc (children files are not
    always compiled into the kernel)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain anything; fields follow it.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
