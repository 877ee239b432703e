"""The built-in page (`GET /`) end to end: headless Chromium against a real running server.

Most tests use the session's `live_server` (SmolLM2 and Gemma 3 270M on real workers, two hosted
entries); the API-key test uses a small keyed server of its own (`keyed_server`, hosted only).
Synchronisation is by Playwright's auto-waiting `expect`s and `wait_for_function`, and
`tests.conftest.wait_until` for the server side: no sleeps.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, Route, expect

from server.queue import keys
from server.queue.messages import decode_event
from tests.conftest import LiveServer, wait_until
from tests.prometheus_text import scrape, value
from tests.web.conftest import ALLOWED_HOST, Guarded, KeyedServer, OpenPage, screenshot

pytestmark = pytest.mark.integration

EOS_BANNED = {"0": -100, "1": -100, "2": -100}  # SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>
REFRESH_MS = 4000  # app.js: how often the page asks for /v1/status
# a whole answer of a few dozen tokens takes a second alone, far longer on a busy 2-core machine
ANSWER_TIMEOUT_MS = 120_000
PHONE = {"viewport": {"width": 375, "height": 740}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


# ---- helpers ------------------------------------------------------------------------------------
def row(page: Page, model: str) -> Locator:
    return page.locator(f'#models tbody tr[data-model="{model}"]')


def cell(page: Page, model: str, label: str) -> Locator:
    return row(page, model).locator(f'td[data-label="{label}"]')


def load(guarded: Guarded) -> Page:
    """Open `/` and wait until the first status has been rendered."""
    page = guarded.page
    page.goto("/")
    expect(page.locator("#models tbody tr").first).to_be_visible()
    return page


def last_answer(page: Page) -> Locator:
    return page.locator("#transcript li.assistant").last


def ask(page: Page, prompt: str, *, model: str = "smollm2", max_tokens: int = 32, temperature: float = 0.0,
        system: str = "") -> None:
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("Temperature").fill(str(temperature))
    page.get_by_label("Max tokens").fill(str(max_tokens))
    page.get_by_label("System prompt").fill(system)
    page.get_by_label("Message", exact=True).fill(prompt)
    page.get_by_role("button", name="Send").click()


def ban_eos(page: Page) -> None:
    """Make SmolLM2 talk until max_tokens: the page has no logit_bias field, so add one on the way out."""
    def add_bias(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.fallback(post_data=json.dumps({**body, "logit_bias": EOS_BANNED}))

    page.route("**/v1/chat/completions", add_bias)


def wait_answer_done(page: Page) -> Locator:
    turn = last_answer(page)
    expect(turn).to_have_attribute("data-outcome", re.compile(r"^(done|stopped at max tokens)$"),
                                   timeout=ANSWER_TIMEOUT_MS)
    return turn


def sse_payloads(body: str) -> list[dict[str, Any]]:
    out = []
    for block in body.split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith("data:"))
        if data and data != "[DONE]":
            out.append(json.loads(data))
    return out


def format_ms(ms: float) -> str:
    """The page's own formatting of a duration (app.js `formatMs`)."""
    return f"{to_fixed(ms / 1000, 2)} s" if ms >= 1000 else f"{math.floor(ms + 0.5)} ms"


def to_fixed(number: float, digits: int) -> str:
    """JavaScript's `toFixed`: an exact tie rounds up (Python's formatting rounds it to even), as
    `Math.round` does for the milliseconds above."""
    return str(Decimal(number).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def smollm2_worker(worker_urls: list[str]) -> str:
    for url in worker_urls:
        if 'slm_worker_slots{model="smollm2"}' in httpx.get(url + "/metrics", timeout=10).text:
            return url
    raise AssertionError(f"no worker of smollm2 among {worker_urls}")


# ---- the model table ----------------------------------------------------------------------------
def test_page_lists_the_registry_models_with_backend_state_queue_and_latency(
        live_server: LiveServer, open_page: OpenPage) -> None:
    # one request so that SmolLM2 has recent latency to show
    reply = httpx.post(live_server.url + "/v1/chat/completions", timeout=60, json={
        "model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    guarded = open_page(live_server.url)
    page = guarded.page
    page.clock.install()  # the page's timers run only when told: no refresh lands between status and checks
    with page.expect_response(lambda r: r.url.endswith("/v1/status")) as first_status:
        page.goto("/")
    status = first_status.value.json()
    expect(page).to_have_title("slm-server")
    expect(page.locator("#models tbody tr")).to_have_count(len(status["models"]))
    names = {m["name"] for m in status["models"]}
    assert names == {"smollm2", "gemma3-270m", "big-hosted", "dead-hosted"}

    for m in status["models"]:
        name = m["name"]
        expect(cell(page, name, "Model")).to_have_text(name)
        expect(cell(page, name, "Backend")).to_have_text(m["backend"])
        expect(cell(page, name, "Aliases")).to_have_text(", ".join(m["aliases"]) or "—")
        expect(cell(page, name, "State")).to_have_text(m["state"])
        expect(cell(page, name, "State").locator("span.state")).to_have_class(f"state state-{m['state']}")
        expect(cell(page, name, "Workers")).to_have_text("—" if m["workers"] is None else str(m["workers"]))
        expect(cell(page, name, "Queue")).to_have_text("—" if m["queue_depth"] is None else str(m["queue_depth"]))
        recent = m["recent"]
        ttft = "—" if recent["ttft_p50_ms"] is None else format_ms(recent["ttft_p50_ms"])
        expect(cell(page, name, "TTFT p50")).to_have_text(ttft)
        rate = "—" if recent["tokens_per_s"] is None else to_fixed(recent["tokens_per_s"], 1)
        expect(cell(page, name, "Tokens/s")).to_have_text(rate)

    # what the live registry holds, as a person reads it
    expect(cell(page, "smollm2", "Backend")).to_have_text("local")
    expect(cell(page, "smollm2", "Aliases")).to_have_text("smollm2-135m")
    expect(cell(page, "smollm2", "State")).to_have_text("ready")
    expect(cell(page, "smollm2", "Queue")).to_have_text(re.compile(r"^\d+$"))
    expect(cell(page, "smollm2", "TTFT p50")).to_have_text(re.compile(r"^\d+(\.\d\d)? (ms|s)$"))
    expect(cell(page, "smollm2", "Tokens/s")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(cell(page, "big-hosted", "Backend")).to_have_text("hosted")
    expect(cell(page, "big-hosted", "Queue")).to_have_text("—")
    expect(cell(page, "gemma3-270m", "Backend")).to_have_text("local")
    # residency under `serve`: state, memory estimated from the GGUF / measured RSS, last use
    for m in status["models"]:
        residency = m["residency"]
        if residency is None:  # hosted: nothing loaded here
            expect(cell(page, m["name"], "Residency")).to_have_text("—")
            expect(cell(page, m["name"], "Memory")).to_have_text("—")
            continue
        expect(cell(page, m["name"], "Residency")).to_have_text(residency["state"])
        expect(cell(page, m["name"], "Residency").locator("span.state")).to_have_class(
            f"state state-{residency['state']}")
        estimated = round(residency["memory_estimated_bytes"] / 1024**2)
        expect(cell(page, m["name"], "Memory")).to_have_text(re.compile(rf"^est\. {estimated} MiB / (\d+ MiB|—)$"))
    expect(cell(page, "smollm2", "Residency")).to_have_text("ready")
    expect(cell(page, "smollm2", "Last used")).to_have_text(re.compile(r"^(—|\d+ (s|min|h) ago)$"))
    expect(page.locator("#server-state")).to_have_text(re.compile(r"^4 models · up "))
    expect(page.locator("#window")).to_have_text(re.compile(r"^\d+ (s|min)$"))

    # the picker offers every model, a ready local one chosen first
    picker = page.get_by_label("Model", exact=True)
    expect(picker.locator("option")).to_have_count(4)
    assert picker.input_value() in {"smollm2", "gemma3-270m", "big-hosted", "dead-hosted"}
    # an open server asks for no key: the key field stays hidden
    expect(page.locator("#key-field")).to_be_hidden()
    # the table refreshes by itself every few seconds
    with page.expect_response(lambda r: r.url.endswith("/v1/status")) as again:
        page.clock.run_for(REFRESH_MS)
    assert again.value.ok
    expect(page.locator("#models tbody tr")).to_have_count(4)


# ---- streaming ----------------------------------------------------------------------------------
RECORD_SNAPSHOTS = """() => {
  window.__snapshots = [];
  const transcript = document.getElementById("transcript");
  new MutationObserver(() => {
    const turn = transcript.lastElementChild;
    if (!turn || !turn.classList.contains("assistant")) return;
    const text = turn.querySelector(".text").textContent;
    const seen = window.__snapshots;
    if (!seen.length || seen[seen.length - 1].text !== text) {
      seen.push({text, streaming: turn.classList.contains("streaming"), at: performance.now()});
    }
  }).observe(transcript, {childList: true, subtree: true, characterData: true});
}"""


def test_a_prompt_streams_the_answer_token_by_token(live_server: LiveServer, open_page: OpenPage) -> None:
    guarded = open_page(live_server.url)
    page = load(guarded)
    page.evaluate(RECORD_SNAPSHOTS)
    with page.expect_request("**/v1/chat/completions") as sent:
        ask(page, "Write three short sentences about the sea.", max_tokens=32,
            system="You are a helpful assistant.")
    body = sent.value.post_data_json
    assert isinstance(body, dict)
    assert body["stream"] is True
    assert body["model"] == "smollm2"
    assert body["max_tokens"] == 32
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert body["messages"][-1] == {"role": "user", "content": "Write three short sentences about the sea."}

    turn = wait_answer_done(page)
    final = turn.locator(".text").inner_text()
    assert final.strip()
    snapshots: list[dict[str, Any]] = page.evaluate("window.__snapshots")
    texts = [s["text"] for s in snapshots if s["text"]]
    # the answer grew over several DOM updates, each a prefix of the next, while the turn was streaming
    assert len(texts) >= 4, texts
    for shorter, longer in itertools.pairwise(texts):
        assert longer.startswith(shorter) and len(longer) > len(shorter), (shorter, longer)
    assert texts[-1] == final
    streaming = [s for s in snapshots if s["text"] and s["streaming"]]
    assert len(streaming) >= 3
    assert streaming[0]["text"] != final  # the first words were on screen before the answer was whole
    assert streaming[-1]["at"] > streaming[0]["at"]
    # the user's turn is in the transcript, the prompt box is cleared and focused for the next one
    expect(page.locator("#transcript li.user .text")).to_have_text("Write three short sentences about the sea.")
    expect(page.get_by_label("Message", exact=True)).to_have_value("")
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    screenshot(page, "web-page.png")


def test_prompt_eval_and_generation_times_are_shown_under_the_answer(
        live_server: LiveServer, open_page: OpenPage) -> None:
    guarded = open_page(live_server.url)
    page = load(guarded)
    with page.expect_response("**/v1/chat/completions") as answered:
        ask(page, "Name a colour.", max_tokens=12)
    turn = wait_answer_done(page)
    payloads = sse_payloads(answered.value.text())
    (t,) = [p["timings"] for p in payloads if "timings" in p]
    line = turn.locator(".timings")
    expect(line).to_be_visible()
    text = line.inner_text()
    assert f"prompt {t['prompt_n']} tok in {format_ms(t['prompt_ms'])}" in text
    assert f"generation {t['predicted_n']} tok in {format_ms(t['predicted_ms'])}" in text
    assert f"first token {format_ms(t['ttft_ms'])}" in text
    assert t["prompt_n"] > 0 and t["predicted_n"] > 0 and t["prompt_ms"] > 0 and t["predicted_ms"] > 0
    # it sits under the answer: below the text, inside the same turn
    text_box = turn.locator(".text").bounding_box()
    line_box = line.bounding_box()
    assert text_box is not None and line_box is not None
    assert line_box["y"] >= text_box["y"] + text_box["height"] - 1


# ---- stop ---------------------------------------------------------------------------------------
def test_stop_cancels_the_generation_on_the_server(
        live_server: LiveServer, live_worker_metrics_urls: list[str], open_page: OpenPage) -> None:
    worker = smollm2_worker(live_worker_metrics_urls)
    store = redis.Redis.from_url(live_server.redis_url())
    before = scrape(live_server.url)
    guarded = open_page(live_server.url)
    page = load(guarded)

    ban_eos(page)
    max_tokens = 900
    ask(page, "Tell me a very long story about a lighthouse keeper.", max_tokens=max_tokens, temperature=0.7)
    turn = last_answer(page)
    page.wait_for_function(
        "() => (document.querySelector('#transcript li.assistant:last-child .text')?.textContent || '').length > 40",
        timeout=ANSWER_TIMEOUT_MS)
    # mid-generation: the server holds it (its queue counts it, the worker decodes it), the page says so
    expect(turn).to_have_class(re.compile(r"\bstreaming\b"))
    expect(cell(page, "smollm2", "Queue")).to_have_text("1")
    assert value(scrape(worker), "slm_worker_busy_slots", model="smollm2") == 1
    completion_id = turn.get_attribute("data-completion-id")
    assert completion_id and completion_id.startswith("chatcmpl-")
    job_id = completion_id.removeprefix("chatcmpl-")

    page.get_by_role("button", name="Stop").click()
    expect(turn).to_have_attribute("data-outcome", "stopped")
    expect(turn.locator(".note")).to_have_text("(stopped)")
    stopped_text = turn.locator(".text").inner_text()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    # the gateway flagged the request cancelled, and the worker finished it as cancelled, early
    assert store.exists(keys.cancel_flag(job_id))
    final: dict[str, Any] = {}

    def worker_finished() -> bool:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = store.xrange(keys.response_stream(job_id))  # type: ignore[assignment]
        events = [decode_event(fields) for _, fields in entries]
        final.update(events[-1] if events and events[-1]["type"] == "done" else {})
        return bool(final)

    wait_until(worker_finished, timeout_s=10, what="the worker to finish the cancelled request")
    assert final["cancelled"] is True
    assert 0 < final["usage"]["completion_tokens"] < max_tokens / 2
    # the slot is free and the request left the model's queue
    wait_until(lambda: value(scrape(worker), "slm_worker_busy_slots", model="smollm2") == 0,
               timeout_s=10, what="the worker's slot to be free")
    assert store.xlen(keys.request_stream("smollm2")) == 0
    after = scrape(live_server.url)
    labels = {"model": "smollm2", "backend": "local"}
    assert value(after, "slm_client_disconnects_total", **labels) - \
        value(before, "slm_client_disconnects_total", **labels) == 1
    assert value(after, "slm_request_errors_total", **labels, error_type="cancelled") - \
        value(before, "slm_request_errors_total", **labels, error_type="cancelled") == 1
    # the page's next status shows the queue empty again; the answer stopped where it was
    expect(cell(page, "smollm2", "Queue")).to_have_text("0")
    expect(turn.locator(".text")).to_have_text(stopped_text)
    expect(turn.locator(".timings")).to_have_count(0)


# ---- API keys -----------------------------------------------------------------------------------
def test_an_invalid_api_key_shows_the_servers_error(keyed_server: KeyedServer, open_page: OpenPage) -> None:
    url = keyed_server.url
    guarded = open_page(url)
    page = guarded.page
    page.goto("/")
    # no key yet: the server's 401 is shown, and the page asks for a key
    no_key = httpx.get(url + "/v1/status", timeout=10).json()["error"]["message"]
    expect(page.locator("#status-error")).to_have_text("Status unavailable: " + no_key)
    expect(page.locator("#server-state")).to_have_text("API key needed")
    key_field = page.get_by_label("API key")
    expect(key_field).to_be_visible()
    expect(key_field).to_have_attribute("type", "password")

    wrong = "sk-wrong-" + "0" * 24
    told = httpx.get(url + "/v1/status", timeout=10, headers={"Authorization": f"Bearer {wrong}"})
    assert told.status_code == 401
    key_field.fill(wrong)
    key_field.press("Tab")  # `change`: the page stores the key and asks for the status again
    expect(page.locator("#status-error")).to_have_text("Status unavailable: " + told.json()["error"]["message"])

    # the right key: the models appear, the key is kept in this browser only, a prompt streams
    key_field.fill(keyed_server.key)
    key_field.press("Tab")
    expect(page.locator("#status-error")).to_be_hidden()
    expect(cell(page, "keyed-hosted", "Backend")).to_have_text("hosted")
    assert page.evaluate("localStorage.getItem('slm-server.api-key')") == keyed_server.key
    with page.expect_request("**/v1/chat/completions") as sent:
        ask(page, "Hello?", model="keyed-hosted", max_tokens=16)
    assert sent.value.headers["authorization"] == f"Bearer {keyed_server.key}"
    expect(last_answer(page)).to_have_attribute("data-outcome", "done")
    expect(last_answer(page).locator(".text")).to_have_text("Hello from the fake upstream")

    # a key that stops being valid: the chat shows the server's own error for that request
    chat_told = httpx.post(url + "/v1/chat/completions", timeout=10, headers={"Authorization": f"Bearer {wrong}"},
                           json={"model": "keyed-hosted", "messages": [{"role": "user", "content": "Hi"}]})
    assert chat_told.status_code == 401
    message = chat_told.json()["error"]["message"]
    assert message.startswith("Incorrect API key provided")
    key_field.fill(wrong)
    key_field.press("Tab")
    with page.expect_response("**/v1/chat/completions") as refused:
        ask(page, "Hello again?", model="keyed-hosted", max_tokens=16)
    assert refused.value.status == 401
    expect(page.locator("#chat-error")).to_have_text(message)
    expect(last_answer(page)).to_have_attribute("data-outcome", "failed")
    expect(page.get_by_label("Message", exact=True)).to_have_value("Hello again?")  # kept to resend

    # a reload keeps the key (this browser's storage) and shows the field at once
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(wrong)
    expect(page.locator("#status-error")).to_contain_text("Incorrect API key provided")
    # Chromium logs each 401 as a failed load; those are the only console errors expected here
    unexpected = [e for e in guarded.console_errors if "status of 401" not in e]
    assert not unexpected, unexpected
    guarded.console_errors.clear()


# ---- accessibility, keyboard, phone ------------------------------------------------------------
UNLABELLED_CONTROLS = """() => [...document.querySelectorAll("input, select, textarea, button")]
  .filter((c) => {
    const name = c.labels && c.labels.length ? [...c.labels].map((l) => l.textContent.trim()).join(" ")
      : (c.getAttribute("aria-label") || (c.tagName === "BUTTON" ? c.textContent.trim() : ""));
    return !name;
  })
  .map((c) => c.outerHTML)"""


def test_every_control_is_labelled_and_the_form_works_from_the_keyboard(
        live_server: LiveServer, open_page: OpenPage) -> None:
    guarded = open_page(live_server.url)
    page = load(guarded)
    assert page.evaluate(UNLABELLED_CONTROLS) == []
    # each control's accessible name is its label alone (not its value, nor every option of a select)
    expect(page.get_by_role("combobox", name="Model", exact=True)).to_be_enabled()
    for name in ("Temperature", "Max tokens"):
        expect(page.get_by_role("spinbutton", name=name, exact=True)).to_be_editable()
    for name in ("System prompt", "Message"):
        expect(page.get_by_role("textbox", name=name, exact=True)).to_be_editable()
    for name in ("Send", "Stop", "Clear conversation"):
        expect(page.get_by_role("button", name=name, exact=True)).to_be_visible()
    expect(page.get_by_role("textbox", name="Message")).to_have_attribute("aria-describedby", "keys-note")
    expect(page.get_by_role("table")).to_be_visible()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()

    # Tab from the top of the page reaches the message box, without a mouse
    page.get_by_label("Max tokens").fill("6")
    page.get_by_label("Temperature").fill("0")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "prompt":
            break
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    # Shift+Enter is a new line, Enter sends
    page.keyboard.type("Say one word.")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Only one.")
    expect(page.get_by_label("Message", exact=True)).to_have_value("Say one word.\nOnly one.")
    expect(page.locator("#transcript li")).to_have_count(0)
    page.keyboard.press("Enter")
    turn = wait_answer_done(page)
    expect(page.locator("#transcript li.user .text")).to_have_text("Say one word.\nOnly one.")
    expect(turn.locator(".text")).not_to_have_text("")
    # focus comes back to the message box; Tab moves on to Send, and Enter on it sends
    expect(page.get_by_label("Message", exact=True)).to_be_focused()
    page.keyboard.type("And another.")
    page.keyboard.press("Tab")  # the next stop after the message box is the Send button
    expect(page.get_by_role("button", name="Send")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#transcript li.assistant")).to_have_count(2)
    wait_answer_done(page)
    # Escape stops a running answer
    ban_eos(page)
    page.get_by_label("Max tokens").fill("400")
    page.get_by_label("Message", exact=True).fill("Tell me a long story.")
    page.keyboard.press("Enter")
    turn = last_answer(page)
    expect(turn.locator(".text")).not_to_have_text("", timeout=ANSWER_TIMEOUT_MS)
    page.keyboard.press("Escape")
    expect(turn).to_have_attribute("data-outcome", "stopped")


def test_a_phone_renders_without_horizontal_scroll(live_server: LiveServer, open_page: OpenPage) -> None:
    guarded = open_page(live_server.url, **PHONE)
    page = load(guarded)
    width = "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    scroll, client = page.evaluate(width)
    assert client == 375 and scroll <= client, (scroll, client)
    # the table became one card per model, each labelled
    assert page.evaluate("getComputedStyle(document.querySelector('#models tbody tr')).display") == "block"
    caption, table = page.locator("#models caption").bounding_box(), page.locator("#models").bounding_box()
    assert caption is not None and table is not None and caption["width"] >= 0.9 * table["width"], (caption, table)
    expect(cell(page, "smollm2", "State")).to_be_visible()
    # a long unbroken word in the conversation still fits
    ask(page, "x" * 100, max_tokens=4)
    wait_answer_done(page)
    scroll, client = page.evaluate(width)
    assert scroll <= client, (scroll, client)
    for selector in ("#chat", "#models", "#transcript li.user"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= client + 0.5, (selector, box)
    # big enough to tap
    send = page.get_by_role("button", name="Send").bounding_box()
    assert send is not None and send["height"] >= 40
    screenshot(page, "web-page-phone.png")


# ---- offline ------------------------------------------------------------------------------------
def test_the_page_asks_nothing_of_any_host_but_the_server(live_server: LiveServer, open_page: OpenPage) -> None:
    guarded = open_page(live_server.url)
    page = load(guarded)
    ask(page, "Hi", max_tokens=4)
    wait_answer_done(page)
    assert guarded.requests and all(u.startswith(live_server.url + "/") for u in guarded.requests), guarded.requests
    loaded = {u.removeprefix(live_server.url) for u in guarded.requests}
    assert {"/", "/static/app.js", "/static/style.css", "/v1/status", "/v1/chat/completions"} <= loaded
    # the markup names no other origin, and the server sends a CSP that would refuse one
    html = httpx.get(live_server.url + "/", timeout=10)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html.text)
    csp = html.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
    # the page itself cannot reach another origin: its CSP refuses the connection before any request
    other = live_server.url.replace(ALLOWED_HOST, "localhost") + "/v1/status"
    refused = page.evaluate("(url) => fetch(url).then(() => 'fetched', (e) => e.name)", other)
    assert refused == "TypeError"
    assert any("Content Security Policy" in e for e in guarded.console_errors), guarded.console_errors
    assert not any("localhost" in u for u in guarded.requests)
    guarded.console_errors.clear()
    # and the guard works: a navigation to another host name (even one meaning this machine) is aborted
    with pytest.raises(PlaywrightError, match="ERR_BLOCKED_BY_CLIENT"):
        page.goto(other)
    assert guarded.blocked == [other]
    assert guarded.problems() == [f"request for a non-{ALLOWED_HOST} host: {other}"]
    guarded.requests.clear()
    guarded.blocked.clear()
