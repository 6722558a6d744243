"""The AVX2 cap (`facemask.numerics`): importing the package caps every numeric library's kernels, in
a real Python process, as each library itself reports; `FACEMASK_CPU_ISA=native` leaves them be, a
variable the user set wins, and a bad setting is a clear error before anything loads."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from facemask import machine, numerics

from .conftest import BIN

# What each library says it dispatches to, after `import facemask` (so after the cap) in a fresh process.
PROBE = """
import json, os, facemask, torch, cv2
from numpy._core._multiarray_umath import __cpu_features__ as npy
print(json.dumps({
    "torch": torch.backends.cpu.get_cpu_capability(),
    "numpy_v4": bool(npy.get("X86_V4")),
    "opencv_avx512": bool(cv2.checkHardwareSupport(256)),  # CV_CPU_AVX512_SKX
    "env": {k: os.environ.get(k) for k in KEYS},
}))
""".replace("KEYS", repr(sorted(numerics.AVX2)))


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in numerics.AVX2 and k != numerics.SETTING}
    run = subprocess.run([str(BIN / "python"), "-c", PROBE], env={**clean, **env}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


AVX2_CPU = "avx2" in machine.describe()["vector"]
AVX512_CPU = "avx512f" in machine.describe()["vector"]


@pytest.mark.skipif(not AVX2_CPU, reason="no AVX2 on this CPU: nothing to cap to (cap() sets nothing)")
def test_importing_the_package_caps_every_library_at_avx2():
    seen = probe()
    assert seen["env"] == numerics.AVX2
    assert seen["torch"] == "AVX2"  # PyTorch's own report of its kernels
    assert not seen["numpy_v4"] and not seen["opencv_avx512"]


def test_native_leaves_each_library_its_own_choice():
    seen = probe(FACEMASK_CPU_ISA="native")
    assert all(v is None for v in seen["env"].values())
    # on an AVX-512 machine the libraries then take it (what the cap prevents)
    assert seen["numpy_v4"] == AVX512_CPU and seen["opencv_avx512"] == AVX512_CPU
    if AVX512_CPU:
        assert seen["torch"] == "AVX512"


@pytest.mark.skipif(not AVX2_CPU, reason="no AVX2 on this CPU: nothing to cap to")
def test_a_variable_the_user_set_wins():
    seen = probe(ATEN_CPU_CAPABILITY="default")
    assert seen["torch"] == "DEFAULT"
    assert seen["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # the others still capped


def test_a_bad_setting_is_a_clear_error():
    run = subprocess.run(
        [str(BIN / "python"), "-c", "import facemask"],
        env={**os.environ, numerics.SETTING: "avx1024"}, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode != 0
    assert "FACEMASK_CPU_ISA='avx1024'" in run.stderr and "use avx2" in run.stderr


def identity_graph(path) -> str:
    import onnx
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "xy")
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.parametrize("stage", ["crop", "train"])
def test_the_stages_a_model_is_made_of_run_onnx_runtime_without_layout_optimizations(stage, tmp_path):
    """The crop and train stages set `reproducible_inference()` first (here: before refusing a missing
    params file): their ONNX Runtime sessions, and their workers', then leave out the layout
    optimizations whose sums differ between AVX2 and AVX-512; other processes (the service, the
    benches) keep them all, and `FACEMASK_CPU_ISA=native` keeps them everywhere."""
    code = (
        f"import contextlib, facemask.stages.{stage} as stage; from facemask.onnx_sessions import ort_session\n"
        f"level = lambda: str(ort_session({identity_graph(tmp_path / 'g.onnx')!r}).get_session_options()"
        ".graph_optimization_level).split('.')[-1]\n"
        "print(level())\n"
        f"with contextlib.suppress(SystemExit): stage.main(['--params', {str(tmp_path / 'missing.yaml')!r}])\n"
        "print(level())\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != numerics.ORT_SETTING}
    cases = [({}, ["ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED"]), ({numerics.SETTING: "native"}, ["ORT_ENABLE_ALL"] * 2)]
    for env, expected in cases:
        run = subprocess.run([str(BIN / "python"), "-c", code], env={**clean, **env}, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.split()[-2:] == expected
        assert "missing.yaml" in run.stderr  # the stage did run, and refused the missing file
