"""Prompt and completion text in the logs, only when `SLM_LOG_PROMPTS` is on (off by default: what
goes through a self-hosted server is often private).

The route opens a `Transcript` for a request (which logs the prompt) and passes it in the request's
`RequestContext` (`server.serving.context`); the serving layer's tracker adds each piece of text it
hands out and closes it when the generation ends (which logs the completion). With the setting off
the context has no transcript and nothing is kept or logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("slm.prompts")


class Transcript:
    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def close(self, outcome: str) -> None:
        """Log the completion; each attempt at serving the request (a fallback's too) logs its end."""
        log.info("completion model=%s outcome=%s text=%s", self.model, outcome,
                 json.dumps("".join(self.parts), ensure_ascii=False))


def open_transcript(model: str, prompt: Any) -> Transcript:
    """Log the prompt (messages, prompt text or embedding input) and keep the completion's text."""
    log.info("prompt model=%s prompt=%s", model, json.dumps(prompt, ensure_ascii=False, default=str))
    return Transcript(model)

