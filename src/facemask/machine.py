"""The machine a figure was measured on: every speed figure names it (CPU, cores, vector units).

Machines sold under one name differ: two 2-core "AMD EPYC" machines of this project ran the
detector's fine-tuning at 61 and 117 s an epoch. A time means little without its machine, and a
comparison is fair only as a ratio measured in one run on one machine.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VECTOR_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx2", "fma")  # what the kernels dispatch on


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


@cache
def describe() -> dict[str, object]:
    """CPU model (with family/model/stepping: one marketing name covers several generations), the
    cores this process may use, the vector extensions present and the OS; no third-party import."""
    info = _cpuinfo(CPUINFO.read_text()) if CPUINFO.is_file() else {}
    flags = set(info.get("flags", "").split())
    generation = "/".join(info[k] for k in ("cpu family", "model", "stepping") if k in info)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_generation": generation or None,  # family/model/stepping (x86)
        "cores": cores,
        "vector": [f for f in VECTOR_FLAGS if f in flags],
        "mhz": round(float(info["cpu MHz"])) if "cpu MHz" in info else None,
        # the numeric libraries' kernels in force (facemask.numerics caps them at AVX2 on load)
        "kernels": os.environ.get("ONEDNN_MAX_CPU_ISA", "native").lower(),
        "os": f"{platform.system()} {platform.release()}",
    }


def label() -> str:
    """One line for a table's caption: 'AMD EPYC (25/1/1), 2 cores, avx2', and the kernels' cap where
    it is below the CPU's best: 'AMD EPYC (25/17/1), 2 cores, avx512f, kernels avx2'."""
    m = describe()
    generation = f" ({m['cpu_generation']})" if m["cpu_generation"] else ""
    best = next((v for v in m["vector"] if v.startswith(("avx512", "amx", "avx2"))), "no avx2")
    capped = f", kernels {m['kernels']}" if m["kernels"] != "native" and not best.startswith(m["kernels"]) else ""
    return f"{m['cpu']}{generation}, {m['cores']} cores, {best}{capped}"


if __name__ == "__main__":
    print(label())
