"""The running slm-server the live Prometheus test scrapes: the session's models (tests/conftest.py)
plus what the Routing row shows, a hosted model whose upstream is down and that falls back to
`big-hosted` (every request to it is a fallback), and a router over a local and a hosted model.

It is this module's own server (module scope), not the session's `live_server`: the other suites
that share that one (the web page, compare) list its models and must not see these entries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, running_live_server

ROUTING_ENTRIES = """
  falls-back:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: http://127.0.0.1:{dead_port}/v1
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 5
    retries: 0
    fallbacks: [big-hosted]
  auto:
    backend: router
    targets: [smollm2, big-hosted]
    ttft_objective_s: 5
"""


@pytest.fixture(scope="module")
def grafana_live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with running_live_server(tmp_path_factory.mktemp("grafana-live"), ROUTING_ENTRIES) as server:
        yield server


@pytest.fixture(scope="module")
def live_server_url(grafana_live_server: LiveServer) -> str:
    return grafana_live_server.url


@pytest.fixture(scope="module")
def live_worker_metrics_urls(grafana_live_server: LiveServer) -> list[str]:
    return grafana_live_server.worker_urls
