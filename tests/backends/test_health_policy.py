"""The hosted upstream circuit's state machine, on an injected clock (no sleeps), and what counts as down."""

from __future__ import annotations

import pytest

from server.backends.health import COOL_DOWN_S, FAILURES_TO_OPEN, HealthPolicy, UpstreamHealth
from server.backends.upstream import UpstreamFailure
from server.errors import ServiceUnavailableError, UpstreamError, UpstreamUnavailableError
from server.serving.routing import UNREACHABLE, Speed, predict_hosted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[bool]:
    return []


@pytest.fixture
def health(clock: Clock, changes: list[bool]) -> UpstreamHealth:
    return UpstreamHealth("big", HealthPolicy(failures_to_open=3, cool_down_s=10.0), clock=clock,
                          on_change=changes.append)


def refusal(health: UpstreamHealth) -> UpstreamUnavailableError:
    assert not health.admits_now()
    with pytest.raises(UpstreamUnavailableError) as info:
        health.admit()
    return info.value


def open_it(health: UpstreamHealth) -> None:
    for _ in range(health.policy.failures_to_open):
        assert health.admit() is False
        health.failed()
    assert health.state == "open"


def test_the_defaults_are_the_documented_ones() -> None:
    assert (FAILURES_TO_OPEN, COOL_DOWN_S) == (3, 10.0)
    assert HealthPolicy() == HealthPolicy(failures_to_open=FAILURES_TO_OPEN, cool_down_s=COOL_DOWN_S)


def test_it_opens_after_n_consecutive_failures_only(health: UpstreamHealth, changes: list[bool]) -> None:
    for _ in range(2):
        assert health.admit() is False
        health.failed()
    assert health.state == "closed" and health.up and health.failures == 2
    health.succeeded()  # a success resets the count
    assert health.failures == 0
    for _ in range(2):
        health.failed()
    assert health.state == "closed" and changes == []
    health.failed()
    assert health.state == "open" and not health.up
    assert changes == [False]


def test_an_open_circuit_refuses_with_a_503_until_the_cool_down_is_over(
        health: UpstreamHealth, clock: Clock) -> None:
    open_it(health)
    error = refusal(health)
    assert isinstance(error, ServiceUnavailableError)
    assert error.status == 503 and error.code == "upstream_unavailable"
    assert error.to_body()["error"]["type"] == "service_unavailable"
    assert "'big' is unreachable upstream" in error.message and "10s" in error.message
    assert error.headers() == {"Retry-After": "10"}
    clock.now += 9.5
    assert health.retry_after_s() == pytest.approx(0.5)
    assert refusal(health).headers() == {"Retry-After": "1"}  # never less than a second
    clock.now += 0.5
    assert health.admits_now()
    assert health.state == "open"  # asking changes nothing


def test_the_trial_is_let_through_alone_and_its_success_closes(
        health: UpstreamHealth, clock: Clock, changes: list[bool]) -> None:
    open_it(health)
    clock.now += 10.0
    assert health.admit() is True
    assert health.state == "half_open" and not health.up
    assert "a trial request is checking it now" in refusal(health).message  # one trial at a time
    health.succeeded()
    assert health.state == "closed" and health.up and health.failures == 0
    assert health.admit() is False
    assert changes == [False, True]


def test_a_failed_trial_reopens_for_a_fresh_cool_down(
        health: UpstreamHealth, clock: Clock, changes: list[bool]) -> None:
    open_it(health)
    clock.now += 15.0
    assert health.admit() is True
    clock.now += 3.0  # the trial took a while to fail
    health.failed(trial=True)
    assert health.state == "open"
    assert health.retry_after_s() == pytest.approx(10.0)  # counted from the trial's failure
    clock.now += 9.9
    refusal(health)
    clock.now += 0.1
    assert health.admit() is True
    assert changes == [False]  # still down: no second change reported


def test_an_abandoned_trial_lets_the_next_request_be_the_trial(health: UpstreamHealth, clock: Clock) -> None:
    open_it(health)
    clock.now += 10.0
    assert health.admit() is True
    health.abandoned(trial=True)  # e.g. no concurrency slot, or the client left first
    assert health.state == "open" and health.admits_now()
    assert health.admit() is True


def test_abandoning_a_request_that_was_not_the_trial_changes_nothing(health: UpstreamHealth, clock: Clock) -> None:
    open_it(health)
    clock.now += 10.0
    assert health.admit() is True
    health.abandoned()  # a request let through before the circuit opened
    assert health.state == "half_open"


def test_late_outcomes_of_requests_let_through_before_it_opened(
        health: UpstreamHealth, clock: Clock, changes: list[bool]) -> None:
    open_it(health)
    clock.now += 5.0
    health.failed()  # a slow one that was already on its way: counted, the cool-down not extended
    assert health.failures == 4 and health.retry_after_s() == pytest.approx(5.0)
    health.succeeded()  # any answer is proof the upstream is reachable
    assert health.state == "closed"
    assert changes == [False, True]


def test_a_trial_failure_after_another_request_closed_the_circuit_is_one_failure(
        health: UpstreamHealth, clock: Clock) -> None:
    open_it(health)
    clock.now += 10.0
    assert health.admit() is True
    health.succeeded()  # an older request answered first
    health.failed(trial=True)
    assert health.state == "closed" and health.failures == 1


@pytest.mark.parametrize("policy", [dict(failures_to_open=0), dict(cool_down_s=-1.0),
                                    dict(cool_down_s=float("inf"))])
def test_a_bad_policy_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid upstream health policy"):
        HealthPolicy(**policy)  # type: ignore[arg-type]


@pytest.mark.parametrize(("label", "down"), [
    ("connection", True), ("timeout", True), ("unknown", True), ("500", True), ("502", True), ("503", True),
    ("429", False), ("400", False), ("401", False), ("403", False), ("404", False),
    ("truncated", False), ("stream_broken", False),
])
def test_what_counts_as_the_upstream_being_down(label: str, down: bool) -> None:
    assert UpstreamFailure(UpstreamError("x"), label, False).upstream_down is down


def test_a_router_predicts_an_unreachable_hosted_target_as_unreachable() -> None:
    speed = Speed()
    speed.ttft.add(0.4)
    assert predict_hosted(speed, has_free_slot=True, reachable=True) == pytest.approx(0.4)
    assert predict_hosted(speed, has_free_slot=True, reachable=False) == UNREACHABLE
