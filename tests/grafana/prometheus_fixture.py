"""A real Prometheus server (Debian's `prometheus` binary) for tests, on 127.0.0.1 and a free port.

    with run_prometheus({"slm-gateway": [gateway_url]}, rule_files=[ALERT_RULES_PATH]) as prom:
        prom.wait_for_targets_up()
        prom.query("sum(slm_requests_total)")

It scrapes every second, evaluates rules every second, keeps its TSDB in a temporary directory
and is stopped (SIGTERM, then SIGKILL) when the block ends. Its log goes to a file whose tail is
put in every error, so a failed start says why.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .promtool import binary

T = TypeVar("T")

SCRAPE_INTERVAL_S = 1.0


class PrometheusError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape_target(url: str) -> tuple[str, str, str]:
    """(scheme, host:port, metrics path) for a base URL such as http://127.0.0.1:8000."""
    parts = urllib.parse.urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"not a URL: {url!r}")
    path = parts.path.rstrip("/")
    return parts.scheme or "http", parts.netloc, path if path.endswith("/metrics") else path + "/metrics"


def config(jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path]) -> dict[str, Any]:
    scrape_configs = []
    for job, urls in jobs.items():
        # One scrape config per (scheme, path); targets are host:port.
        by_path: dict[tuple[str, str], list[str]] = {}
        for url in urls:
            scheme, host, path = scrape_target(url)
            by_path.setdefault((scheme, path), []).append(host)
        for index, ((scheme, path), hosts) in enumerate(sorted(by_path.items())):
            scrape_configs.append(
                {
                    "job_name": job if index == 0 else f"{job}-{index}",
                    "scheme": scheme,
                    "metrics_path": path,
                    "static_configs": [{"targets": hosts, "labels": {"job": job}}],
                }
            )
    return {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S:g}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_S:g}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S:g}s",
        },
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": scrape_configs,
    }


class PrometheusServer:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError on an error status."""
        query = urllib.parse.urlencode(params)
        request = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:
                body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now; the result vector (a scalar becomes one unlabelled sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            result: list[dict[str, Any]] = data["result"]
            return result
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PrometheusError(f"{expr}: unexpected result type {data['resultType']}")

    def value(self, expr: str) -> float:
        """The single value of an instant query, NaN when empty."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
        """Poll `probe` until it returns something other than None; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = probe()
                if result is not None:
                    return result
            except (PrometheusError, OSError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"timed out after {timeout}s waiting for {what} ({last_error})\n{self.log_tail()}"
                )
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}\n{self.log_tail()}")
            time.sleep(0.2)

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return targets

    def wait_for_targets_up(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        def probe() -> list[dict[str, Any]] | None:
            targets = self.targets()
            return targets if targets and all(t["health"] == "up" for t in targets) else None

        try:
            return self.wait_until("every scrape target up", probe, timeout)
        except PrometheusError as exc:
            states = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
            raise PrometheusError(f"{exc}\ntargets: {states}") from exc

    def wait_for_scrape_after(self, moment: float, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped after `moment` (a time.time() value)."""

        def probe() -> bool | None:
            stamps = [float(s["value"][1]) for s in self.query("timestamp(up)")]
            return True if stamps and min(stamps) > moment else None

        self.wait_until(f"a scrape of every target after {moment}", probe, timeout)

    def rules(self) -> list[dict[str, Any]]:
        groups = self.api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]


@contextmanager
def run_prometheus(
    jobs: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    startup_timeout: float = 30.0,
) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping `jobs` (job name -> base URLs); stop it on exit."""
    executable = binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="slm-prometheus-") as tmp:
        workdir = Path(tmp)
        config_path = workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed.
        config_path.write_text(json.dumps(config(jobs, rule_files), indent=2), encoding="utf-8")
        log = workdir / "prometheus.log"
        port = free_port()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        server = PrometheusServer(f"http://127.0.0.1:{port}", process, log)
        try:
            server.wait_until("/-/ready", lambda: _ready(server.url), startup_timeout)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _ready(url: str) -> bool | None:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return True if response.status == 200 else None
    except urllib.error.HTTPError as exc:
        exc.close()
        return None


@pytest.fixture
def prometheus_factory() -> Iterator[Callable[..., PrometheusServer]]:
    """`prometheus_factory({"slm-gateway": [url]}, rule_files=[...])` starts a Prometheus that is
    stopped when the test ends (use `run_prometheus` directly for a wider scope)."""
    with ExitStack() as stack:

        def start(jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path] = ()) -> PrometheusServer:
            return stack.enter_context(run_prometheus(jobs, rule_files))

        yield start
