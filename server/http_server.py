"""The gateway's HTTP server: uvicorn, with a drain phase in front of its shutdown.

uvicorn alone, on SIGTERM, closes its listening socket at once (new clients get "connection
refused", not an answer) and then waits for open connections. `GatewayServer` first drains: the
service turns new requests away with a 503 `shutting_down` (and `/ready` with a 503) while the
API requests in flight finish; once none is left, or the grace period is over, uvicorn's own
shutdown closes the listener and the idle connections and runs the lifespan's shutdown.

Its connections are served by `server.http_protocol.GatewayHttpProtocol`: uvicorn's httptools
protocol with a deadline on request headers and a cap on connections per client address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import uvicorn
from fastapi import FastAPI

from server.http_protocol import GatewayHttpProtocol

log = logging.getLogger("slm.gateway")


class InFlight:
    """API requests (`/v1/...`) being answered, from the first byte read to the last byte sent."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class GatewayServer(uvicorn.Server):
    """Serves `config.app`, an app of `server.app.create_app`."""

    def __init__(self, config: uvicorn.Config) -> None:
        if config.http == "auto":
            config.http = GatewayHttpProtocol
        super().__init__(config)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.config.timeout_graceful_shutdown  # None: wait as long as it takes, as uvicorn does
        app = self.config.app
        assert isinstance(app, FastAPI), "GatewayServer serves the app of server.app.create_app"
        service = getattr(app.state, "service", None)  # absent when the lifespan never started
        in_flight: InFlight = app.state.in_flight
        began = time.monotonic()
        if service is not None and not self.force_exit:
            service.draining = True
            log.info("stopping: %d request(s) in flight; new requests get 503", in_flight.count)
            try:
                await asyncio.wait_for(in_flight.wait_idle(), timeout=grace)
            except TimeoutError:
                log.warning("stopping: %d request(s) still in flight after %s s; cancelling them",
                            in_flight.count, grace)
            else:
                log.info("stopping: requests finished in %.1f s", time.monotonic() - began)
        log.info("stopping: closing %d connection(s)", len(self.server_state.connections))
        if grace is not None:  # what is left of the grace period bounds uvicorn's wait for connections
            self.config.timeout_graceful_shutdown = max(1, round(grace - (time.monotonic() - began)))
        await super().shutdown(sockets)
