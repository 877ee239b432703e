"""`serve` stopped by a signal sent to its whole process group (Ctrl-C in a terminal, `kill -- -PGID`,
systemd's control-group kill): every process gets it at once, Redis and the worker may be gone
before the supervisor begins to stop, and still `serve` exits in bounded time with no child left
and nothing restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from server.supervisor import WORKER_GRACE_S
from tests.conftest import child_pids, running, start_server, tiny_registry, wait_until

pytestmark = pytest.mark.integration

REGISTRY = tiny_registry(n_ctx=256, n_threads=1, parallel=1)
# the grace period (gateway and workers), the gateway's and the workers' 5 s floors, Redis's own 5 s stop
EXIT_BOUND_S = WORKER_GRACE_S + 20


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stopped_through_its_process_group_exits_with_every_child_gone(
        tmp_path: Path, signum: signal.Signals) -> None:
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        server = start_server(folder, REGISTRY, new_session=True, timeout_s=120)
        pid = server.process.pid
        try:
            children = child_pids(pid)
            commands = [Path(f"/proc/{c}/cmdline").read_bytes() for c in children]
            assert any(b"redis-server" in c for c in commands), commands  # the embedded Redis
            assert any(b"worker" in c for c in commands), commands
            began = time.monotonic()
            os.killpg(pid, signum)
            try:
                code = server.process.wait(timeout=EXIT_BOUND_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"serve did not exit within {EXIT_BOUND_S}s of {signum.name} to its group "
                                     f"(attempt {attempt}):\n{server.log()[-3000:]}") from None
        finally:
            if server.process.poll() is None:
                os.killpg(pid, signal.SIGKILL)
                server.process.wait()
        assert code == 0, server.log()[-3000:]
        assert time.monotonic() - began < EXIT_BOUND_S
        wait_until(lambda: not any(running(c) for c in children), timeout_s=5,  # noqa: B023
                   what=f"the children of serve to be gone after {signum.name} (attempt {attempt})")
        assert "restarting" not in server.log(), server.log()[-3000:]
        assert "worker tiny#0 started" in server.log() and server.log().count("started (pid") == 1
