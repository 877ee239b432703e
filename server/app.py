"""`create_app(settings, registry)`: the gateway as a FastAPI app.

The lifespan owns the Redis clients, the metrics registry and the background refresh of worker
presence, and closes litellm's HTTP clients at shutdown; nothing is created at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import logs
from server.api import anthropic_routes, docs, health, openai_routes, responses_routes, web
from server.api.errors import install_error_handlers
from server.backends.upstream import close_hosted_clients, load_litellm
from server.http_protocol import ConnectionLimits
from server.http_server import InFlight
from server.metrics import Metrics
from server.queue.client import QueueClient
from server.registry import HostedModel, Registry, RouterModel
from server.reload import OnReload, RegistryWatcher, diff
from server.responses.background import BackgroundRuns
from server.security import SecurityConfig, SecurityMiddleware
from server.serving.dispatch import plan_for
from server.serving.routing import Route
from server.serving.service import Service
from server.settings import Settings

log = logging.getLogger("slm.gateway")
access_log = logging.getLogger("slm.access")

PRESENCE_INTERVAL_S = 0.5


def _declare_models(metrics: Metrics, registry: Registry) -> None:
    def choosing(model: str) -> Callable[[str, RouterModel], Route]:
        return lambda _router, _entry: Route(model, "objective")

    hops: set[tuple[str, str]] = set()
    for name, entry in registry.models.items():
        if isinstance(entry, RouterModel):
            choices = list(dict.fromkeys([*entry.targets, *(rule.to for rule in entry.escalate)]))
            metrics.declare_router(name, choices)
            # every plan the router can make: one per model it may choose (a target or an escalation's)
            for chosen in choices:
                hops.update(itertools.pairwise(plan_for(registry, name, entry, choosing(chosen)).candidates))
            continue
        chain = registry.fallback_chain(name)
        hops.update(itertools.pairwise(chain))
        if isinstance(entry, HostedModel):
            metrics.declare_model(name, "hosted", file=entry.litellm_model, quant="", n_ctx=None)
        else:
            file = entry.gguf.rsplit("/", 1)[-1]
            quant = file.rsplit(".", 2)[-2] if file.count(".") >= 2 else ""
            metrics.declare_model(name, "local", file=file, quant=quant, n_ctx=entry.n_ctx)
    # slm_fallbacks_total{model, to} for each hop from one candidate to the next that a plan can take
    metrics.declare_fallbacks(hops)


class RequestIdMiddleware:
    """Give every request an id (`x-request-id`), visible to handlers as `request.state.request_id`;
    count the API requests in flight (the drain at shutdown waits for them)."""

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = "req_" + uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = [500]
        path = scope.get("path", "")
        api = path.startswith("/v1/")
        if api:
            self.in_flight.enter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if api:
                self.in_flight.leave()
                access_log.info("%s %s %d", scope.get("method"), path, status[0], extra={
                    "method": scope.get("method"), "path": path, "status": status[0],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1)})
            logs.request_id.reset(token)


def create_app(settings: Settings, registry: Registry, *, on_reload: list[OnReload] | None = None,
               reload_checks: Sequence[Callable[[Registry], list[str]]] = ()) -> FastAPI:
    """The gateway app. `on_reload` listeners hear of every applied registry edit (the supervisor
    of `serve` starts and drains workers with it); `reload_checks` may refuse an edit (the memory
    budget of `serve`)."""
    if not settings.redis_configured:
        raise ValueError("the gateway needs SLM_REDIS_URL or SLM_REDIS_SENTINELS")
    redis_target = settings.redis_target()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        _declare_models(metrics, registry)
        queue = QueueClient(redis_target, timeout_s=settings.redis_timeout_s, cache_aware=settings.cache_aware_dispatch,
                            heartbeat_ttl_s=settings.heartbeat_ttl_s, local_events=settings.local_events)
        service = Service(settings, registry, queue, metrics)
        app.state.service = service
        if any(isinstance(entry, HostedModel) for entry in registry.models.values()):
            await asyncio.to_thread(load_litellm)  # seconds of imports, off the loop and before the first request
        await service.refresh_presence()

        async def refresh_forever() -> None:
            while not service.draining:  # not only cancellation: a Redis call may swallow the cancel
                await asyncio.sleep(PRESENCE_INTERVAL_S)
                await service.refresh_presence()

        def apply(old: Registry, new: Registry) -> None:
            _added, removed, changed = diff(old, new)
            for name in removed | changed:
                metrics.forget_model(name)
                service.routing.forget(name)
            _declare_models(metrics, new)
            service.registry = new

        tasks = [asyncio.create_task(refresh_forever())]
        if settings.reload_interval_s > 0:
            watcher = RegistryWatcher(settings.registry, registry, model_dirs=settings.model_dir_list(),
                                      metrics=metrics, interval_s=settings.reload_interval_s,
                                      key_env_pattern=settings.provider_key_env_pattern, checks=reload_checks)
            watcher.listeners = [apply, *(on_reload or [])]
            watcher.install_sighup()
            app.state.watcher = watcher
            tasks.append(asyncio.create_task(watcher.run()))
        try:
            yield
        finally:
            service.draining = True
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.responses_runs.stop()  # background responses: their jobs cancelled, marked failed
            await service.wait_closed()
            await queue.close()
            await close_hosted_clients()

    # /docs and /openapi.json only when asked for (SLM_DOCS): Swagger UI comes from a CDN (`api/docs`)
    app = FastAPI(title="slm-server", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None)
    install_error_handlers(app)

    security = SecurityConfig.from_settings(settings)
    app.add_middleware(SecurityMiddleware, config=security)
    app.state.connection_limits = ConnectionLimits.from_settings(settings, keys_configured=bool(security.keys))
    app.state.in_flight = InFlight()
    app.state.responses_runs = BackgroundRuns()
    app.add_middleware(RequestIdMiddleware, in_flight=app.state.in_flight)
    app.include_router(health.router)
    app.include_router(openai_routes.router)
    app.include_router(anthropic_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(web.router)
    if settings.docs:
        app.include_router(docs.router)
    return app
