"""Export the fine-tuned network to ONNX (dynamic input size) for ONNX Runtime on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from facemask.detection.retinaface_mnet import RetinaFaceMobileNet

OUTPUTS = ("loc", "conf", "landmarks")


def export_onnx(network: RetinaFaceMobileNet, path: Path, example_hw: tuple[int, int] = (480, 640)) -> Path:
    """Write `network` (softmaxed scores, as `RetinaFaceOnnxDetector` expects) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.eval().cpu()
    example = torch.zeros(1, 3, *example_hw)
    axes = {"input": {2: "height", 3: "width"}, **{name: {1: "anchors"} for name in OUTPUTS}}
    torch.onnx.export(
        network, (example,), str(path), input_names=["input"], output_names=list(OUTPUTS),
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path
