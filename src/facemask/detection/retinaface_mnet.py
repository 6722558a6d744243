"""RetinaFace with a MobileNet-0.25 backbone (0.44M parameters), in plain PyTorch.

The architecture and box decoding of biubug6/Pytorch_Retinaface (MIT), so that its published
`mobilenet0.25_Final.pth` state_dict loads key for key: MobileNetV1-0.25 body, a 3-level FPN, SSH
context modules and class/box/landmark heads with 2 anchors per cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from facemask.detection.base import DetectorBackend, Face
from facemask.onnx_sessions import ort_session

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
# Box/landmark offset scales (centre, size). biubug6's code says (0.1, 0.2); with this checkpoint the
# centres and landmarks then overshoot about 2x: on 30 single-face photos the median centre error is
# 30% of the face width (YuNet as reference) at 0.1 and 4% at 0.05. Sizes fit at 0.2 (ratio 1.04).
VARIANCE = (0.05, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)


def _conv_bn(inp: int, out: int, stride: int = 1, leaky: float = 0.0, relu: bool = True, k: int = 3) -> nn.Sequential:
    layers = [nn.Conv2d(inp, out, k, stride, k // 2, bias=False), nn.BatchNorm2d(out)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(inp: int, out: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """The 0.25-width MobileNetV1 trunk; its three stages feed the FPN."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out, leaky=leaky, k=1)
        self.output2 = _conv_bn(in_channels[1], out, leaky=leaky, k=1)
        self.output3 = _conv_bn(in_channels[2], out, leaky=leaky, k=1)
        self.merge1 = _conv_bn(out, out, leaky=leaky)
        self.merge2 = _conv_bn(out, out, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn(inp, out // 2, relu=False)
        self.conv5X5_1 = _conv_bn(inp, out // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, relu=False)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        branches = [self.conv3X3(x), self.conv5X5_2(c5_1), self.conv7x7_3(self.conv7X7_2(c5_1))]
        return F.relu(torch.cat(branches, dim=1))


class _Head(nn.Module):
    def __init__(self, inp: int, per_anchor: int, anchors: int = 2) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(inp, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFaceMobileNet(nn.Module):
    """Outputs per anchor: box offsets (4), face/background scores (2, softmaxed), landmarks (10)."""

    def __init__(self, width: int = 32, out: int = 64) -> None:
        super().__init__()
        self.body = MobileNetV1()
        self.fpn = FPN((width * 2, width * 4, width * 8), out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        self.ClassHead = nn.ModuleList(_Head(out, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out, 10) for _ in range(3))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs per anchor: box offsets, face/background logits (for training), landmarks."""
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]
        boxes = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landmarks = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return boxes, logits, landmarks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, logits, landmarks = self.heads(x)
        return boxes, F.softmax(logits, dim=-1), landmarks


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """Anchors (cx, cy, w, h), normalised to the image, in the network's output order: per level,
    row by row, column by column, each cell's sizes in turn (built in float64, as Python floats)."""
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = -(-height // step), -(-width // step)
        rows, cols = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = np.repeat((cols.ravel() + 0.5) * step / width, len(sizes))
        cy = np.repeat((rows.ravel() + 0.5) * step / height, len(sizes))
        s = np.tile(np.asarray(sizes, dtype=np.float64), fh * fw)
        levels.append(np.stack([cx, cy, s / width, s / height], axis=1))
    return torch.from_numpy(np.concatenate(levels).astype(np.float32))


def decode(loc: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets -> (x1, y1, x2, y2) boxes and (5, 2) landmarks, normalised."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    lms = priors[:, None, :2] + landmarks.reshape(-1, 5, 2) * VARIANCE[0] * priors[:, None, 2:]
    return boxes, lms


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """Anchors (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def encode(boxes: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) boxes -> the offsets `decode` turns back into them, one box per anchor."""
    centre = ((boxes[:, :2] + boxes[:, 2:]) / 2 - priors[:, :2]) / (VARIANCE[0] * priors[:, 2:])
    size = torch.log((boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6) / priors[:, 2:]) / VARIANCE[1]
    return torch.cat([centre, size], dim=1)


def load_state(net: nn.Module, weights: Path) -> nn.Module:
    """Load a biubug6-format state_dict (a `module.` prefix from DataParallel is stripped)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    return net.eval()


def preprocess(image: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> the network's (1, 3, H, W) float32 input (training uses it too).

    One pass per channel plane, written in place: the same numbers as transposing, converting and
    subtracting whole arrays, in 0.7 ms against 1.9 (median, 50 dev scenes at 640, this 2-core CPU)."""
    x = np.empty((1, 3, *image.shape[:2]), dtype=np.float32)
    for c, mean in enumerate(BGR_MEAN):
        np.subtract(image[:, :, c], np.float32(mean), out=x[0, c], dtype=np.float32)
    return x


class _Postprocess(DetectorBackend):
    """Network outputs -> faces above the score threshold after NMS; anchors cached per input size."""

    def __init__(self, score_threshold: float, nms_threshold: float, top_k: int, min_face: int):
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.top_k, self.min_face = top_k, min_face
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def faces(self, loc: torch.Tensor, conf: torch.Tensor, lms: torch.Tensor, h: int, w: int) -> list[Face]:
        """`loc`, `conf`, `lms`: one image's (anchors, 4/2/10) outputs, `conf` softmaxed."""
        priors = self._priors.get((h, w))
        if priors is None:
            if len(self._priors) >= 64:  # a stream's search regions come in many sizes: bounded
                self._priors.clear()
            priors = self._priors.setdefault((h, w), prior_boxes(h, w))
        scores = conf[:, 1]
        keep = torch.nonzero(scores > self.score_threshold).squeeze(1)
        keep = keep[scores[keep].argsort(descending=True)[: self.top_k]]
        boxes, points = decode(loc[keep], lms[keep], priors[keep])
        scale = torch.tensor([w, h], dtype=torch.float32)
        boxes, points = boxes * scale.repeat(2), points * scale
        kept = nms(boxes, scores[keep], self.nms_threshold)
        faces = []
        for i in kept.tolist():
            box = boxes[i].numpy()
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face:
                continue
            faces.append(Face(box.astype(np.float32), float(scores[keep][i]), points[i].numpy().astype(np.float32)))
        return faces


class RetinaFaceMobileNetDetector(_Postprocess):
    """RetinaFace-MobileNet0.25 in eager PyTorch (the stock WIDER FACE weights, or a network being
    fine-tuned: `facemask.detector_training` validates through this class)."""

    name = "retinaface_mnet"

    def __init__(
        self, weights: Path | nn.Module, score_threshold: float, nms_threshold: float, top_k: int, min_face: int
    ):
        super().__init__(score_threshold, nms_threshold, top_k, min_face)
        if isinstance(weights, nn.Module):
            self.net = weights
        elif not Path(weights).is_file():
            raise FileNotFoundError(f"RetinaFace-MobileNet weights not found: {weights}")
        else:
            self.net = load_state(RetinaFaceMobileNet(), Path(weights))

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return []
        device = next(self.net.parameters()).device
        loc, conf, lms = self.net(torch.from_numpy(preprocess(image)).to(device))
        return self.faces(loc[0].cpu(), conf[0].cpu(), lms[0].cpu(), h, w)


class RetinaFaceOnnxDetector(_Postprocess):
    """The same network exported to ONNX (`facemask.detector_training.export`), run by ONNX Runtime:
    about 6x faster than eager PyTorch on 2 CPU cores. OpenCV's DNN module cannot import the graph
    (it has no dynamic input shapes). The fine-tuned detector of the `train_detector` stage."""

    name = "retinaface_ft"

    def __init__(self, weights: Path, score_threshold: float, nms_threshold: float, top_k: int, min_face: int):
        super().__init__(score_threshold, nms_threshold, top_k, min_face)
        if not Path(weights).is_file():
            raise FileNotFoundError(f"fine-tuned detector not found: {weights} (dvc repro train_detector)")
        self.session = ort_session(Path(weights))  # torch's thread share, as the classifier's session
        self._input = self.session.get_inputs()[0].name

    def detect(self, image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return []
        loc, conf, lms = (torch.from_numpy(a[0]) for a in self.session.run(None, {self._input: preprocess(image)}))
        return self.faces(loc, conf, lms, h, w)
