"""ONNX Runtime sessions as every graph of the package runs: on the CPU, on as many threads as torch
uses in this process (a pipeline pool or a worker process shares the cores out: two pipelines of two
threads each on 2 cores would oversubscribe them), idle threads sleeping rather than spinning on
cores another pipeline needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def ort_session(model: bytes | Path) -> Any:
    """An ONNX Runtime CPU session on `model` (a serialized graph or a file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
