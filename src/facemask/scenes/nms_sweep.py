"""`python -m facemask.scenes.nms_sweep [--thresholds 0.4 0.3 0.2] [hydra overrides]`: choose the
detector's `nms_threshold` on validation data only.

For each threshold, with the configured detector and `pipeline` settings (as served):
- close-up photos of the val split (the ingest manifest's `photo` rows): how many show one face boxed
  twice, i.e. two detections of score >= `crop.min_score` overlapping at IoU >= 0.15 with the centre
  of one inside the other (an enlarged face the detector boxes whole and again around the mask);
- the val-split training scenes: detector recall and precision at `scenes.iou_threshold` and the
  class-agnostic AP (boxes mapped by `detector.box_fit`), where too low a threshold would merge
  neighbours in a crowd.
The largest threshold that leaves (almost) no double box on the photos without lowering the scenes'
AP is the one to configure. The dev scenes play no part.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask.boxes import iou_matrix
from facemask.config import compose, validate
from facemask.data.manifest import split_scenes
from facemask.detection import build_detector
from facemask.errors import FacemaskError
from facemask.imageio import read_image
from facemask.pipeline import detect_at
from facemask.scenes.detection import detect_scenes, detector_scores

DUPLICATE_IOU = 0.15


def boxed_twice(boxes: np.ndarray) -> bool:
    """Two boxes overlapping at IoU >= `DUPLICATE_IOU` with one's centre inside the other."""
    if len(boxes) < 2:
        return False
    iou = iou_matrix(boxes, boxes)
    np.fill_diagonal(iou, 0)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (
        (cx[:, None] > boxes[None, :, 0]) & (cx[:, None] < boxes[None, :, 2])
        & (cy[:, None] > boxes[None, :, 1]) & (cy[:, None] < boxes[None, :, 3])
    )  # fmt: skip
    return bool(((iou >= DUPLICATE_IOU) & inside).any())


def sweep(thresholds: list[float], overrides: list[str], split: str = "val") -> pd.DataFrame:
    base = validate(compose(overrides), "conf/ + overrides")
    manifest = pd.read_csv(base.paths.manifest)
    photos = manifest[(manifest.kind == "photo") & (manifest.split == split)]
    scenes = split_scenes(base.paths.manifest, base.paths.raw, split)
    images = [base.paths.raw / row.source / row.relpath for row in photos.itertuples()]
    rows = []
    for t in thresholds:
        params = validate(compose([*overrides, f"detector.nms_threshold={t}"]), f"nms_threshold={t}")
        detector = build_detector(params.detector)
        twice = 0
        for path in tqdm(images, desc=f"photos (nms {t})", unit="photo"):
            faces = detect_at(detector, read_image(path, params.data.max_image_pixels), params.pipeline)
            twice += boxed_twice(np.array([f.box for f in faces if f.score >= params.crop.min_score], np.float32))
        found = detect_scenes(detector, params.pipeline, scenes, params.data.max_image_pixels)
        sc = params.scenes
        s = detector_scores(scenes, found, sc.iou_threshold, sc.size_bins, params.detector.box_fit)
        rows.append({"nms_threshold": t, "photos boxed twice": f"{twice}/{len(images)}",
                     "scene recall": s["recall"], "scene precision": s["precision"], "scene AP": s["ap"]})  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.scenes.nms_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. detector=yunet")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.3, 0.25, 0.2, 0.15, 0.1])
    parser.add_argument("--split", choices=("train", "val"), default="val", help="never the test split")
    args = parser.parse_args(argv)
    try:
        table = sweep(args.thresholds, args.overrides, args.split)
    except (FacemaskError, FileNotFoundError) as err:
        print(f"nms_sweep: {err}", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
