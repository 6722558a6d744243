"""CenterFace (Star-Clouds, MIT) through ONNX Runtime: an anchor-free detector trained on WIDER FACE,
made for small faces (WIDER hard 0.782 single-inference against RetinaFace-MobileNet0.25's 0.681).

The published graph has a fixed 10x3x32x32 input and lists its weights as graph inputs too; it is
loaded with a dynamic input (batch, height, width) and without those inputs, so ONNX Runtime folds
its constants. One heat map cell at stride 4 per face: the score, the box size (log, height and
width), the centre's offset and five landmarks as fractions of the box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.ops import nms

from facemask.detection.base import DetectorBackend, Face
from facemask.onnx_sessions import ort_session

STRIDE = 4  # the heat map's cell, in input pixels
MULTIPLE = 32  # the input's height and width are padded up to a multiple of this
INPUT = "input.1"
OUTPUTS = {"537": 1, "538": 2, "539": 2, "540": 10}  # heat map, log size, offset, landmarks: channels


def dynamic_graph(weights: Path) -> bytes:
    """The graph with a dynamic (batch, height, width) input, no initializer among its inputs and none
    that no node reads."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(weights))
    names = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in names]
    if [i.name for i in inputs] != [INPUT] or {o.name for o in model.graph.output} != set(OUTPUTS):
        raise ValueError(f"{weights}: not the CenterFace graph (inputs {[i.name for i in inputs]})")
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    used = {name for node in model.graph.node for name in node.input}  # BatchNorm counters are not
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    del model.graph.value_info[:]  # the fixed intermediate shapes of the 32x32 export
    outputs = {name: ["batch", channels, "rows", "cols"] for name, channels in OUTPUTS.items()}
    model = update_inputs_outputs_dims(model, {INPUT: ["batch", 3, "height", "width"]}, outputs)
    return model.SerializeToString()


def preprocess(image: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> (1, 3, H', W') float32 RGB 0-255, zero-padded at the bottom and right to
    multiples of 32 (padding, not resizing: the boxes need no rescaling)."""
    h, w = image.shape[:2]
    ph, pw = -(-h // MULTIPLE) * MULTIPLE, -(-w // MULTIPLE) * MULTIPLE
    x = np.zeros((1, 3, ph, pw), dtype=np.float32)
    for c in range(3):
        x[0, c, :h, :w] = image[:, :, 2 - c]
    return x


def decode(
    heat: np.ndarray, size: np.ndarray, offset: np.ndarray, marks: np.ndarray, threshold: float, top_k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs ((1, rows, cols), (2, ...), (2, ...), (10, ...)) -> boxes (N, 4) in input
    pixels, scores (N,), landmarks (N, 5, 2): every cell above `threshold`, the `top_k` best."""
    rows, cols = np.nonzero(heat[0] > threshold)
    scores = heat[0, rows, cols]
    order = np.argsort(-scores, kind="stable")[:top_k]
    rows, cols, scores = rows[order], cols[order], scores[order]
    bh, bw = np.exp(size[0, rows, cols]) * STRIDE, np.exp(size[1, rows, cols]) * STRIDE
    cy, cx = (rows + offset[0, rows, cols] + 0.5) * STRIDE, (cols + offset[1, rows, cols] + 0.5) * STRIDE
    x1, y1 = np.maximum(cx - bw / 2, 0), np.maximum(cy - bh / 2, 0)
    boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)
    lm = marks[:, rows, cols].T.reshape(-1, 5, 2)  # (y, x) pairs, fractions of the box from its corner
    points = np.stack([lm[:, :, 1] * bw[:, None] + x1[:, None], lm[:, :, 0] * bh[:, None] + y1[:, None]], axis=2)
    return boxes, scores.astype(np.float32), points.astype(np.float32)


class CenterFaceDetector(DetectorBackend):
    """CenterFace's graph on ONNX Runtime, through the package's one session helper."""

    name = "centerface"

    def __init__(self, weights: Path, score_threshold: float, nms_threshold: float, top_k: int, min_face: int):
        if not Path(weights).is_file():
            raise FileNotFoundError(f"CenterFace weights not found: {weights}")
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.top_k, self.min_face = top_k, min_face
        self.session = ort_session(dynamic_graph(Path(weights)))

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return []
        heat, size, offset, marks = self.session.run(list(OUTPUTS), {INPUT: preprocess(image)})
        boxes, scores, points = decode(heat[0], size[0], offset[0], marks[0], self.score_threshold, self.top_k)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), self.nms_threshold).numpy()
        sides = np.minimum(boxes[kept, 2] - boxes[kept, 0], boxes[kept, 3] - boxes[kept, 1])
        kept = kept[sides >= self.min_face]
        return [Face(boxes[i], float(scores[i]), points[i]) for i in kept]
