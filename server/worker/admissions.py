"""What the requests a worker admitted since its last step say, held for one write before the step.

The decode thread admits everything the intake has ready between two steps. Each admission has a
`started` event and the prompt prefixes its slot now holds to write; written one by one, each woke
Redis, the gateway and a client while the next admission ran on the same cores. Held here, they go out
in one outbox write once the batch is in (`Worker._take_new`).

A held `started` must not let a crash be blamed on its request (the poison verdict reads "a running
mark and no event" as "died in its own work"): `passed` names the last request admitted, and the
next admission's running mark records it as passed in the same round trip (`replies.mark_running`).
"""

from __future__ import annotations

from server.queue.replies import Command


class Admissions:
    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.passed: tuple[str, int] | None = None  # (request, attempt) of the last admission held here

    def add(self, request_id: str, attempt: int, commands: list[Command]) -> None:
        """A request got through its own work: what it says, held."""
        self.commands += commands
        self.passed = (request_id, attempt)

    def take(self) -> list[Command]:
        """Everything held (to write now), forgotten here."""
        commands, self.commands = self.commands, []
        self.passed = None
        return commands
