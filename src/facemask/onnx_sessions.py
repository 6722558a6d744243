"""ONNX Runtime sessions as every graph of the package runs: on the CPU, on as many threads as torch
uses in this process (a pipeline pool or a worker process shares the cores out: two pipelines of two
threads each on 2 cores would oversubscribe them), idle threads sleeping rather than spinning on
cores another pipeline needs. The graph optimization level is `facemask.numerics.ort_optimization()`:
all of them, or (the stages a model is made of) those whose floats are the same on every x86."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facemask.numerics import ort_optimization


def ort_session(model: bytes | Path) -> Any:
    """An ONNX Runtime CPU session on `model` (a serialized graph or a file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    level = ort_optimization()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all" else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    )
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
