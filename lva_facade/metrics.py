"""Prometheus metrics of the facade: requests by route template, status and LUNA error code."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "lva_http_requests_total",
    "HTTP requests answered by the facade.",
    ["method", "route", "status", "error_code"],
)
HTTP_LATENCY = Histogram(
    "lva_http_request_duration_seconds",
    "Time to answer an HTTP request (a WebSocket counts until the upgrade).",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Set by the error rendering, read by the access log: the LUNA code of an error answer.
ERROR_CODE_KEY = web.RequestKey("luna_error_code", int)


def route_label(request: web.Request) -> str:
    """The route's template (``/1/streams/{stream_id}``), never the raw path: bounded labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe(request: web.Request, status: int, seconds: float) -> None:
    route = route_label(request)
    code = request.get(ERROR_CODE_KEY)
    HTTP_REQUESTS.labels(request.method, route, str(status), str(code) if code else "").inc()
    HTTP_LATENCY.labels(request.method, route).observe(seconds)


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def add_metrics_route(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
