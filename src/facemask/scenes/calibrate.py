"""`python -m facemask.scenes.calibrate [hydra overrides]`: measure `detector.box_fit`.

Face detectors and annotators disagree on where a face box ends: YuNet's box reaches up to the
forehead, the hand-drawn boxes of the face-mask scenes sit lower and are shorter. Each annotated face
is paired with the detection it overlaps most (IoU >= `--min-iou`); the median centre shift (as a
fraction of the detected box) and side ratios are the fit. It prints the YAML to put under
`box_fit:` in `conf/detector/<name>.yaml` and the detector recall at `scenes.iou_threshold` without
and with it. No classifier is involved: only the detector and `pipeline.detect_long_side`.

Fit on the val-split training scenes (`--split val`, the default: the ingest manifest's scenes), or on a
folder (`--split eval`: `scenes.dir` / `scenes.source`). The dev scenes only measure: fitting on them
tunes the pipeline to the figures it is judged by.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from facemask.boxes import match
from facemask.config import BoxFit, compose, validate
from facemask.data.manifest import split_scenes
from facemask.data.voc import Scene, evaluation_folder, load_scenes
from facemask.detection import build_detector
from facemask.errors import FacemaskError
from facemask.scenes.detection import detect_scenes, detector_scores


def measure(scenes: list[Scene], detections: list[np.ndarray], min_iou: float = 0.3) -> tuple[BoxFit, int]:
    """The median box fit over annotated faces paired with a detection; returns it and the pair count.
    `detections[i]` is an (N, 5) array of x1, y1, x2, y2, score for `scenes[i]`."""
    rows = []
    for scene, det in zip(scenes, detections, strict=True):
        pairs = match(scene.boxes, det[:, :4], det[:, 4], min_iou)
        for g, p in pairs.items():
            (gx1, gy1, gx2, gy2), (px1, py1, px2, py2) = scene.boxes[g], det[p, :4]
            pw, ph = px2 - px1, py2 - py1
            rows.append(
                (
                    (gx2 - gx1) / pw,
                    (gy2 - gy1) / ph,
                    ((gx1 + gx2) - (px1 + px2)) / 2 / pw,
                    ((gy1 + gy2) - (py1 + py2)) / 2 / ph,
                )
            )
    if not rows:
        raise ValueError("no annotated face overlaps a detection: nothing to calibrate on")
    sw, sh, dx, dy = (round(float(v), 3) for v in np.median(np.asarray(rows), axis=0))
    return BoxFit(scale_w=sw, scale_h=sh, shift_x=dx, shift_y=dy), len(rows)


def recall(scenes: list[Scene], detections: list[np.ndarray], iou: float, fit: BoxFit) -> float:
    """Share of annotated faces matched by a detection (boxes mapped by `fit`) at `iou`."""
    return detector_scores(scenes, detections, iou, (32, 96), fit)["recall"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.scenes.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. detector=retinaface_mnet scenes.dir=/path")
    parser.add_argument("--min-iou", type=float, default=0.3, help="pair a face with a detection from this IoU")
    parser.add_argument(
        "--split",
        choices=("train", "val", "test", "eval"),
        default="val",
        help="the manifest's training scenes of this split (run `dvc repro ingest` first), or `eval`: the "
        "evaluation folder (scenes.dir or scenes.source)",
    )
    args = parser.parse_args(argv)
    try:
        params = validate(compose(args.overrides), "conf/ + overrides")
        if args.split == "eval":
            scenes = load_scenes(evaluation_folder(params.scenes), params.scenes.source.label_map)
        else:
            scenes = split_scenes(params.paths.manifest, params.paths.raw, args.split)
        detections = detect_scenes(
            build_detector(params.detector), params.pipeline, scenes, params.data.max_image_pixels
        )
        fit, pairs = measure(scenes, detections, args.min_iou)
    except (FacemaskError, FileNotFoundError, ValueError) as err:
        print(f"calibrate: {err}", file=sys.stderr)
        return 2
    iou = params.scenes.iou_threshold
    where = "the evaluation folder" if args.split == "eval" else f"the {args.split}-split training scenes"
    print(f"{pairs} face/detection pairs in {len(scenes)} scenes of {where} ({params.detector.name})")
    print(f"detector recall at IoU {iou}: {recall(scenes, detections, iou, BoxFit()):.3f} as detected, "
          f"{recall(scenes, detections, iou, fit):.3f} with this fit, "
          f"{recall(scenes, detections, iou, params.detector.box_fit):.3f} with the configured one")  # fmt: skip
    print("box_fit:")
    for key, value in fit.model_dump().items():
        print(f"  {key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
