"""The machine every speed figure names: read from this machine's own /proc/cpuinfo."""

from __future__ import annotations

import os
from pathlib import Path

from facemask import machine


def test_the_machine_is_described_by_its_first_processor_and_usable_cores():
    text = Path("/proc/cpuinfo").read_text()
    m = machine.describe()
    first = text.split("\n\n")[0]
    assert f"model name\t: {m['cpu']}" in first  # the CPU the kernel reports, not a guess
    assert m["cores"] == len(os.sched_getaffinity(0))  # the cores this process may run on
    flags = set(next(ln for ln in first.splitlines() if ln.startswith("flags")).split(":")[1].split())
    assert set(m["vector"]) == flags & set(machine.VECTOR_FLAGS)
    assert str(m["cores"]) in machine.label() and m["cpu"] in machine.label()


def test_only_the_first_processor_block_is_read():
    text = "processor\t: 0\nmodel name\t: First CPU\ncpu family\t: 25\n\nprocessor\t: 1\nmodel name\t: Other\n"
    assert machine._cpuinfo(text) == {"processor": "0", "model name": "First CPU", "cpu family": "25"}
