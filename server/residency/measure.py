"""What a process measures of itself for the residency bookkeeping: its resident memory."""

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
