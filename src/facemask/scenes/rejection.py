"""The classifier's rejection threshold, fitted on validation scenes (the dev scenes only measure).

A classifier trained with a `background` class drops a detection it gives that class
`reject_min_probability` or more. Where that threshold should sit depends on the classifier (how
sure of itself it is) and on the detector, so it is fitted for each trained classifier: every val-split
training scene goes through the pipeline once (detections and raw class probabilities kept), then each
threshold of a grid turns them into answers; the scene mAP decides, and among thresholds within 0.002 of
the best mAP the detector's F1 (mAP hardly sees false faces ranked last). The train stage records the
chosen value in the classifier artefact; `pipeline.reject_min_probability: null` serves with it. The
same pass, answered at the chosen threshold, is the drift reference (`facemask.drift`) stored beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask import drift
from facemask.classifier import MaskClassifier
from facemask.config import Params
from facemask.data.manifest import split_scenes
from facemask.data.voc import Scene
from facemask.detection import Face, build_detector
from facemask.imageio import read_image
from facemask.pipeline import MaskPipeline
from facemask.scenes.average_precision import scene_metrics
from facemask.scenes.evaluate import to_prediction

GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


def scene_passes(pipeline: MaskPipeline, scenes: list[Scene], max_pixels: int) -> list[tuple[list[Face], np.ndarray]]:
    """Each scene through the pipeline once: its detections and their raw class probabilities."""
    if not scenes:
        raise ValueError("no validation scenes to fit the rejection threshold on")
    passes = []
    for scene in tqdm(scenes, desc="rejection threshold", unit="scene"):
        frame = read_image(scene.image, max_pixels)
        faces = pipeline.detect_faces(frame)
        passes.append((faces, pipeline.probabilities(frame, faces)))
    return passes


def rejection_sweep(
    pipeline: MaskPipeline,
    scenes: list[Scene],
    max_pixels: int,
    iou_threshold: float,
    size_bins: tuple[int, int],
    grid: tuple[float, ...] = GRID,
    passes: list[tuple[list[Face], np.ndarray]] | None = None,
) -> pd.DataFrame:
    """One row per threshold: mAP, detector recall and precision of the pipeline over `scenes`
    (their `scene_passes`, made here unless given)."""
    raw = passes if passes is not None else scene_passes(pipeline, scenes, max_pixels)
    gts = [(s.boxes, s.labels) for s in scenes]
    rows = []
    for threshold in grid:
        preds = [to_prediction(pipeline.results(f, p, threshold), pipeline.labels) for f, p in raw]
        m = scene_metrics(gts, preds, pipeline.labels, iou_threshold, size_bins)
        rows.append(
            {
                "reject_min_probability": threshold,
                "map": m["map"],
                "detector_recall": m["detector_recall"],
                "detector_precision": m["detector_precision"],
            }
        )
    return pd.DataFrame(rows)


def best_threshold(sweep: pd.DataFrame, tolerance: float = 0.002) -> float:
    """The threshold with the highest mAP; among those within `tolerance` of it, the best detector F1.
    mAP alone barely sees false faces the classifier doubts (their score is the detector's times
    p(face), so they rank last): on real val scenes it was flat to 2e-5 from 0.9 to 1.0 (no rejection),
    where precision fell from 0.65 to 0.52. Ties on F1 go to the threshold that rejects least."""
    near = sweep[sweep["map"] >= sweep["map"].max() - tolerance]
    recall, precision = near["detector_recall"], near["detector_precision"]
    f1 = (2 * recall * precision / (recall + precision)).fillna(0).round(6)
    return float(near.loc[f1 == f1.max(), "reject_min_probability"].max())


def fit_rejection(params: Params, classifier: MaskClassifier) -> tuple[float, pd.DataFrame, dict[str, Any]]:
    """The threshold for `classifier` with the configured detector and pipeline, fitted on the
    val-split training scenes of the ingest manifest; the sweep it was chosen from; and the drift
    reference: what the pipeline answers on those scenes at that threshold (`facemask.drift`)."""
    scenes = split_scenes(params.paths.manifest, params.paths.raw, "val")
    settings = params.pipeline.model_copy(update={"reject_min_probability": None})
    pipeline = MaskPipeline.from_classifier(
        build_detector(params.detector), classifier, params.crop.model_dump(), settings, params.detector.box_fit
    )
    passes = scene_passes(pipeline, scenes, params.data.max_image_pixels)
    sweep = rejection_sweep(
        pipeline, scenes, params.data.max_image_pixels, params.scenes.iou_threshold, params.scenes.size_bins,
        passes=passes,
    )  # fmt: skip
    threshold = best_threshold(sweep)
    frames = (drift.frame_samples(pipeline.results(f, p, threshold)) for f, p in passes)
    return threshold, sweep, drift.reference(frames, pipeline.labels)
