"""The REST API: the CLI's capabilities for programs, per user, with tokens.

Every route but `/api/health` needs a token (`Authorization: Bearer lft_...`); a job belongs to the
user whose token created it and is invisible to everyone else. Errors are RFC 9457 problem details.
No-auth mode exists only for a server bound to 127.0.0.1 that asks for it explicitly. The routes live
in server/routes/, one router per resource; this module only puts the application together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from loraflow import __version__
from loraflow.jobs.store import Store
from loraflow.platform.config import PlatformConfig
from loraflow.running.submit import ServiceConfig
from loraflow.running.warm import warm_up
from loraflow.server import problems
from loraflow.server.limits import BodyLimit, InFlight, Quotas
from loraflow.server.routes import jobs, money, uploads
from loraflow.server.routes import platform as service
from loraflow.server.web_security import SecurityHeaders

__all__ = ["ServiceConfig", "create_app"]


def create_app(
    store: Store | None = None,
    config: ServiceConfig | None = None,
    platform: PlatformConfig | None = None,
    sweep_every_s: float | None = 2.0,
) -> FastAPI:
    """The API; with sweep_every_s, a background task runs the platform sweep (checks, credits, registry).

    The submit door's imports and first check run here, before any request (running/warm.py): in a
    user's first submission they held the GIL for seconds and every user's requests waited."""
    warm_up()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_sweeper(app, sweep_every_s)) if sweep_every_s else None
        yield
        if task:
            task.cancel()

    app = FastAPI(
        title="loraflow",
        version=__version__,
        description="Train, follow and publish LoRAs over HTTP. Errors are RFC 9457 problem details.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.state.store = store or Store()
    app.state.config = config or ServiceConfig.from_env()
    app.state.platform = platform or PlatformConfig.from_env()
    app.state.quotas = Quotas(app.state.config.maxima)
    app.add_middleware(
        BodyLimit,
        upload_bytes=lambda: app.state.config.max_upload_mb << 20,
        body_bytes=lambda: app.state.config.maxima.body_bytes,
    )
    app.add_middleware(InFlight, limit=lambda: app.state.config.maxima.requests_per_user)
    app.add_middleware(SecurityHeaders)
    for router in (uploads.router, money.router, service.router, jobs.router):
        app.include_router(router)
    return app


async def _sweeper(app: FastAPI, every_s: float) -> None:
    from loraflow.running.duties import sweep

    while True:
        try:
            await asyncio.to_thread(sweep, app.state.store, app.state.platform)
        except Exception as exc:  # the sweep must never take the server down
            print(f"platform sweep failed: {exc!r}")
        await asyncio.sleep(every_s)
