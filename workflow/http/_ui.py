"""The web UI: the static files of ``workflow/http/ui/`` (one HTML page, one JavaScript
module, one style sheet; no build step, nothing fetched from elsewhere) served at ``/ui/``.

The page calls the JSON API with the bearer token the operator typed in (kept in the tab's
``sessionStorage``, never in a cookie). Its files are sent with a strict Content-Security-
Policy: scripts, styles, images and requests from this origin only, no inline script or
style, no framing. See docs/operations.md, "Web UI"."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["HEADERS", "UI_DIR", "UiFiles", "mount_ui"]

UI_DIR = Path(__file__).resolve().parent / "ui"

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # revalidated on every load (ETag / Last-Modified): an upgrade is seen at once
    "Cache-Control": "no-cache",
}
"""Sent with every file of the UI."""


class UiFiles(StaticFiles):
    """``StaticFiles`` adding :data:`HEADERS` to every response."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


async def _to_ui(request: Request) -> Response:
    # relative: right under a Mount or a proxy's root_path too
    return RedirectResponse("ui/", status_code=307)


def mount_ui(app: Starlette, path: str = "/ui") -> None:
    """Serve the UI at ``path`` (``/ui/``, ``/ui`` redirects there) and redirect ``/`` to
    it."""
    app.router.routes.append(Mount(path, app=UiFiles(directory=UI_DIR, html=True), name="ui"))
    app.router.routes.append(Route("/", _to_ui, methods=["GET"]))
