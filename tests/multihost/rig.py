"""A multi-host rig on one machine: "hosts" are network namespaces on two private bridges.

    backend  10.77.1.0/24   redis1 (master + sentinel), redis2 (replica + sentinel), arbiter (sentinel),
                            gw1, gw2 (gateways), wk1, wk2 (workers)
    frontend 10.77.2.0/24   gw1, gw2, client (the load)

The bridges live in a namespace of their own (`...-switch`), so no address or link of the rig ever
exists in the machine's own namespace and no packet leaves it. Each host's cable is a veth pair whose
switch end `cut` sets down and `restore` up again; neighbour entries are pinned, so a cut lasts as long as
the cable is out (`_pin_neighbours`). Every component reaches Redis through the three
sentinels (`SLM_REDIS_SENTINELS`), as a deployment with Redis high availability does.

Run it by hand: `sudo python -m tests.multihost.rig` (or `tools/multihost-rig.sh`) builds it, waits until
both gateways count both workers, prints the addresses and waits for Ctrl-C; everything is removed then.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import SMOLLM2
from tests.multihost import netns

BACKEND = "10.77.1"
FRONTEND = "10.77.2"
HOSTS: dict[str, tuple[int | None, int | None]] = {  # name: (backend host number, frontend host number)
    "redis1": (11, None), "redis2": (12, None), "arbiter": (13, None),
    "gw1": (21, 21), "gw2": (22, 22), "wk1": (31, None), "wk2": (32, None), "client": (None, 50),
}
SENTINEL_PORT = 26379
REDIS_PORT = 6379
GATEWAY_PORT = 8000
MASTER = "slm"
REGISTRY = f"""
models:
  tiny:
    gguf: {SMOLLM2}
    n_ctx: 512
    n_threads: 1
    parallel: 2
"""
# short leases and timeouts, so that faults resolve in seconds (a worker's socket timeout is
# redis_timeout + 1 = 3 s: it gives up what it holds before its 5 s lease lapses; 2 s ride out the
# retransmission backoff of TCP on a link that flaps)
LEASE_S = 5.0
TIMINGS = {"SLM_LEASE_S": str(LEASE_S), "SLM_REDIS_TIMEOUT_S": "2", "SLM_STALL_TIMEOUT_S": "8",
           "SLM_HEARTBEAT_S": "0.5", "SLM_QUEUE_TIMEOUT_S": "30"}


def backend_ip(host: str) -> str:
    number = HOSTS[host][0]
    assert number is not None, host
    return f"{BACKEND}.{number}"


def frontend_ip(host: str) -> str:
    number = HOSTS[host][1]
    assert number is not None, host
    return f"{FRONTEND}.{number}"


@dataclass
class Proc:
    host: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Rig:
    tmp: Path
    tag: str = field(default_factory=lambda: f"{netns.PREFIX}{os.getpid()}")
    procs: list[Proc] = field(default_factory=list)
    made: list[str] = field(default_factory=list)

    # -- names ----------------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    @property
    def switch(self) -> str:
        return self.ns("switch")

    @property
    def sentinels(self) -> str:
        return ",".join(f"{backend_ip(h)}:{SENTINEL_PORT}" for h in ("redis1", "redis2", "arbiter"))

    def gateway_url(self, host: str) -> str:
        return f"http://{frontend_ip(host)}:{GATEWAY_PORT}"

    # -- the network ----------------------------------------------------------------------------
    def build_network(self) -> None:
        netns.remove_stale()
        for name in ("switch", *HOSTS):
            netns.ip("netns", "add", self.ns(name))
            self.made.append(self.ns(name))
            netns.ip("-n", self.ns(name), "link", "set", "lo", "up")
        for bridge in ("br-back", "br-front"):
            netns.ip("-n", self.switch, "link", "add", bridge, "type", "bridge")
            netns.ip("-n", self.switch, "link", "set", bridge, "up")
        for host, (back, front) in HOSTS.items():
            for net, number, bridge, prefix, dev in (("b", back, "br-back", BACKEND, "eth0"),
                                                     ("f", front, "br-front", FRONTEND, "eth1")):
                if number is None:
                    continue
                port = f"{host}-{net}"
                netns.ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", dev,
                         "netns", self.ns(host))
                netns.ip("-n", self.switch, "link", "set", port, "master", bridge)
                netns.ip("-n", self.switch, "link", "set", port, "up")
                netns.ip("-n", self.ns(host), "addr", "add", f"{prefix}.{number}/24", "dev", dev)
                netns.ip("-n", self.ns(host), "link", "set", dev, "up")
        self._pin_neighbours()

    def _pin_neighbours(self) -> None:
        """Every host knows every other's MAC address for good (permanent neighbour entries), so a cut is
        only as long as the cable is out: a veth that loses its carrier flushes its learnt entries, and
        resolving them again (probes a second apart, some sent while still cut) stretched a 300 ms cut
        into 3-4 s without Redis (a probe of this rig: 3.7 s worst gap without, 0.4 s with)."""
        for dev, prefix, slot in (("eth0", BACKEND, 0), ("eth1", FRONTEND, 1)):
            on_net = {h: numbers[slot] for h, numbers in HOSTS.items() if numbers[slot] is not None}
            macs = {h: json.loads(netns.ip("-j", "-n", self.ns(h), "link", "show", "dev", dev).stdout)[0]["address"]
                    for h in on_net}
            for host in on_net:
                for other, number in on_net.items():
                    if other != host:
                        netns.ip("-n", self.ns(host), "neigh", "replace", f"{prefix}.{number}", "lladdr",
                                 macs[other], "dev", dev, "nud", "permanent")

    def cut(self, host: str, net: str = "b") -> None:
        """Pull `host`'s cable on the backend (`b`: Redis, workers) or the frontend (`f`: clients)."""
        netns.ip("-n", self.switch, "link", "set", f"{host}-{net}", "down")

    def restore(self, host: str, net: str = "b") -> None:
        netns.ip("-n", self.switch, "link", "set", f"{host}-{net}", "up")

    # -- processes ------------------------------------------------------------------------------
    def start(self, host: str, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{host}-{name}-{len(self.procs)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], stdout=out,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.tmp, start_new_session=True)
        proc = Proc(host, name, popen, log)
        self.procs.append(proc)
        return proc

    def running(self, host: str, name: str | None = None) -> list[Proc]:
        return [p for p in self.procs if p.host == host and (name is None or p.name == name)
                and p.popen.poll() is None]

    def kill_host(self, host: str) -> None:
        """Every process of the host, SIGKILL at once (a power cut)."""
        for proc in self.running(host):
            proc.popen.send_signal(signal.SIGKILL)
        for proc in self.procs:
            if proc.host == host:
                proc.popen.wait(10)

    def _slm_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLM_", "OPENAI_"))}
        env.update(TIMINGS)
        env.update({"SLM_REDIS_SENTINELS": self.sentinels, "SLM_REDIS_SENTINEL_MASTER": MASTER,
                    "SLM_REGISTRY": str(self.tmp / "model_registry.yaml"), "PYTHONUNBUFFERED": "1",
                    "SLM_RELOAD_INTERVAL_S": "0", "SLM_WORKER_WATCH_REGISTRY": "0"})
        return env

    def start_redis(self, host: str, replica_of: str | None = None) -> Proc:
        argv = ["redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
                "--save", "", "--appendonly", "no", "--dir", str(self.tmp)]
        if replica_of:
            argv += ["--replicaof", replica_of, str(REDIS_PORT)]
        return self.start(host, "redis", argv)

    def start_sentinel(self, host: str) -> Proc:
        conf = self.tmp / f"sentinel-{host}.conf"
        conf.write_text(
            f"port {SENTINEL_PORT}\nbind 0.0.0.0\nprotected-mode no\ndir {self.tmp}\n"
            f"sentinel monitor {MASTER} {backend_ip('redis1')} {REDIS_PORT} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 4000\n"
            f"sentinel parallel-syncs {MASTER} 1\n")
        return self.start(host, "sentinel", ["redis-sentinel", str(conf)])

    def start_gateway(self, host: str) -> Proc:
        env = {**self._slm_env(), "SLM_HOST": "0.0.0.0", "SLM_PORT": str(GATEWAY_PORT)}
        return self.start(host, "gateway", [sys.executable, "-m", "server", "gateway"], env)

    def start_worker(self, host: str) -> Proc:
        env = {**self._slm_env(), "HOSTNAME": host}
        return self.start(host, "worker", [sys.executable, "-m", "server", "worker", "--model", "tiny"], env)

    def up(self) -> None:
        """The whole rig: network, Redis with its replica and sentinels, two gateways, two workers."""
        (self.tmp / "model_registry.yaml").write_text(REGISTRY)
        self.build_network()
        self.start_redis("redis1")
        self.start_redis("redis2", replica_of=backend_ip("redis1"))
        for host in ("redis1", "redis2", "arbiter"):
            self.start_sentinel(host)
        for host in ("wk1", "wk2"):
            self.start_worker(host)
        for host in ("gw1", "gw2"):
            self.start_gateway(host)
        self.wait_ready(timeout_s=90)

    # -- looking at it ---------------------------------------------------------------------------
    def ready_workers(self, host: str) -> int:
        """How many `tiny` workers the gateway on `host` counts (-1: it is not ready), asked from the client host."""
        def ask() -> int:
            try:
                reply = httpx.get(self.gateway_url(host) + "/ready", timeout=2)
            except httpx.HTTPError:
                return -1
            return int(reply.json()["workers"]["tiny"]) if reply.status_code == 200 else -1
        return netns.run_in(self.ns("client"), ask)

    def wait_ready(self, *, timeout_s: float, workers: int = 2) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(self.ready_workers(h) == workers for h in ("gw1", "gw2")):
            dead = [p for p in self.procs if p.popen.poll() is not None and p.name in ("gateway", "worker")
                    and not self.running(p.host, p.name)]
            if dead:
                raise AssertionError(f"{dead[0].host} {dead[0].name} exited:\n{dead[0].log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the rig was not ready within {timeout_s}s: "
                                     f"{[self.ready_workers(h) for h in ('gw1', 'gw2')]} workers seen")
            time.sleep(0.2)  # polling interval of a readiness poll

    def master_address(self) -> str:
        """Who the sentinels say the master is (asked on the arbiter)."""
        out = subprocess.run(["ip", "netns", "exec", self.ns("arbiter"), "redis-cli", "-p", str(SENTINEL_PORT),
                              "sentinel", "get-master-addr-by-name", MASTER],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
        return out[0] if out else ""

    def wait_replica_known(self, replica: str, *, timeout_s: float) -> None:
        """Until every sentinel lists `replica` among the master's replicas. A sentinel learns of replicas
        from the master's INFO, which it asks for every 10 s: a master killed before that leaves the
        sentinels with no replica to promote (`-failover-abort-no-good-slave`, again at every retry)."""
        def known() -> bool:
            return all(backend_ip(replica) in subprocess.run(
                ["ip", "netns", "exec", self.ns(host), "redis-cli", "-p", str(SENTINEL_PORT), "sentinel",
                 "replicas", MASTER], capture_output=True, text=True, timeout=10, check=True).stdout
                for host in ("redis1", "redis2", "arbiter"))
        deadline = time.monotonic() + timeout_s
        while not known():
            if time.monotonic() > deadline:
                raise AssertionError(f"the sentinels did not learn of {replica} within {timeout_s}s")
            time.sleep(0.2)  # polling interval of a readiness poll

    def redis_cli(self, host: str, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", self.ns(host), "redis-cli", "-p", str(REDIS_PORT), *args],
                              capture_output=True, text=True, timeout=10, check=True).stdout

    # -- the end ----------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop every process and remove every namespace and link (the veths go with their namespaces)."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable (D state): the netns removal goes on
                proc.popen.wait(10)
        for name in self.made:
            netns.remove(name)
        self.made.clear()


def main() -> int:
    import tempfile

    reason = netns.lacking()
    if reason:
        sys.stderr.write(f"cannot build the rig: {reason}\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="slm-multihost-") as tmp:
        rig = Rig(Path(tmp))
        try:
            rig.up()
            for host in ("gw1", "gw2"):
                sys.stdout.write(f"{host}: {rig.gateway_url(host)} (from namespace {rig.ns('client')})\n")
            sys.stdout.write(f"master: {rig.master_address()}; sentinels {rig.sentinels}; logs in {tmp}\n"
                             f"try: ip netns exec {rig.ns('client')} curl {rig.gateway_url('gw1')}/ready\n"
                             "Ctrl-C removes everything.\n")
            sys.stdout.flush()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            rig.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
