"""The TTFT stage breakdown of a traced request (SLM_TRACE_STAGES): consecutive marks, in order."""

from __future__ import annotations

import pytest

from server.serving.stages import STAGES, breakdown

MARKS = {"submitted": 100.002, "read": 100.003, "admitted": 100.010, "added": 100.011, "batch_wait_ms": 4.0,
         "first_token": 100.060, "first_read": 100.061}


def test_the_stages_are_the_gaps_between_marks_and_add_up_to_the_ttft() -> None:
    stages = breakdown(MARKS, arrived=100.0, first_chunk=100.0615)
    assert stages is not None and list(stages) == list(STAGES)
    assert stages["gateway_in"] == pytest.approx(0.002)
    assert stages["handoff"] == pytest.approx(0.007)
    assert stages["batch_wait"] == pytest.approx(0.004)
    assert stages["prefill"] == pytest.approx(0.045)
    assert stages["gateway_out"] == pytest.approx(0.0005)
    assert sum(stages.values()) == pytest.approx(0.0615)


def test_a_batch_wait_past_the_first_token_is_cut_there() -> None:
    stages = breakdown({**MARKS, "batch_wait_ms": 80.0}, arrived=100.0, first_chunk=100.07)
    assert stages is not None
    assert stages["prefill"] == 0.0 and stages["batch_wait"] == pytest.approx(0.049)


@pytest.mark.parametrize("missing", ["read", "first_token", "first_read", "batch_wait_ms"])
def test_a_missing_mark_gives_no_breakdown(missing: str) -> None:
    marks = {k: v for k, v in MARKS.items() if k != missing}
    assert breakdown(marks, arrived=100.0, first_chunk=100.07) is None
