"""The built-in page: `GET /` (models, live status, a streaming playground), its assets, `/v1/status`,
and `/v1/compare` (the latest `slm-server compare` results, when `SLM_COMPARE_RESULTS` names them).

The page is three static files shipped in the package (`server/web/`), no build step and nothing
from a CDN; it talks to the server only through `/v1/status`, `/v1/compare` and `/v1/chat/completions`.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

from fastapi import APIRouter, HTTPException, Response

from server.api.deps import ServiceDep
from server.compare.latest import latest_summary
from server.serving.status import reporter_for

router = APIRouter()

ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    return importlib.resources.files("server").joinpath("web", name).read_bytes()


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"No such file: '{name}'.")
    return Response(_read(name), media_type=media_type, headers=PAGE_HEADERS)


@router.get("/v1/status")
async def status(service: ServiceDep) -> dict[str, Any]:
    """Per registry model: backend, aliases, state, workers, queue depth and recent latency."""
    return await reporter_for(service).status()


@router.get("/v1/compare")
async def compare_results(service: ServiceDep) -> dict[str, Any]:
    """The latest `slm-server compare` run's summary, when `SLM_COMPARE_RESULTS` names its results.json;
    `results` is null otherwise (not an error: the page asks on every load, and most servers have none)."""
    path = service.settings.compare_results
    return {"object": "compare.summary", "results": latest_summary(path) if path is not None else None}
