"""`GET /docs`: Swagger UI over the app's OpenAPI schema, only with `SLM_DOCS=true` (off by default).

Swagger UI is not shipped in the package, so the page loads it from a CDN — an exact, pinned
version, the only script source its `Content-Security-Policy` allows besides the page's own
inline start-up line (by hash). The policy also *sandboxes* the page without `allow-same-origin`:
it runs in an opaque origin, so even a script the CDN got wrong cannot read what the built-in page
at `/` keeps in this origin's `localStorage` (the API key), nor read any API answer
(`connect-src 'none'`; the schema is embedded in the page rather than fetched). The price:
"Try it out" does not work here; the page is for reading the API.
"""

from __future__ import annotations

import base64
import hashlib
import json

from fastapi import APIRouter, Request, Response

router = APIRouter()

SWAGGER_UI = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.17.14/"
START = ('SwaggerUIBundle({spec: JSON.parse(document.getElementById("spec").textContent), '
         'dom_id: "#swagger-ui", supportedSubmitMethods: []});')
_START_HASH = base64.b64encode(hashlib.sha256(START.encode()).digest()).decode()
DOCS_HEADERS = {
    "Content-Security-Policy": (
        f"sandbox allow-scripts; default-src 'none'; script-src {SWAGGER_UI} 'sha256-{_START_HASH}'; "
        f"style-src {SWAGGER_UI} 'unsafe-inline'; img-src data:; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def docs_page(schema: dict[str, object]) -> bytes:
    # `<` escaped, so no text in the schema can close the data block; a data block is never run
    spec = json.dumps(schema).replace("<", "\\u003c").replace("&", "\\u0026")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>slm-server API</title>\n'
        f'<link rel="stylesheet" href="{SWAGGER_UI}swagger-ui.css"></head>\n'
        '<body><div id="swagger-ui"></div>\n'
        f'<script type="application/json" id="spec">{spec}</script>\n'
        f'<script src="{SWAGGER_UI}swagger-ui-bundle.js"></script>\n'
        f"<script>{START}</script>\n</body></html>\n"
    ).encode()


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    return Response(docs_page(request.app.openapi()), media_type="text/html; charset=utf-8", headers=DOCS_HEADERS)
