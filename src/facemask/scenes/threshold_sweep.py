"""`python -m facemask.scenes.threshold_sweep {nms,score} [--thresholds ...] [hydra overrides]`: choose the
detector's thresholds on validation data only (the dev scenes play no part).

`nms`: `detector.nms_threshold`. For each threshold, with the configured detector and `pipeline` settings:
- close-up photos of the val split (the ingest manifest's `photo` rows): how many show one face boxed
  twice, i.e. two detections of score >= `crop.min_score` overlapping at IoU >= 0.15 with the centre
  of one inside the other (an enlarged face the detector boxes whole and again around the mask);
- the val-split training scenes: detector recall and precision at `scenes.iou_threshold` and the
  class-agnostic AP (boxes mapped by `detector.box_fit`), where too low a threshold would merge
  neighbours in a crowd.
The largest threshold that leaves (almost) no double box on the photos without lowering the scenes'
AP is the one to configure.

`score`: `detector.score_threshold`, the candidate threshold. Every detection at or above it goes
through the classifier, whose rejection class drops the false ones, and is answered with its score
(the detector's times p(face)): the threshold decides how far down the ranking the pipeline looks. For
each threshold the classifier's rejection threshold is fitted on the val-split training scenes exactly
as the train stage fits it (`scenes.rejection`); the row shows the val-scene mAP it reaches, with the
detector recall and precision of everything answered. The largest threshold within `--tolerance` of
the best mAP is the one to configure (a lower one adds low-scored faces for no measured gain).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask.boxes import iou_matrix
from facemask.classifier import MaskClassifier
from facemask.config import compose, validate
from facemask.data.manifest import split_scenes
from facemask.detection import build_detector
from facemask.errors import FacemaskError
from facemask.imageio import read_image
from facemask.pipeline import detect_at
from facemask.scenes.detection import detect_scenes, detector_scores
from facemask.scenes.rejection import fit_rejection

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


def nms_sweep(thresholds: list[float], overrides: list[str], split: str = "val") -> pd.DataFrame:
    """One row per NMS threshold: photos boxed twice, scene recall, precision and AP."""
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


def score_sweep(thresholds: list[float], overrides: list[str], classifier: Path | None = None) -> pd.DataFrame:
    """One row per candidate threshold: the rejection threshold fitted for it, val mAP, recall and
    precision; `classifier`: the pipeline's own (`paths.classifier`) when None."""
    base = validate(compose(overrides), "conf/ + overrides")
    model = MaskClassifier.load(classifier or base.paths.classifier, base.pipeline.classifier_runtime)
    rows = []
    for t in thresholds:
        params = validate(compose([*overrides, f"detector.score_threshold={t}"]), f"score_threshold={t}")
        reject, table, _ = fit_rejection(params, model)
        best = table[table["reject_min_probability"] == reject].iloc[0]
        rows.append({"score_threshold": t, "reject_min_probability": reject, "val mAP": round(best["map"], 4),
                     "val recall": round(best["detector_recall"], 4),
                     "val precision": round(best["detector_precision"], 4)})  # fmt: skip
    return pd.DataFrame(rows)


def largest_near_best(table: pd.DataFrame, column: str, tolerance: float) -> float:
    """The largest threshold whose `column` is within `tolerance` of the best."""
    near = table[table[column] >= table[column].max() - tolerance]
    return float(near.iloc[:, 0].max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.scenes.threshold_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="which", required=True)
    nms = sub.add_parser("nms", help="detector.nms_threshold")
    nms.add_argument("--thresholds", type=float, nargs="+", default=[0.4, 0.3, 0.25, 0.2, 0.15, 0.1])
    nms.add_argument("--split", choices=("train", "val"), default="val", help="never the test split")
    score = sub.add_parser("score", help="detector.score_threshold (the candidates)")
    score.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.3, 0.2, 0.15, 0.1, 0.05])
    score.add_argument("--classifier", type=Path, help="a classifier artefact (default: paths.classifier)")
    score.add_argument("--tolerance", type=float, default=0.002, help="val mAP within this of the best")
    for p in (nms, score):
        p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. detector=yunet")
    args = parser.parse_args(argv)
    try:
        if args.which == "nms":
            table = nms_sweep(args.thresholds, args.overrides, args.split)
        else:
            table = score_sweep(args.thresholds, args.overrides, args.classifier)
    except (FacemaskError, FileNotFoundError, ValueError) as err:
        print(f"threshold_sweep: {err}", file=sys.stderr)
        return 2
    print(table.to_markdown(index=False))
    if args.which == "score":
        best = largest_near_best(table, "val mAP", args.tolerance)
        print(f"\nlargest threshold within {args.tolerance} of the best val mAP: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
