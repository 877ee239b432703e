"""Linux network namespaces as "hosts": create, link, cut, run code inside, remove.

Everything is named with a prefix that carries the creating process's id (`slmmh<pid>-...`), so a
rig can remove what an earlier, killed run left behind (its pid is gone) without touching anything
of a run still going, nor anything it did not create.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
import threading
from collections.abc import Callable
from typing import TypeVar

PREFIX = "slmmh"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def lacking() -> str | None:
    """Why this machine cannot run the rig (None when it can): no `ip`, not root, no netns."""
    if os.geteuid() != 0:
        return "the multi-host rig needs root (network namespaces)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "no `ip` command (iproute2)"
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    listed = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    out = ip("netns", "pids", namespace, check=False).stdout
    return [int(p) for p in out.split()]


def remove(namespace: str) -> None:
    """Kill what still runs in it (processes this rig started there), then delete it."""
    for pid in pids_in(namespace):
        with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
            os.kill(pid, 9)
    ip("netns", "del", namespace, check=False)


def remove_stale() -> list[str]:
    """Namespaces of earlier runs whose creating process is gone; removed, their names returned."""
    gone = []
    for name in namespaces():
        found = re.fullmatch(rf"{PREFIX}(\d+)-.*", name)
        if found is None:
            continue
        owner = int(found.group(1))
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            remove(name)
            gone.append(name)
    return gone


_libc = ctypes.CDLL(None, use_errno=True)


def run_in(namespace: str, fn: Callable[[], T]) -> T:
    """Call `fn` on a thread of its own that has entered `namespace` (a netns is per thread: the
    sockets it opens live there); the calling thread stays where it is."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            enter(namespace)
            result.append(fn())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"in-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def enter(namespace: str) -> None:
    """Move the calling thread into `namespace` (only ever call on a thread made for it)."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({namespace}): {os.strerror(err)}")
    finally:
        os.close(fd)
