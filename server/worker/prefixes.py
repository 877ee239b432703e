"""What a worker's slots hold, published for the gateway's cache-aware dispatch (`queue/affinity.py`).

Each admission replaces its slot's prompt-prefix fingerprints; the whole set goes to
`keys.worker_prefixes(worker)` (replaced, expiring with the heartbeat, which renews it) through the
outbox, so it is in Redis before the request's `started` event, and so before any follow-up turn.
With it goes how many slots keep a conversation worth finding again (`kept` in the worker's info hash):
the gateway sends a new conversation to a worker with a slot keeping nothing rather than let it
overwrite one of these (`affinity.ADMIT`). Owned by the decode thread.
"""

from __future__ import annotations

from server.queue import affinity, keys
from server.queue.messages import Job
from server.queue.replies import Command


class SlotPrefixes:
    def __init__(self, worker_id: str, ttl_s: float) -> None:
        self.key = keys.worker_prefixes(worker_id)
        self.info_key = keys.worker_info(worker_id)
        self.ttl_s = max(2, int(ttl_s))
        self.slots: dict[int, list[affinity.Prefix]] = {}

    def moved(self, source: int, target: int) -> None:
        """The engine copied slot `source`'s cache into `target` (out of a new prompt's way,
        `BatchEngine.take_moves`): `target` now holds what `source` held, and `target`'s own is gone."""
        held = self.slots.pop(source, None)
        if held is None:
            self.slots.pop(target, None)
        else:
            self.slots[target] = held

    def admitted(self, slot: int, job: Job) -> list[Command]:
        """The slot now holds `job`'s prompt: the commands that publish what every slot holds, and how many
        slots keep something (the info hash expires as the heartbeat leaves it: a worker gone stops renewing it)."""
        self.slots[slot] = affinity.fingerprints(job)
        held = sorted(affinity.held(self.slots))
        commands: list[Command] = [("DEL", self.key)]
        if held:
            commands += [("SADD", self.key, *held), ("EXPIRE", self.key, self.ttl_s)]
        kept = sum(1 for prefixes in self.slots.values() if prefixes)
        return [*commands, ("HSET", self.info_key, "kept", kept), ("EXPIRE", self.info_key, self.ttl_s)]
