"""The memory budget of `serve` (`SLM_MEMORY_BUDGET`): sizes as people write them, and the default
share of the machine's memory."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_SHARE = 0.75  # of MemTotal, when SLM_MEMORY_BUDGET is unset
UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
         "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from `8GiB`, `512MiB`, `1.5GB`, `1000000` (binary units are powers of 1024, decimal
    ones of 1000); `ValueError` naming what is wrong."""
    found = _SIZE.match(text)
    if found is None:
        raise ValueError(f"'{text}' is not a size (e.g. 8GiB, 512MiB or a number of bytes)")
    number, unit = found.groups()
    factor = UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"'{text}': unknown unit '{unit}' (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)")
    value = int(float(number) * factor)
    if value <= 0:
        raise ValueError(f"'{text}' is not a positive size")
    return value


def machine_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """MemTotal in bytes (the physical pages times their size where /proc is absent)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(setting: str) -> int:
    """The budget a setting names; empty: `DEFAULT_SHARE` of the machine's memory."""
    return parse_size(setting) if setting.strip() else int(machine_memory() * DEFAULT_SHARE)


def format_size(n: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"
