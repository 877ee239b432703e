"""What one worker holds, shared by its threads under one lock.

    held        request id -> its stream (the model's shared one or a worker's own) and entry there,
                from the moment the intake thread takes it until it is acknowledged: the keep-alive
                thread renews the lease of each
    cancels     request ids whose client went away, found by the keep-alive thread and acted on
                by the decode thread between two steps
"""

from __future__ import annotations

import threading


class Holdings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, str]] = {}
        self._cancels: set[str] = set()

    def hold(self, request_id: str, stream: str, entry_id: str) -> None:
        with self._lock:
            self._held[request_id] = (stream, entry_id)

    def release(self, request_id: str) -> None:
        with self._lock:
            self._held.pop(request_id, None)
            self._cancels.discard(request_id)

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._cancels.clear()

    def snapshot(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            return dict(self._held)

    def entries_by_stream(self) -> dict[str, list[str]]:
        """What is held, as entry ids per stream (one `XCLAIM` each renews their leases)."""
        out: dict[str, list[str]] = {}
        for stream, entry_id in self.snapshot().values():
            out.setdefault(stream, []).append(entry_id)
        return out

    def flag_cancelled(self, request_ids: list[str]) -> None:
        with self._lock:
            self._cancels.update(r for r in request_ids if r in self._held)

    def take_cancelled(self) -> frozenset[str]:
        """Called by the decode thread every step: the usual empty answer takes no lock and makes nothing."""
        if not self._cancels:
            return frozenset()
        with self._lock:
            taken = frozenset(self._cancels)
            self._cancels.clear()
        return taken
