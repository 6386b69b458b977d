"""The hub's HTTP application: routers of every part, errors as one clear line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from roost import __version__
from roost.access.routes import router as access_router
from roost.api import HubDep, PrincipalDep
from roost.catalog.routes import router as catalog_router
from roost.errors import RoostError
from roost.events.routes import router as events_router
from roost.fleet.routes import router as fleet_router
from roost.functions.routes import router as functions_router
from roost.hub.core import Hub
from roost.rollouts.routes import router as rollouts_router
from roost.rules.deadletters import router as deadletters_router
from roost.rules.routes import router as rules_router
from roost.rules.secrets import router as secrets_router
from roost.settings import HubSettings
from roost.storage.routes import router as storage_router

log = logging.getLogger("roost.hub")


def create_app(settings: HubSettings) -> FastAPI:
    hub = Hub(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await hub.start()
        if hub.first_token:
            _announce_first_start(hub)
        try:
            yield
        finally:
            await hub.stop()

    app = FastAPI(
        title="Roost hub",
        version=__version__,
        description="The control plane of a Roost fleet.",
        lifespan=lifespan,
    )
    app.state.hub = hub
    for router in (
        fleet_router,
        access_router,
        events_router,
        catalog_router,
        rollouts_router,
        rules_router,
        deadletters_router,
        secrets_router,
        storage_router,
        functions_router,
    ):
        app.include_router(router)

    @app.exception_handler(RoostError)
    async def roost_error(_request: Request, err: RoostError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=422)

    @app.get("/healthz", tags=["hub"])
    def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/v1/hub/stats", tags=["hub"])
    def stats(principal: PrincipalDep, hub: HubDep) -> dict[str, Any]:
        """Counters: messages received, ingested, superseded, dropped (by reason); broker restarts.

        The whole hub's figures, so for its owner only.
        """
        principal.require_owner()
        return hub.stats()

    return app


def _announce_first_start(hub: Hub) -> None:
    # Printed, not logged: this is the only time the token is shown.
    print(
        f"\nRoost hub set up in {hub.data_dir}\n"
        f"  owner API token (shown once): {hub.first_token}\n"
        f"  client config written to {hub.data_dir / 'client.toml'}\n"
        f"  use it with: export ROOST_CONFIG={hub.data_dir / 'client.toml'}\n",
        flush=True,
    )
