"""The facade application: generated routes + docs routes + middlewares, for any set of services."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor

from lva_facade.auth import auth_middleware
from lva_facade.docs_routes import add_docs_routes
from lva_facade.error_middleware import error_middleware
from lva_facade.metrics import add_metrics_route
from lva_facade.openapi import build_openapi
from lva_facade.request_id import request_id_middleware
from lva_facade.routes import Route, discover_routes, lva_services
from lva_facade.transcoder import CoreClient, add_routes
from lva_facade.ws_bridge import add_ws_route

CORE_KEY = web.AppKey("core", CoreClient)
ROUTES_KEY = web.AppKey("routes", list[Route])
SPEC_KEY = web.AppKey("openapi", dict[str, Any])


def build_app(
    config: dict[str, Any],
    services: Sequence[ServiceDescriptor] | None = None,
    title: str = "Luna Video Agent",
) -> web.Application:
    """The facade for ``services`` (the product's own by default), talking to ``facade.core_address``."""
    facade = config["facade"]
    # Order: errors outermost (every answer gets a LUNA body and the request id), then the
    # request id (so that a refused request is logged under its id), then authentication.
    auth = auth_middleware(str(facade.get("auth_token") or ""))
    app = web.Application(
        middlewares=[error_middleware, request_id_middleware, auth],
        client_max_size=int(facade["max_body_size"]),
    )
    routes = discover_routes(services if services is not None else lva_services())
    core = CoreClient(facade["core_address"], float(facade["request_timeout"]), facade.get("core_tls"))
    add_routes(app, routes, core)
    for route in routes:
        if route.server_streaming and route.method.full_name == "lva.v1.StreamsService.WatchStream":
            add_ws_route(
                app,
                route,
                core,
                float(facade.get("ws_heartbeat", 20.0)),
                float(facade.get("ws_resume_timeout", 15.0)),
            )
    spec = build_openapi(routes, title, version("luna-video-agent"))
    add_docs_routes(app, spec, Path(facade["docs_dir"]))
    add_metrics_route(app)
    app[CORE_KEY] = core
    app[ROUTES_KEY] = routes
    app[SPEC_KEY] = spec

    async def close_core(app: web.Application) -> None:
        await app[CORE_KEY].close()

    app.on_cleanup.append(close_core)
    return app
