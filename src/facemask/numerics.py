"""One arithmetic on every x86 machine: the numeric libraries' CPU kernels capped at AVX2.

PyTorch (ATen), oneDNN, MKL, NumPy and OpenCV each pick their kernels by the CPU they find.
AVX-512 kernels add in another order than AVX2 ones, so the same seeded training computes other floats
from the first step and ends as another model: the project's AVX-512 machines trained one detector and
classifier (dev mAP 0.707), its AVX2-only machines another (0.680), each bit for bit every time.
Capped at AVX2, which every x86 machine of this kind has, an AVX-512 machine fine-tunes the AVX2
machines' detector bit for bit (README, Machines). ONNX Runtime, which runs the detector for the crops,
the evaluation and the service, has no such setting, but its AVX-512 and AVX2 kernels agree bit for
bit without its layout optimizations (NCHWc blocks of 16 channels against 8: other sums; measured on
the detector, AVX2 emulated by QEMU's Haswell against this machine's AVX-512): the stages a model is
made of (the crops, the rejection threshold) run it so (`reproducible_inference`), the service and
the evaluations at full speed (1.7x faster detector). The cap costs an AVX-512 machine no
measurable speed (a training step within the runs' noise, README), nor accuracy.

`FACEMASK_CPU_ISA`: `avx2` (default) applies the cap; `native` leaves each library its own choice
(fastest, not reproducible across machines). A variable already set in the environment wins over
the cap's value for it. The libraries read these variables once, when they load: `facemask`'s
package init calls `cap()` before any module of it imports torch or OpenCV.
"""

from __future__ import annotations

import os
from pathlib import Path

SETTING = "FACEMASK_CPU_ISA"
# what each library reads, and its value for the cap
AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own vectorised kernels (depthwise convs, activations)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: PyTorch's convolutions and matrix products
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: its BLAS, AVX2 code paths
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's AVX-512 loops (exp, log, sums)
    "OPENCV_CPU_DISABLE": "AVX512-SKX",  # OpenCV's AVX-512 code (resizes, colour conversion, warps)
}


def cap() -> dict[str, str]:
    """Set the cap's variables (those not set already) unless `FACEMASK_CPU_ISA=native` or the CPU has
    no AVX2 (then there is nothing to cap to); returns what it set."""
    if _choice() == "native" or not _has_avx2():
        return {}
    applied = {k: v for k, v in AVX2.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def _choice() -> str:
    """`FACEMASK_CPU_ISA`, checked: `avx2` (the default) or `native`."""
    choice = os.environ.get(SETTING, "avx2").strip().lower()
    if choice not in ("avx2", "native"):
        raise ValueError(f"{SETTING}={choice!r}: use avx2 (the same models on every machine) or native")
    return choice


def _has_avx2() -> bool:
    """Whether the CPU has AVX2 (its flags in /proc/cpuinfo; elsewhere, no cap). No import of
    `facemask.machine`: the package init runs this, and `python -m facemask.machine` must still work."""
    try:
        return "avx2" in Path("/proc/cpuinfo").read_text().partition("\n\n")[0].split()
    except OSError:
        return False


ORT_SETTING = "FACEMASK_ORT_OPTIMIZATION"  # ONNX Runtime's graph optimizations: all (default) | extended


def reproducible_inference() -> None:
    """For the stages a model is made of: ONNX Runtime without layout optimizations (`extended`), the
    same floats on AVX2 and AVX-512, while the cap is on; a value already set wins."""
    if _choice() != "native":
        os.environ.setdefault(ORT_SETTING, "extended")


def ort_optimization() -> str:
    """The ONNX Runtime graph optimization level in force: `all` or `extended`."""
    level = os.environ.get(ORT_SETTING, "all").strip().lower()
    if level not in ("all", "extended"):
        raise ValueError(f"{ORT_SETTING}={level!r}: use all (fastest) or extended (the same floats on every x86)")
    return level
