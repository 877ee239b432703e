"""The five faults of many machines, each under a steady load of streamed requests from a third host.

One rig (`rig.py`) serves the module; each test injects its fault, heals it, and asserts the counts:
hung 0, spliced or duplicated 0, every request answered or refused cleanly. The table of all five is
printed at the end of the module (and written to `SLM_MULTIHOST_REPORT` when that names a file).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.multihost import netns
from tests.multihost.load import PROMPTS, Load, Outcome, Publications, ask, counts, official_client, recovery_s
from tests.multihost.rig import LEASE_S, Rig, backend_ip

pytestmark = [pytest.mark.multihost, pytest.mark.integration, pytest.mark.timeout(240)]


@dataclass
class Row:
    fault: str
    requests: int
    completed: int
    errors: int
    hung: int
    spliced: int
    recover_s: float
    not_completed: str = ""


ROWS: list[Row] = []


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Rig]:
    reason = netns.lacking()
    if reason:
        pytest.skip(f"multihost tests skipped: {reason}")
    built = Rig(tmp_path_factory.mktemp("multihost"))
    try:
        built.up()
        yield built
    finally:
        built.down()
        leftovers = [n for n in netns.namespaces() if n.startswith(built.tag)]
        assert not leftovers, f"namespaces left behind: {leftovers}"
        _report(request)


def _report(request: pytest.FixtureRequest) -> None:
    if not ROWS:
        return
    lines = ["| fault | requests | completed | clean errors | hung | spliced | time to recover | not completed |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.requests} | {r.completed} | {r.errors} | {r.hung} | {r.spliced} | "
              f"{r.recover_s:.2f} s | {r.not_completed} |" for r in ROWS]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
    target = os.environ.get("SLM_MULTIHOST_REPORT")
    if target:
        Path(target).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def references(rig: Rig) -> dict[str, str]:
    """Each prompt's temperature-0 answer, from a clean run through one gateway."""
    def clean() -> dict[str, str]:
        with official_client(rig.gateway_url("gw2")) as client:
            answers = {p: ask(client, rig.gateway_url("gw2"), p) for p in PROMPTS}
        assert all(a.kind == "completed" and a.text for a in answers.values()), answers
        return {p: a.text for p, a in answers.items()}
    return netns.run_in(rig.ns("client"), clean)


def under_load(rig: Rig, references: dict[str, str], fault: str, inject: Callable[[], None],
               heal: Callable[[], None], *, watch: bool = False) -> tuple[list[Outcome], float, Publications | None]:
    """Steady load; `inject` once a few requests went through; `heal`; the rig whole again; a few more."""
    rig.wait_ready(timeout_s=60)
    monitor = None
    if watch:
        master_host = next(h for h in ("redis1", "redis2") if backend_ip(h) == rig.master_address())
        monitor = rig.start(master_host, "monitor", ["redis-cli", "-p", "6379", "monitor"])
    load = Load(rig.ns("client"), [rig.gateway_url("gw1"), rig.gateway_url("gw2")], references)
    load.start()
    load.wait_for(4, timeout_s=60)
    fault_at = time.monotonic()
    inject()
    heal()
    rig.wait_ready(timeout_s=60)
    load.wait_for(len(load.outcomes) + 6, timeout_s=90)
    outcomes = load.stop()
    published = None
    if monitor is not None:
        monitor.popen.send_signal(signal.SIGTERM)
        monitor.popen.wait(10)
        published = Publications.read(monitor.log)
    seen = counts(outcomes)
    row = Row(fault, len(outcomes), seen["completed"], seen["error"], seen["hung"], seen["spliced"],
              recovery_s(outcomes, fault_at),
              ", ".join(f"{o.kind} {o.detail}" for o in outcomes if o.kind != "completed"))
    ROWS.append(row)
    return outcomes, fault_at, published


def cut_for(rig: Rig, host: str, seconds: float) -> Callable[[], None]:
    def cut() -> None:
        rig.cut(host)
        time.sleep(seconds)  # the fault's length
    return cut


def assert_clean(outcomes: list[Outcome]) -> None:
    seen = counts(outcomes)
    assert seen["hung"] == 0, [o for o in outcomes if o.kind == "hung"]
    assert seen["spliced"] == 0, [o for o in outcomes if o.kind == "spliced"]
    assert seen["broken"] == 0, [o for o in outcomes if o.kind == "broken"]
    assert seen["completed"] > 0


def queue_empties(rig: Rig) -> None:
    """No job left running or queued forever: the model's stream drains and nothing stays pending."""
    master = next(h for h in ("redis1", "redis2") if backend_ip(h) == rig.master_address())
    wait_until(lambda: rig.redis_cli(master, "xlen", "slm:req:tiny").strip() == "0", timeout_s=60,
               what="the request stream to drain", interval_s=0.2)


def test_worker_link_cut_mid_stream_redelivers_or_fails_cleanly(rig: Rig, references: dict[str, str]) -> None:
    outcomes, _, published = under_load(rig, references, "1. worker host's link cut (8 s)",
                                        cut_for(rig, "wk1", LEASE_S + 3),  # past the lease
                                        lambda: rig.restore("wk1"), watch=True)
    assert_clean(outcomes)
    assert published is not None and published.written, "the master's MONITOR log recorded nothing"
    # the cut-off worker never wrote into a stream after another attempt (the other worker's) had
    assert published.stale_writes() == 0
    wk1 = next(p for p in rig.procs if p.host == "wk1" and p.name == "worker").log.read_text()
    assert "redis unavailable" in wk1, "the cut-off worker should have dropped what it held"
    queue_empties(rig)


def test_worker_host_lost_redelivers_or_fails_cleanly(rig: Rig, references: dict[str, str]) -> None:
    def inject() -> None:
        rig.kill_host("wk1")
        rig.cut("wk1")
        time.sleep(LEASE_S + 3)  # the host stays lost past every lease

    def heal() -> None:
        rig.restore("wk1")
        rig.start_worker("wk1")

    outcomes, _, published = under_load(rig, references, "2. worker host lost", inject, heal, watch=True)
    assert_clean(outcomes)
    assert published is not None and published.stale_writes() == 0
    queue_empties(rig)


def test_gateway_link_cut_its_clients_get_clean_errors_the_other_serves(rig: Rig, references: dict[str, str]) -> None:
    outcomes, fault_at, _ = under_load(rig, references, "3. gateway host's link cut (5 s)",
                                       cut_for(rig, "gw1", 5),
                                       lambda: rig.restore("gw1"))
    assert_clean(outcomes)
    during = [o for o in outcomes if o.gateway == rig.gateway_url("gw2") and fault_at <= o.started < fault_at + 5]
    assert during and all(o.kind == "completed" for o in during), "the other gateway must keep serving"
    queue_empties(rig)


def test_flapping_links_lose_and_duplicate_nothing(rig: Rig, references: dict[str, str]) -> None:
    def flap() -> None:
        for _ in range(8):
            rig.cut("wk1")
            rig.cut("gw1")
            time.sleep(0.3)  # a cut of a few hundred milliseconds
            rig.restore("wk1")
            rig.restore("gw1")
            time.sleep(0.7)

    outcomes, _, published = under_load(rig, references, "5. flapping links (8 x 300 ms)", flap, lambda: None,
                                        watch=True)
    assert_clean(outcomes)
    # a gateway that found Redis away for a moment may refuse a new request (503, nothing queued);
    # nothing it accepted is lost: no stream ends in an error
    lost = [o for o in outcomes if o.kind == "error" and not o.detail.startswith("503")]
    assert not lost, lost
    assert published is not None and published.stale_writes() == 0


def test_redis_master_killed_sentinels_fail_over(rig: Rig, references: dict[str, str]) -> None:
    old = next(h for h in ("redis1", "redis2") if backend_ip(h) == rig.master_address())
    replica = "redis2" if old == "redis1" else "redis1"
    rig.wait_replica_known(replica, timeout_s=30)  # else the kill can come before the sentinels know it

    def inject() -> None:
        for proc in rig.running(old, "redis"):
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(10)
        wait_until(lambda: rig.master_address() == backend_ip(replica), timeout_s=30, what="a promotion",
                   interval_s=0.1)

    def heal() -> None:  # the old master comes back as a replica of the new one
        rig.start_redis(old, replica_of=backend_ip(replica))

    outcomes, _, _ = under_load(rig, references, "4. Redis master killed (failover)", inject, heal)
    assert_clean(outcomes)
    assert ROWS[-1].recover_s < 30, f"new requests succeeded only after {ROWS[-1].recover_s:.1f}s"
    queue_empties(rig)
