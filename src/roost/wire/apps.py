"""Where a release lives in a tenant's signed catalog: the one path hub and device share."""

from __future__ import annotations


def target_path(name: str, version: str) -> str:
    """``apps/<name>/<name>-<version>.tar.gz``, the TUF target path of a release."""
    return f"apps/{name}/{name}-{version}.tar.gz"
