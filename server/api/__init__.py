"""Thin HTTP routers; the work happens in `server.serving`."""
