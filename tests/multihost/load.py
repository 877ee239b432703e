"""A steady load of streamed chat requests from the client host (the official `openai` client),
each outcome counted.

Every request is temperature 0 and one of a few prompts whose answer is known from a clean run
(`references`), so an answer that is not exactly that answer was spliced (text of two attempts)
or duplicated. Outcomes: `completed` (the whole known answer, `[DONE]`), `error` (a clean error: an
HTTP error in the OpenAI envelope, or an error frame then `[DONE]`), `hung` (no byte for
`READ_TIMEOUT_S`), `broken` (the connection died without a clean end), `spliced`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai

from tests.multihost import netns

PROMPTS = ["Name a bird.", "Name a colour.", "Say hello.", "Name a fruit."]
MAX_TOKENS = 24
RETRY_AFTER_S = 1.0  # what the gateway's 503 / 429 ask for
READ_TIMEOUT_S = 20.0  # far above any pause the faults may cause (stall timeout 8 s, lease 5 s)


@dataclass
class Outcome:
    gateway: str
    prompt: str
    started: float
    ended: float = 0.0
    kind: str = ""
    text: str = ""
    detail: str = ""


def ask(client: openai.OpenAI, url: str, prompt: str) -> Outcome:
    """One streamed request through the official client, classified (the reference check is `Load`'s)."""
    out = Outcome(url, prompt, time.monotonic())
    finish = ""
    try:
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=MAX_TOKENS, temperature=0, stream=True)
        for chunk in stream:
            for choice in chunk.choices:
                out.text += choice.delta.content or ""
                finish = choice.finish_reason or finish
    except openai.APITimeoutError:
        out.kind, out.detail = "hung", f"no byte for {READ_TIMEOUT_S}s"
    except openai.APIConnectionError as exc:
        out.kind, out.detail = "broken", type(exc.__cause__ or exc).__name__
    except openai.APIStatusError as exc:  # refused before the stream began: the OpenAI envelope
        error = exc.body if isinstance(exc.body, dict) else {}
        out.kind = "error" if error.get("message") else "broken"
        out.detail = f"{exc.status_code} {error.get('code')}"
    except openai.APIError as exc:  # an error frame in the stream
        out.kind, out.detail = "error", f"frame {exc.code}"
    out.ended = time.monotonic()
    if not out.kind:
        out.kind = "completed" if finish in ("stop", "length") else "broken"
        out.detail = "" if out.kind == "completed" else f"finish {finish!r}"
    return out


def official_client(url: str) -> openai.OpenAI:
    """No retries of its own (each outcome is counted as it came) and a read timeout that marks a hang."""
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=READ_TIMEOUT_S)


@dataclass
class Load:
    """`per_gateway` client threads per gateway on the client host, each asking one request after another."""

    namespace: str
    gateways: list[str]
    references: dict[str, str]
    per_gateway: int = 2
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for index in range(self.per_gateway * len(self.gateways)):
            url = self.gateways[index % len(self.gateways)]
            thread = threading.Thread(target=self._client, args=(url, index), name=f"load-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _client(self, url: str, index: int) -> None:
        netns.enter(self.namespace)
        with official_client(url) as client:
            turn = index
            while not self._stop.is_set():
                prompt = PROMPTS[turn % len(PROMPTS)]
                turn += 1
                out = ask(client, url, prompt)
                if out.kind == "completed" and out.text != self.references[prompt]:
                    out.kind, out.detail = "spliced", out.text
                with self._lock:
                    self.outcomes.append(out)
                if out.kind == "error" and out.detail.startswith(("503", "429")):
                    self._stop.wait(RETRY_AFTER_S)  # a client honouring Retry-After, as the official ones do

    def stop(self) -> list[Outcome]:
        """Ask no more; wait for what is in flight (each ends within the read timeout)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(READ_TIMEOUT_S * 3)
        assert not any(t.is_alive() for t in self._threads), "a client thread never came back"
        return list(self.outcomes)

    def wait_for(self, count: int, timeout_s: float) -> None:
        """Until `count` requests have ended (the load's own pace, not a sleep)."""
        deadline = time.monotonic() + timeout_s
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(self.outcomes)} of {count} requests ended in {timeout_s}s"
            time.sleep(0.05)  # polling interval


def counts(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(o.kind for o in outcomes)


def recovery_s(outcomes: list[Outcome], fault_at: float) -> float:
    """From the fault to the first request asked after it that was answered completely."""
    after = [o.ended for o in outcomes if o.started >= fault_at and o.kind == "completed"]
    return min(after) - fault_at if after else float("inf")


_EVAL = re.compile(r'"2" "slm:resp:([^"]+)" "slm:running:[^"]+" "(\d+)"')
_XADD = re.compile(r'"XADD" "slm:resp:([^"]+)" "(?:\*|\d+-\d+)" "e" "(.*)"$')
_ATTEMPT = re.compile(r'\\"attempt\\":(\d+)')


@dataclass
class Publications:
    """What the master executed (its MONITOR log): for each response stream, the attempts of the
    events written into it, in order, and how many writes the fence turned away."""

    written: dict[str, list[int]] = field(default_factory=dict)
    offered: int = 0
    fenced: int = 0

    @classmethod
    def read(cls, log: Path) -> Publications:
        found = cls()
        for line in log.read_text(errors="replace").splitlines():
            offer = _EVAL.search(line)
            if offer:
                found.offered += 1
                continue
            wrote = _XADD.search(line)
            if wrote:
                attempt = _ATTEMPT.search(wrote.group(2))
                found.written.setdefault(wrote.group(1), []).append(int(attempt.group(1)) if attempt else 0)
        found.fenced = found.offered - sum(len(v) for v in found.written.values())
        return found

    def stale_writes(self) -> int:
        """Events of an attempt older than one already written to the same stream (a cut-off worker
        writing into a stream another worker owns): must be 0."""
        stale = 0
        for attempts in self.written.values():
            top = 0
            for attempt in attempts:
                if attempt < top:
                    stale += 1
                top = max(top, attempt)
        return stale
