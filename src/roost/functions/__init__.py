"""Functions on the hub: Python modules with ``handle(event, ctx)``, run in warm,
sandboxed worker processes (``pool``), deployed and recorded per version (``service``)."""
