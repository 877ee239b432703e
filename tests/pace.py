"""How many tokens a generation needs to last a given time on this machine as loaded now.

A test whose request must keep a slot busy while something else happens (a queued request's deadline
passes, hostile requests are refused) used to ask for a fixed, large `max_tokens`: enough on a fast
machine, minutes on a loaded one. `tokens_lasting` asks the worker for a few tokens of the same prompt
and reads its measured pace from `timings` (generation only, the prompt excluded)."""

from __future__ import annotations

import math
from typing import Any

import httpx


def tokens_lasting(url: str, body: dict[str, Any], seconds: float, *, low: int, high: int,
                   headers: dict[str, str] | None = None) -> int:
    """`max_tokens` for which the chat request `body` generates for about `seconds` at the pace the
    worker measures now (a short non-streamed run of the same request), within [low, high]."""
    probe = {**body, "stream": False, "max_tokens": 8}
    probe.pop("stream_options", None)
    reply = httpx.post(url + "/v1/chat/completions", json=probe, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text
    timings = reply.json()["timings"]
    per_token_s = float(timings["predicted_ms"]) / 1000.0 / max(1, int(timings["predicted_n"]))
    return max(low, min(high, math.ceil(seconds / max(per_token_s, 1e-6))))
