"""The built-in page in a real headless browser: Debian's Chromium driven by Playwright.

Playwright never downloads a browser here: it launches the system's Chromium (`/usr/bin/chromium`,
installed by `make system-deps`, or `SLM_TEST_CHROMIUM`). When neither exists the tests *fail*
with a message saying how to get one, on CI and on a developer's machine alike, rather than
skipping: a skipped end-to-end test reads as green while the page goes unproven.

Every page opened through `open_page` runs behind a network guard: a route on the whole browser
context lets requests to 127.0.0.1 through and aborts any other (so nothing ever leaves the
machine), and a request listener records every URL the page asked for; the test fails at teardown
if any went elsewhere, or if the page logged a console error (a CSP violation, a 404, a JS error).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Route,
    expect,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from tests.conftest import REPO, LiveServer, start_server, stop_server

ARTIFACTS = REPO / "test-artifacts"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Known to work on this kind of machine (as root, no GPU, no network but loopback); Playwright adds
# --headless and a fresh --user-data-dir itself.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 30_000
ALLOWED_HOST = "127.0.0.1"
# read at import: the autouse `_clean_env` fixture clears SLM_* variables around each test
CHROMIUM_FROM_ENV = os.environ.get("SLM_TEST_CHROMIUM")

expect.set_options(timeout=TIMEOUT_MS)


def chromium_path() -> str:
    """The Chromium to drive, or a test failure that says how to install one (never a skip)."""
    given = CHROMIUM_FROM_ENV
    path = given or DEFAULT_CHROMIUM
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        where = f"SLM_TEST_CHROMIUM={given!r}" if given else DEFAULT_CHROMIUM
        pytest.fail(
            f"the web page tests need Chromium and found none at {where}. Install Debian's with "
            "`make system-deps` (or `apt-get install chromium`), or point SLM_TEST_CHROMIUM at a Chromium "
            "binary. They fail rather than skip so that an unproven page never passes as green.",
            pytrace=False)
    return path


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "data":
        return True
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname == ALLOWED_HOST


@dataclass
class Guarded:
    """One browser context and page behind the network guard, with what it saw."""

    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        offhost = [url for url in self.requests if not is_local(url)]
        return ([f"request for a non-{ALLOWED_HOST} host: {url}" for url in sorted(set(offhost + self.blocked))]
                + [f"console error: {text}" for text in self.console_errors])


OpenPage = Callable[..., Guarded]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """`open_page(base_url, **context_options)`: a fresh context (own storage) and page, guarded.

    At teardown the test fails if any request went to a host other than 127.0.0.1 or the page logged
    a console error; `guarded.console_errors.clear()` first where a test provokes an expected one.
    """
    opened: list[Guarded] = []

    def open_(base_url: str, **options: Any) -> Guarded:
        context = browser.new_context(base_url=base_url, **options)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        guarded = Guarded(context, page)

        def guard(route: Route) -> None:
            if is_local(route.request.url):
                route.fallback()
            else:
                guarded.blocked.append(route.request.url)
                route.abort("blockedbyclient")

        def on_request(request: Request) -> None:
            guarded.requests.append(request.url)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                guarded.console_errors.append(message.text)

        context.route("**/*", guard)
        page.on("request", on_request)
        page.on("console", on_console)
        page.on("pageerror", lambda exc: guarded.console_errors.append(f"uncaught: {exc}"))
        opened.append(guarded)
        return guarded

    yield open_
    problems: list[str] = []
    for guarded in opened:
        problems += guarded.problems()
        with contextlib.suppress(PlaywrightError):
            guarded.context.close()
    assert not problems, "\n".join(problems)


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/ (gitignored; CI keeps it as an artifact)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


# ---- a second server, with API keys -------------------------------------------------------------
# Hosted models only: no GGUF to load, so it is ready in a couple of seconds. Its one model answers
# from the fake OpenAI-compatible upstream of tests/backends, on 127.0.0.1.
KEYED_REGISTRY = """
models:
  keyed-hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: {api_base}
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 20
"""


@dataclass
class KeyedServer:
    live: LiveServer
    key: str

    @property
    def url(self) -> str:
        return self.live.url


@pytest.fixture(scope="package")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedServer]:
    from tests.backends.fake_upstream import FakeUpstream

    tmp = tmp_path_factory.mktemp("web-keyed")
    key = "sk-web-" + os.urandom(12).hex()
    with FakeUpstream() as upstream:
        live = start_server(tmp, KEYED_REGISTRY.format(api_base=upstream.api_base), timeout_s=60, env={
            "SLM_API_KEYS": key, "HOSTED_TEST_API_KEY": "sk-upstream-test",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True"})
        try:
            assert httpx.get(live.url + "/v1/status", timeout=10).status_code == 401
            yield KeyedServer(live, key)
        finally:
            stop_server(live)
