"""The decode loop's step phases (`SLM_TRACE_STEPS`): what each phase measures, and no gap timed across an
idle wait."""

from __future__ import annotations

from server.worker.step_timer import PHASES, StepTimer


class Clocks:
    """A wall clock and a CPU clock that move only when told."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def advance(self, wall: float, cpu: float = 0.0) -> None:
        self.wall += wall
        self.cpu += cpu


def timer(clocks: Clocks) -> tuple[StepTimer, list[tuple[str, float]]]:
    seen: list[tuple[str, float]] = []
    return StepTimer(lambda phase, s: seen.append((phase, round(s, 9))), clock=lambda: clocks.wall,
                     cpu_clock=lambda: clocks.cpu), seen


def test_a_step_is_timed_apart_from_writing_its_events_in_wall_and_cpu_time() -> None:
    clocks = Clocks()
    steps, seen = timer(clocks)
    written: list[str] = []

    def step() -> str:
        clocks.advance(0.006, 0.012)  # two compute threads' CPU is not the decode thread's alone: not counted
        return "outputs"

    def emit(outputs: str) -> None:
        written.append(outputs)
        clocks.advance(0.0004, 0.0001)  # a quarter of it on the core: the rest, others woken ran first

    steps.run(step, emit)
    assert written == ["outputs"]
    assert seen == [("step", 0.006), ("emit", 0.0004), ("emit_cpu", 0.0001)]


def test_the_loop_between_consecutive_steps_is_timed_but_not_an_idle_wait() -> None:
    clocks = Clocks()
    steps, seen = timer(clocks)

    def step() -> None:
        clocks.advance(0.005)

    steps.run(step, lambda _outputs: clocks.advance(0.0003))
    clocks.advance(0.0002)  # answers read, admissions: the loop between two steps
    steps.run(step, lambda _outputs: None)
    assert [s for phase, s in seen if phase == "between"] == [0.0002]
    steps.idle()  # the engine ran dry: the next request comes whenever it comes
    clocks.advance(3.0)
    steps.run(step, lambda _outputs: None)
    assert [s for phase, s in seen if phase == "between"] == [0.0002]
    assert {phase for phase, _ in seen} == set(PHASES)
