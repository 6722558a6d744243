"""The lightest face-mask peer in our own table: AIZOOTech's FaceMaskDetection (MIT), for benchmarks only.

    python -m facemask.bench.peers [--scenes N] [hydra overrides]

Runs the peer as its authors do (`opencv_dnn_infer.py` at 256dc65: OpenCV DNN on the RGB frame resized
to 260x260 and scaled by 1/255; five feature maps with their anchors; box offsets decoded with
variances 0.1/0.1/0.2/0.2; one NMS over both classes at IoU 0.4 and score 0.5) and this project's
pipeline, as configured, over the same dev scenes in one process, one after the other per frame, and
scores both with the project's scene metric. A second peer row keeps its candidates down to score
0.05 (average precision ranks them all; its authors stop at 0.5). The peer has two classes (`mask`,
`no_mask`); it cannot answer `incorrect`, so that class's AP is 0 and its mAP is out of three like
ours. Prints one table and writes it to `reports/bench/peers.{csv,json}` with the machine it ran on.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask import machine
from facemask.config import Params, Weights, compose, validate
from facemask.data.fetch import resolve_weights
from facemask.data.voc import evaluation_folder, load_scenes
from facemask.errors import FacemaskError
from facemask.imageio import read_image
from facemask.pipeline import MaskPipeline
from facemask.scenes.average_precision import Prediction, scene_metrics
from facemask.scenes.evaluate import to_prediction

UPSTREAM = "https://github.com/AIZOOTech/FaceMaskDetection/raw/256dc65/models"
PROTOTXT = Weights(
    file="face_mask_detection.prototxt",
    mirror_path="aizoo/face_mask_detection.prototxt",
    url=f"{UPSTREAM}/face_mask_detection.prototxt",
    sha256="8de363802d3557f3d9ff7e72dd61eead60f5e9e145bb962d7979b99ff85d4212",
)
CAFFEMODEL = Weights(
    file="face_mask_detection.caffemodel",
    mirror_path="aizoo/face_mask_detection.caffemodel",
    url=f"{UPSTREAM}/face_mask_detection.caffemodel",
    sha256="3c2e89cffdc9459a69dd5c2e4c1ca263e6488a56a5a37d81ca2ff32344fbf740",
)
INPUT = (260, 260)
FEATURE_MAPS = (33, 17, 9, 5, 3)
ANCHOR_SIZES = ((0.04, 0.056), (0.08, 0.11), (0.16, 0.22), (0.32, 0.45), (0.64, 0.72))
ANCHOR_RATIOS = (1.0, 0.62, 0.42)
VARIANCES = np.array([0.1, 0.1, 0.2, 0.2], dtype=np.float32)
CLASSES = ("mask", "no_mask")  # the peer's class 0 (Mask) and 1 (NoMask), in our labels
OUTPUTS = ["loc_branch_concat", "cls_branch_concat"]
LOW_SCORE = 0.05  # a second peer row with every candidate down to this score: AP ranks them all


def anchors() -> np.ndarray:
    """(N, 4) anchors x1, y1, x2, y2 in fractions of the input, as the authors' `generate_anchors`:
    per cell both sizes at ratio 1, then the first size at the other ratios."""
    out = []
    for side, sizes in zip(FEATURE_MAPS, ANCHOR_SIZES, strict=True):
        centres = (np.arange(side, dtype=np.float32) + 0.5) / side
        cx, cy = np.meshgrid(centres, centres)
        shapes = [(s * np.sqrt(ANCHOR_RATIOS[0]), s / np.sqrt(ANCHOR_RATIOS[0])) for s in sizes]
        shapes += [(sizes[0] * np.sqrt(r), sizes[0] / np.sqrt(r)) for r in ANCHOR_RATIOS[1:]]
        half = np.array([[-w / 2, -h / 2, w / 2, h / 2] for w, h in shapes], dtype=np.float32)  # (A, 4)
        grid = np.stack([cx, cy, cx, cy], axis=-1)[:, :, None, :]  # (side, side, 1, 4)
        out.append((grid + half).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode(raw: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Offsets (N, 4) against `priors` -> boxes x1, y1, x2, y2 in fractions (`anchor_decode.py`)."""
    centre = (priors[:, :2] + priors[:, 2:]) / 2
    size = priors[:, 2:] - priors[:, :2]
    scaled = raw * VARIANCES
    xy = scaled[:, :2] * size + centre
    wh = np.exp(scaled[:, 2:]) * size
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)


class AizooPeer:
    """AIZOOTech's SSD through OpenCV DNN: faces with a class (`mask`/`no_mask`) and its score."""

    def __init__(self, prototxt: Path, caffemodel: Path, score_threshold: float = 0.5, nms_threshold: float = 0.4):
        self.net = cv2.dnn.readNet(str(prototxt), str(caffemodel))
        self.priors = anchors()
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold

    @classmethod
    def from_mirror(cls) -> AizooPeer:
        """The weights as ours come: the mirror copy, or a verified download from upstream."""
        return cls(resolve_weights(PROTOTXT, "peer.prototxt"), resolve_weights(CAFFEMODEL, "peer.caffemodel"))

    def with_score_threshold(self, score_threshold: float) -> AizooPeer:
        """The same loaded network, keeping candidates down to `score_threshold`."""
        other = copy.copy(self)
        other.score_threshold = score_threshold
        return other

    def __call__(self, frame: np.ndarray) -> Prediction:
        """One BGR frame -> the peer's answers in frame pixels, as the project's metric takes them."""
        h, w = frame.shape[:2]
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        self.net.setInput(cv2.dnn.blobFromImage(rgb, scalefactor=1 / 255.0, size=INPUT))
        loc, cls = self.net.forward(OUTPUTS)
        if loc.shape[1] != len(self.priors):
            raise ValueError(f"peer graph gave {loc.shape[1]} boxes for {len(self.priors)} anchors")
        boxes = decode(loc[0], self.priors) * np.array([w, h, w, h], dtype=np.float32)
        scores, classes = cls[0].max(axis=1), cls[0].argmax(axis=1)
        keep = np.nonzero(scores > self.score_threshold)[0]
        xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes[keep].tolist()]
        kept = keep[np.asarray(cv2.dnn.NMSBoxes(xywh, scores[keep].tolist(), self.score_threshold, self.nms_threshold),
                               dtype=int).reshape(-1)] if len(keep) else keep  # fmt: skip
        probabilities = np.zeros((len(kept), 3), dtype=np.float32)
        probabilities[:, :2] = cls[0][kept]
        return Prediction(
            boxes=boxes[kept].astype(np.float32).reshape(-1, 4),
            labels=[CLASSES[c] for c in classes[kept]],
            scores=scores[kept].astype(np.float32),
            confidences=np.ones(len(kept), dtype=np.float32),
            probabilities=probabilities,
        )


def compare(params: Params, limit: int | None) -> pd.DataFrame:
    """The peer and our pipeline over the same scenes, frame by frame in one process: one row each."""
    peer = AizooPeer.from_mirror()
    low = peer.with_score_threshold(LOW_SCORE)
    scenes = load_scenes(evaluation_folder(params.scenes), params.scenes.source.label_map)[:limit]
    ours = MaskPipeline.from_params(params, params.paths.classifier)
    labels = ours.labels
    if list(CLASSES) != labels[:2]:
        raise ValueError(f"the peer's classes {CLASSES} are not the first of the classifier's {labels}")
    answers = {
        "aizoo (peer)": peer,
        f"aizoo (peer, score >= {LOW_SCORE})": low,
        f"ours ({params.detector.name}@{params.pipeline.detect_long_side})": lambda f: to_prediction(ours(f), labels),
    }
    runs: dict[str, tuple[list, list]] = {name: ([], []) for name in answers}
    warm = read_image(scenes[0].image, params.data.max_image_pixels)
    for answer in answers.values():
        answer(warm)
    names = list(answers)
    for i, scene in enumerate(tqdm(scenes, desc="peer and ours", unit="scene")):
        frame = read_image(scene.image, params.data.max_image_pixels)
        for name in names[i % len(names) :] + names[: i % len(names)]:  # each goes first as often
            t0 = time.perf_counter()
            runs[name][0].append(answers[name](frame))
            runs[name][1].append((time.perf_counter() - t0) * 1000)
    gts = [(s.boxes, s.labels) for s in scenes]
    cfg, rows = params.scenes, []
    for name, (preds, ms) in runs.items():
        result = scene_metrics(gts, preds, labels, cfg.iou_threshold, cfg.size_bins, cfg.operating_precision)
        rows.append({
            "model": name, "scenes": len(scenes), "map": result["map"],
            **{f"ap_{lb}": v for lb, v in result["ap"].items()},
            "detector_recall": result["detector_recall"], "detector_precision": result["detector_precision"],
            "recall_at_precision": result["recall_at_precision"]["recall"],
            **{f"recall_{s}": c["recall"] for s, c in result["recall_by_size"]["all"].items() if s != "all"},
            "frame_ms_median": float(np.median(ms)), "frame_ms_p95": float(np.percentile(ms, 95)),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table["ms_ratio_to_peer"] = table["frame_ms_median"] / table["frame_ms_median"].iloc[0]
    table["map_ratio_to_peer"] = table["map"] / table["map"].iloc[0]
    return table.assign(machine=machine.label())


def write_table(table: pd.DataFrame, folder: Path, stem: str) -> None:
    """A benchmark table as `<stem>.csv` and `<stem>.json` (one record a row) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / f"{stem}.csv", index=False)
    (folder / f"{stem}.json").write_text(json.dumps(table.to_dict(orient="records"), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=None, help="the first N dev scenes (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="folder for peers.csv/json (default reports/bench)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for our pipeline")
    args = parser.parse_args(argv)
    try:
        params = validate(compose(args.overrides))
        table = compare(params, args.scenes)
    except (FacemaskError, ValueError, FileNotFoundError) as err:
        print(f"peers: {err}", file=sys.stderr)
        return 2
    write_table(table, args.out or params.paths.reports / "bench", "peers")
    print(table.drop(columns="machine").round(3).to_markdown(index=False))
    print(f"\n{machine.label()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
