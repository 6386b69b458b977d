"""Access: tenants, API tokens, roles."""

from roost.access.service import Principal

__all__ = ["Principal"]
