"""Turn a sequence's token bytes into text deltas: UTF-8 safe, stop sequences honoured.

Text that might be the start of a stop sequence is held back until it is known not to be one,
so a stop string never reaches the client, not even in part.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop sequence that ended the text, once one did

    def push(self, data: bytes) -> str:
        """Add a token's bytes; return the text now safe to send (may be empty)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stops:
            self._held = ""
            return text
        found = [(i, -len(s), s) for s in self._stops if (i := text.find(s)) >= 0]
        if found:
            cut, _, self.matched = min(found)  # the earliest; at one place the longest
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """The text still held when the sequence ends without a stop sequence."""
        if self.stopped:
            return ""
        tail = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return tail
