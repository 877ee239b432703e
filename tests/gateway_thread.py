"""Run the real gateway app under uvicorn in a background thread, on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from server.app import create_app
from server.backends.health import HealthPolicy
from server.embedded_redis import free_port
from server.http_server import GatewayServer
from server.registry import Registry
from server.settings import Settings
from tests.conftest import wait_until


@contextmanager
def running_gateway(settings: Settings, registry: Registry, *,
                    upstream_health: HealthPolicy | None = None) -> Iterator[str]:
    """`upstream_health`: the circuit policy of its hosted models (`server.backends.health`), else the default."""
    port = free_port()
    app = create_app(settings, registry)
    server = GatewayServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=20, what="the gateway to start")
    if upstream_health is not None:
        app.state.service.upstream_health = upstream_health  # before any request: every hosted backend uses it
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
