"""What a worker measures of itself: its RSS now and its peak (`VmHWM`), which loading can push above it."""

from __future__ import annotations

from pathlib import Path

from server.residency.measure import process_peak_rss, process_rss


def test_the_peak_is_read_from_vmhwm(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  768000 kB\nVmRSS:\t  550000 kB\n")
    assert process_peak_rss(status) == 768000 * 1024
    status.write_text("VmHWM:\t  500000 kB\nVmRSS:\t  520000 kB\n")  # the high-water mark is updated lazily
    assert process_peak_rss(status) == 520000 * 1024


def test_the_peak_outlives_memory_given_back() -> None:
    before = process_rss()
    grown = bytearray(64 * 1024 * 1024)  # touch 64 MiB, then let it go: the peak keeps it
    grown[::4096] = b"\x01" * len(grown[::4096])
    del grown
    assert process_peak_rss() >= before + 60 * 1024 * 1024
