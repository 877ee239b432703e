"""What a process measures of itself for the residency bookkeeping: its resident memory, now and at
its peak."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def process_rss(statm: Path = Path("/proc/self/statm")) -> int:
    """This process's resident set in bytes (`/proc/self/statm`; where there is no /proc, the peak
    from `getrusage`, an upper bound)."""
    try:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_peak_rss(status: Path = Path("/proc/self/status")) -> int:
    """This process's peak resident set in bytes: `VmHWM` (loading a model peaks above its steady RSS), or
    `VmRSS` when larger (the kernel updates the high-water mark lazily, e.g. at unmap); where there is no
    /proc, `getrusage`'s peak."""
    try:
        found = {}
        for line in status.read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                found[line.split(":")[0]] = int(line.split()[1]) * 1024
        if found:
            return max(found.values())
    except (OSError, IndexError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
