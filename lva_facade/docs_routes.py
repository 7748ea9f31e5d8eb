"""The documentation routes the facade serves itself: the OpenAPI document and the manual."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from lva_common.errors import ROUTE_NOT_FOUND, LunaError
from lva_facade.negotiation import YAML_MEDIA, negotiate
from lva_facade.openapi_html import render_html

SPEC_MEDIA = (*YAML_MEDIA, "text/html")


class _NoAliasDumper(yaml.SafeDumper):
    """Shared sub-documents (the request-id parameter) written out in full: &id001 confuses readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def add_docs_routes(app: web.Application, spec: dict[str, Any], manual_dir: Path) -> None:
    # Rendered once: the document only changes with the descriptors, which are fixed at start.
    spec_yaml = yaml.dump(spec, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)
    spec_html = render_html(spec, spec_yaml)

    async def get_spec(request: web.Request) -> web.Response:
        # The seed requires an explicit Accept: without one (or with */*) YAML is the answer.
        media = negotiate(request.headers.get("Accept"), SPEC_MEDIA)
        if media == "text/html":
            return web.Response(text=spec_html, content_type="text/html")
        return web.Response(text=spec_yaml, content_type=media)

    async def get_manual(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/docs/dev/index.html")

    async def manual_file(request: web.Request) -> web.StreamResponse:
        # A few stat calls on local files: cheaper than a thread hop.
        root = manual_dir.resolve()  # noqa: ASYNC240
        target = (root / request.match_info["path"]).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            hint = "" if (root / "index.html").is_file() else " (the manual is not built: run make docs)"
            raise LunaError(ROUTE_NOT_FOUND, f"no manual page {request.match_info['path']!r}{hint}")
        return web.FileResponse(target)

    app.router.add_get("/docs/spec", get_spec)
    app.router.add_get("/docs/dev", get_manual)
    app.router.add_get("/docs/dev/", get_manual)
    app.router.add_get("/docs/dev/{path:.+}", manual_file)
