"""The gateway's view of the fair queue: the drain rate it measures, what a request of a class waits
behind (what a router's TTFT prediction counts), and the policy's FIFO switch."""

from __future__ import annotations

from server.metrics import Metrics
from server.serving.queue_view import FairQueueing, QueueView
from server.serving.routing import LocalLoad, Speed, predict_local
from server.settings import Settings


def test_the_drain_rate_is_the_growth_of_taken_jobs_and_an_idle_queue_says_nothing() -> None:
    view = QueueView()
    view.update("m", {"5": 10}, 100, now=0.0)
    assert view.drain_per_s("m") == 0.0 and view.wait_ms("m", 3) is None
    view.update("m", {"5": 6}, 104, now=1.0)
    assert view.drain_per_s("m") == 4.0
    assert view.wait_ms("m", 2) == 500
    view.update("m", {}, 104, now=2.0)  # idle: no sample
    assert view.drain_per_s("m") == 4.0


def test_a_request_waits_behind_its_own_class_and_higher_only() -> None:
    view = QueueView()
    view.update("m", {"2": 40, "5": 3, "8": 1}, 0, now=0.0)
    assert view.ahead_of("m", 8) == 1
    assert view.ahead_of("m", 5) == 4
    assert view.ahead_of("m", 2) == 44


def test_a_router_predicts_a_shorter_wait_for_a_higher_class() -> None:
    fair = FairQueueing(Settings(queue_policy="fair"))
    fair.observe({"m": ({"2": 40, "8": 1}, 0)}, 0.0, Metrics())
    speed = Speed()
    speed.service.add(1.0)
    speed.ttft.add(0.1)

    def predicted(priority: int) -> float:
        return predict_local(LocalLoad(slots=2, depth=2 + fair.ahead_of("m", priority)), speed, [], 0.0)

    assert predicted(8) < 1.0 < 10.0 < predicted(2)


def test_fifo_admits_onto_the_stream_and_counts_nothing_ahead() -> None:
    fifo = FairQueueing(Settings(queue_policy="fifo"))
    assert fifo.admission("m", "k") is None
    fifo.view.update("m", {"5": 9}, 0, now=0.0)
    assert fifo.ahead_of("m", 5) == 0
    fair = FairQueueing(Settings(queue_policy="fair", queue_key_share=0.5))
    found = fair.admission("m", "k")
    assert found is not None and found.share == 0.5 and found.weight == 1.0
