"""The router's prediction, on numbers: slots, backlog, measured speeds, escalation and the choice."""

from __future__ import annotations

import math

import pytest

from server.registry import EscalationRule
from server.serving.routing import (
    COLD_LOAD_S,
    Ewma,
    LocalLoad,
    Measurements,
    Pending,
    Speed,
    Traits,
    choose,
    escalation,
    estimate_tokens,
    predict_cold,
    predict_hosted,
    predict_local,
)


def speed(ttft: float | None = None, per_token: float | None = None, service: float | None = None) -> Speed:
    out = Speed()
    for ewma, value in ((out.ttft, ttft), (out.per_token, per_token), (out.service, service)):
        if value is not None:
            ewma.add(value)
    return out


def test_ewma_starts_at_the_first_sample_then_moves_by_alpha() -> None:
    ewma = Ewma(alpha=0.5)
    assert ewma.value is None
    ewma.add(2.0)
    assert ewma.value == 2.0
    ewma.add(4.0)
    assert ewma.value == 3.0
    ewma.add(-1.0)  # a clock step backwards is no negative duration
    assert ewma.value == 1.5


def test_a_free_slot_predicts_the_measured_ttft() -> None:
    assert predict_local(LocalLoad(slots=4, depth=3), speed(ttft=0.2, service=5.0), [], now=0.0) == 0.2


def test_an_unmeasured_idle_model_is_predicted_to_meet_any_objective() -> None:
    assert predict_local(LocalLoad(slots=1, depth=0), Speed(), [], now=0.0) == 0.0


def test_no_worker_is_unreachable() -> None:
    assert predict_local(LocalLoad(slots=0, depth=0), speed(ttft=0.1), [], now=0.0) == math.inf


def test_full_slots_wait_for_the_soonest_own_request_to_end() -> None:
    # two slots, both held by our requests: expected 10 s and 4 s, started at t=0 and t=1; now t=3
    pending = [Pending(10.0, started_at=0.0), Pending(4.0, started_at=1.0)]
    predicted = predict_local(LocalLoad(slots=2, depth=2), speed(ttft=0.5), pending, now=3.0)
    assert predicted == pytest.approx(2.0 + 0.5)  # the second frees at 1 + 4 = 5, two seconds from now


def test_queued_requests_go_first_fifo() -> None:
    # one slot, held 3 s more; two of ours queued (2 s each): the new one starts after 3 + 2 + 2
    pending = [Pending(5.0, started_at=0.0), Pending(2.0), Pending(2.0)]
    predicted = predict_local(LocalLoad(slots=1, depth=3), speed(ttft=0.1), pending, now=2.0)
    assert predicted == pytest.approx(7.0 + 0.1)


def test_requests_of_other_gateways_take_the_measured_service_time() -> None:
    # depth 3 in Redis, none ours, two slots: two may be running (half done), one queued (a full 4 s)
    predicted = predict_local(LocalLoad(slots=2, depth=3), speed(ttft=0.25, service=4.0), [], now=0.0)
    assert predicted == pytest.approx(2.0 + 0.25)  # slots free at 2 and 2; the queued one takes 2 -> 6, we 2


def test_a_request_past_its_expected_time_frees_its_slot_now_at_best() -> None:
    pending = [Pending(1.0, started_at=0.0)]
    assert predict_local(LocalLoad(slots=1, depth=1), speed(ttft=0.3), pending, now=5.0) == pytest.approx(0.3)


def test_expected_service_uses_max_tokens_when_bounded_else_the_measured_service() -> None:
    measured = speed(ttft=0.2, per_token=0.01, service=3.0)
    assert measured.expected_service(500) == pytest.approx(0.2 + 5.0)
    assert measured.expected_service(None) == 3.0
    assert speed(service=3.0).expected_service(500) == 3.0  # no decode speed yet
    assert Speed().expected_service(None) == 0.0


def test_hosted_predicts_its_measured_ttft_while_it_has_room() -> None:
    assert predict_hosted(Speed(), has_free_slot=True) == 0.0
    assert predict_hosted(speed(ttft=0.7), has_free_slot=True) == 0.7
    assert predict_hosted(speed(ttft=0.7), has_free_slot=False) == math.inf
    assert predict_hosted(speed(ttft=0.7), has_free_slot=True, can_serve=False) == math.inf


def test_choose_takes_the_first_target_that_meets_the_objective_else_the_last() -> None:
    targets = ["small", "medium", "big"]
    route = choose(targets, {"small": 1.5, "medium": 0.9, "big": 0.2}, objective_s=1.0)
    assert (route.model, route.reason, route.predicted_s) == ("medium", "objective", 0.9)
    assert choose(targets, {"small": 1.0, "medium": 0.0, "big": 0.0}, 1.0).model == "small"  # "meets" includes equal
    route = choose(targets, {"small": 9.0, "medium": math.inf, "big": 3.0}, objective_s=1.0)
    assert (route.model, route.reason) == ("big", "last_target")


def test_escalation_takes_the_first_rule_whose_every_condition_holds() -> None:
    rules = [EscalationRule(to="tool-model", tools=True),
             EscalationRule(to="long-tools", tools=True, prompt_tokens_over=100),
             EscalationRule(to="long-model", prompt_tokens_over=100)]
    assert escalation(rules, Traits(prompt_tokens=10, tools=False)) is None
    assert escalation(rules, Traits(prompt_tokens=10, tools=True)) == "tool-model"
    assert escalation(rules, Traits(prompt_tokens=101, tools=False)) == "long-model"
    assert escalation(rules, Traits(prompt_tokens=100, tools=False)) is None  # "over" is strictly over
    assert escalation(rules[1:], Traits(prompt_tokens=500, tools=True)) == "long-tools"


def test_prompt_tokens_are_estimated_at_four_characters_each() -> None:
    assert (estimate_tokens(0), estimate_tokens(4), estimate_tokens(5)) == (0, 1, 2)


def test_measurements_track_pending_requests_and_learn_from_finished_ones() -> None:
    now = [100.0]
    m = Measurements(clock=lambda: now[0])
    first = m.open("tiny", max_tokens=None)
    assert first.expected_s == 0.0 and m.pending("tiny") == [first]
    m.started(first)
    now[0] = 102.0
    m.observe_local("tiny", first, ttft_s=0.9, queue_s=0.5, completion_tokens=40, generation_s=1.0)
    m.close("tiny", first)
    m.close("tiny", first)  # closing twice is harmless
    assert m.pending("tiny") == []
    s = m.speed("tiny")
    assert (s.ttft.value, s.per_token.value, s.service.value) == (pytest.approx(0.4), 0.025, 2.0)
    second = m.open("tiny", max_tokens=100)
    assert second.expected_s == pytest.approx(0.4 + 2.5)
    m.observe_hosted("big", 0.8)
    assert m.speed("big").ttft.value == 0.8
    m.forget("tiny")
    assert m.speed("tiny").ttft.value is None and m.pending("tiny") == [second]


def test_a_cold_target_is_predicted_at_its_measured_load_time_plus_its_ttft() -> None:
    assert predict_cold(4.0, speed(ttft=0.5)) == 4.5
    assert predict_cold(4.0, speed()) == 4.0
    assert predict_cold(None, speed(ttft=0.5)) == COLD_LOAD_S + 0.5  # never loaded here: a long default


def test_a_warm_target_meeting_the_objective_is_chosen_while_the_cold_first_one_loads() -> None:
    predicted = {"cold": predict_cold(3.0, speed(ttft=0.2)),
                 "warm": predict_local(LocalLoad(slots=4, depth=0), speed(ttft=0.4), [], 0.0)}
    assert choose(["cold", "warm"], predicted, objective_s=1.0).model == "warm"
    assert choose(["cold", "warm"], predicted, objective_s=5.0).model == "cold"  # loading fits the objective
