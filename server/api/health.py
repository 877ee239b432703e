"""`/health` (the process is alive), `/ready` (it can serve), `/metrics` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import ServiceDep

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(service: ServiceDep) -> Response:
    await service.refresh_presence()
    problems = service.readiness()
    if service.draining:
        problems.insert(0, "shutting down")
    if problems:
        return JSONResponse({"status": "unavailable", "reasons": problems}, status_code=503,
                            headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready", "workers": service.presence.counts})


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
