"""The cohort wait of an idle decode thread: bounded, only after a step that ended several requests."""

from __future__ import annotations

import pytest

from server.worker.cohort import Cohort


def test_after_a_cohort_ended_the_first_newcomer_waits_for_the_others_at_most_the_window() -> None:
    cohort = Cohort(gather_s=0.005)
    cohort.ended(3, idle=True)
    cohort.first_arrived(now=10.0)
    assert cohort.wait_s(now=10.001) == pytest.approx(0.004)
    cohort.arrived()
    assert cohort.wait_s(now=10.002) == pytest.approx(0.003)
    cohort.arrived()  # all three back: step now
    assert cohort.wait_s(now=10.002) is None


def test_the_window_closes_even_when_the_others_never_come() -> None:
    cohort = Cohort(gather_s=0.005)
    cohort.ended(8, idle=True)
    cohort.first_arrived(now=10.0)
    assert cohort.wait_s(now=10.006) is None
    assert cohort.wait_s(now=10.007) is None


@pytest.mark.parametrize(("count", "idle"), [(1, True), (4, False)])
def test_no_wait_for_a_lone_request_or_while_others_decode(count: int, idle: bool) -> None:
    cohort = Cohort()
    cohort.ended(count, idle=idle)
    cohort.first_arrived(now=10.0)
    assert cohort.wait_s(now=10.0) is None


def test_a_cohort_that_did_not_come_back_within_the_idle_wait_is_forgotten() -> None:
    cohort = Cohort()
    cohort.ended(4, idle=True)
    cohort.idle_tick()
    cohort.first_arrived(now=10.0)
    assert cohort.wait_s(now=10.0) is None
