"""The eviction policy: least recently used idle unpinned models make room; idle ones unload."""

from __future__ import annotations

from server.residency.policy import Candidate, evictable, idle_expired, in_use, make_room

GIB = 1024**3


def model(name: str, *, cost: int = GIB, resident: bool = True, idle: bool = True, pinned: bool = False,
          last_used: float = 0.0, idle_unload_s: float | None = None) -> Candidate:
    return Candidate(name=name, cost=cost, resident=resident, ready=resident, idle=idle, pinned=pinned,
                     last_used=last_used, idle_unload_s=idle_unload_s)


def test_fits_without_evicting() -> None:
    assert make_room(GIB, 3 * GIB, [model("a"), model("b", resident=False)]) == []


def test_the_least_recently_used_goes_first() -> None:
    models = [model("a", last_used=30), model("b", last_used=10), model("c", last_used=20)]
    assert make_room(GIB, 3 * GIB, models) == ["b"]
    assert make_room(2 * GIB, 3 * GIB, models) == ["b", "c"]


def test_pinned_and_busy_models_are_never_chosen() -> None:
    models = [model("pinned", last_used=1, pinned=True), model("busy", last_used=2, idle=False),
              model("idle", last_used=3)]
    assert [m.name for m in evictable(models)] == ["idle"]
    assert make_room(GIB, 3 * GIB, models) == ["idle"]
    assert make_room(2 * GIB, 3 * GIB, models) is None  # only one can go: no room, the request waits


def test_a_loading_model_counts_but_cannot_be_chosen() -> None:
    loading = Candidate(name="l", cost=GIB, resident=True, ready=False, idle=True, pinned=False, last_used=0)
    assert make_room(GIB, 2 * GIB, [loading, model("a", last_used=5)]) == ["a"]
    assert make_room(2 * GIB, 2 * GIB, [loading, model("a", last_used=5)]) is None


def test_room_a_draining_model_is_freeing_is_waited_for_not_taken_from_another() -> None:
    draining = Candidate(name="d", cost=GIB, resident=True, ready=False, idle=True, pinned=False, last_used=0,
                         draining=True)
    models = [draining, model("a", last_used=5)]
    assert make_room(GIB, 2 * GIB, models) == []  # nothing more to stop: wait for `d` to exit
    assert in_use(models) + GIB > 2 * GIB  # ... which the caller sees: not yet
    assert make_room(2 * GIB, 2 * GIB, models) == ["a"]


def test_idle_models_past_their_time_unload_others_stay() -> None:
    now = 1000.0
    models = [model("old", last_used=now - 61, idle_unload_s=60), model("recent", last_used=now - 10, idle_unload_s=60),
              model("never", last_used=0, idle_unload_s=None), model("busy", last_used=0, idle=False, idle_unload_s=1),
              model("gone", resident=False, last_used=0, idle_unload_s=1)]
    assert idle_expired(models, now) == ["old"]
