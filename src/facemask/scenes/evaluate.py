"""Running the detection pipeline over annotated scenes and writing what a person looks at.

`evaluate_scenes` is shared by the DVC stages (`scenes`, `detectors`) and the ad-hoc command
`python -m facemask.scenes` (any VOC folder, any model), so all three report the same figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from facemask import plots
from facemask.boxes import match
from facemask.classifier import MaskClassifier
from facemask.compute import ordered_map
from facemask.config import Params
from facemask.data.voc import Scene, evaluation_folder, load_scenes
from facemask.draw import UNKNOWN, label_colours
from facemask.imageio import read_image
from facemask.pipeline import FaceResult, MaskPipeline, compliant_label, face_labels
from facemask.scenes.average_precision import MISSED, SIZES, Prediction, scene_metrics


@dataclass
class SceneRun:
    scenes: list[Scene]
    predictions: list[Prediction]
    labels: list[str]  # the pipeline's face classes
    compliant: str  # ... and the one worn correctly
    detect_ms: np.ndarray
    classify_ms: np.ndarray
    max_pixels: int  # the decoder's limit the scenes were read with

    @property
    def timing(self) -> dict[str, float]:
        total = self.detect_ms + self.classify_ms
        return {
            "detect_ms_median": float(np.median(self.detect_ms)),
            "classify_ms_median": float(np.median(self.classify_ms)),
            "frame_ms_median": float(np.median(total)),
            "fps": float(1000.0 / np.median(total)),
        }


@dataclass(frozen=True)
class PipelineSpec:
    """What a process needs to build the pipeline it runs over scenes (sent to engine workers)."""

    params: Params
    classifier: Path
    warm_up: Path | None  # a frame run once before the timed ones
    one_thread: bool  # a worker among several: one thread each, the processes are the parallelism


def build_pipeline(spec: PipelineSpec) -> MaskPipeline:
    if spec.one_thread:
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
    pipeline = MaskPipeline.from_params(spec.params, spec.classifier)
    if spec.warm_up is not None:
        pipeline(read_image(spec.warm_up, spec.params.data.max_image_pixels))
    return pipeline


def predict_scene(pipeline: MaskPipeline, item: tuple[Path, int]) -> tuple[Prediction, float, float]:
    """One scene through the pipeline: (its prediction, detection ms, classification ms)."""
    image, max_pixels = item
    frame = read_image(image, max_pixels)
    t0 = time.perf_counter()
    faces = pipeline.detect_faces(frame)
    t1 = time.perf_counter()
    results = pipeline.classify(frame, faces)
    t2 = time.perf_counter()
    return to_prediction(results, pipeline.labels), (t1 - t0) * 1000, (t2 - t1) * 1000


def to_prediction(results: list[FaceResult], labels: list[str]) -> Prediction:
    """The pipeline's answer for one scene as the metrics take it."""
    return Prediction(
        boxes=np.array([r.box for r in results], dtype=np.float32).reshape(-1, 4),
        labels=[r.label for r in results],
        scores=np.array([r.score for r in results], dtype=np.float32),
        confidences=np.array([r.confidence for r in results], dtype=np.float32),
        probabilities=np.array([[r.probabilities[lb] for lb in labels] for r in results], dtype=np.float32).reshape(
            -1, len(labels)
        ),
    )


def run_pipeline(params: Params, classifier: Path, scenes: list[Scene], desc: str = "scenes") -> SceneRun:
    """The pipeline over every scene, timed per stage, on `scenes.workers` processes of the engine
    (one: in this process, whose timings are the figures a single pipeline gets on this host)."""
    max_pixels = params.data.max_image_pixels
    workers = min(params.scenes.workers, max(1, len(scenes)))
    warm_up = scenes[0].image if scenes else None
    spec = PipelineSpec(params, Path(classifier), warm_up, one_thread=not params.engine.in_process(workers))
    items = ((scene.image, max_pixels) for scene in scenes)
    model = MaskClassifier.load(classifier)
    outputs = list(tqdm(ordered_map(predict_scene, items, build_pipeline, spec, workers, params.engine),
                        total=len(scenes), desc=desc, unit="scene"))  # fmt: skip
    preds = [p for p, _, _ in outputs]
    det_ms = np.array([d for _, d, _ in outputs])
    cls_ms = np.array([c for _, _, c in outputs])
    return SceneRun(scenes, preds, face_labels(model), compliant_label(model), det_ms, cls_ms, max_pixels)


def evaluate_scenes(params: Params, classifier: Path, desc: str = "scenes") -> tuple[SceneRun, dict]:
    """The pipeline `params` describes, with this classifier, over the configured scenes: the
    run and its figures (mAP, AP per class, recall by size, timing)."""
    cfg = params.scenes
    scenes = load_scenes(evaluation_folder(cfg), cfg.source.label_map)
    run = run_pipeline(params, classifier, scenes, desc)
    gts = [(s.boxes, s.labels) for s in scenes]
    result = scene_metrics(gts, run.predictions, run.labels, cfg.iou_threshold, cfg.size_bins, cfg.operating_precision)
    result.update(run.timing, scenes=len(scenes), ignored_objects=sum(len(s.ignored) for s in scenes))
    return run, result


def errors(run: SceneRun, iou_threshold: float) -> pd.DataFrame:
    """Every error, worst first: wrong class on a found face (by confidence), a false detection (by
    score), a missed face (largest first: the easier it looked, the worse the miss)."""
    rows = []
    for i, (scene, pred) in enumerate(zip(run.scenes, run.predictions, strict=True)):
        pairs = match(scene.boxes, pred.boxes, pred.scores, iou_threshold)
        for g, (box, label) in enumerate(zip(scene.boxes, scene.labels, strict=True)):
            if g not in pairs:
                side = float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))
                rows.append((i, "missed", label, MISSED, 0.5 + min(side / 200, 0.5), box))
            elif pred.labels[pairs[g]] != label:
                p = pairs[g]
                rows.append((i, "wrong class", label, pred.labels[p], 1.0 + float(pred.confidences[p]), pred.boxes[p]))
        for p in set(range(len(pred.labels))) - set(pairs.values()):
            rows.append((i, "false face", "-", pred.labels[p], float(pred.scores[p]), pred.boxes[p]))
    frame = pd.DataFrame(rows, columns=["scene", "kind", "actual", "predicted", "severity", "box"])
    return frame.sort_values("severity", ascending=False, kind="stable").reset_index(drop=True)


def gallery(run: SceneRun, table: pd.DataFrame, count: int, tile: int = 160) -> np.ndarray:
    """A grid of the `count` worst errors: the face with some context, and what went wrong."""
    tiles, colours = [], label_colours(run.labels, run.compliant)
    for row in table.head(count).itertuples():
        image = read_image(run.scenes[row.scene].image, run.max_pixels)
        x1, y1, x2, y2 = row.box
        pad = 0.6 * max(x2 - x1, y2 - y1)
        h, w = image.shape[:2]
        cx1, cy1 = int(max(0, x1 - pad)), int(max(0, y1 - pad))
        cx2, cy2 = int(min(w, x2 + pad)), int(min(h, y2 + pad))
        crop = image[cy1:cy2, cx1:cx2].copy()
        colour = colours.get(row.predicted, UNKNOWN) if row.kind != "missed" else (255, 255, 255)
        cv2.rectangle(crop, (int(x1 - cx1), int(y1 - cy1)), (int(x2 - cx1), int(y2 - cy1)), colour, 1)
        scale = (tile - 28) / max(crop.shape[:2])
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        canvas = np.full((tile, tile, 3), 32, np.uint8)
        canvas[: crop.shape[0], : crop.shape[1]] = crop
        text = {"missed": f"missed {row.actual}", "false face": f"no face -> {row.predicted}"}.get(
            row.kind, f"{row.actual} -> {row.predicted}"
        )
        cv2.putText(canvas, text, (3, tile - 16), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.putText(
            canvas,
            run.scenes[row.scene].name[-26:],
            (3, tile - 4),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.33,
            (170, 170, 170),
            1,
            cv2.LINE_AA,
        )
        tiles.append(canvas)
    if not tiles:
        return np.full((tile, tile, 3), 32, np.uint8)
    cols = min(6, len(tiles))
    tiles += [np.full((tile, tile, 3), 32, np.uint8)] * (-len(tiles) % cols)
    return np.vstack([np.hstack(tiles[r : r + cols]) for r in range(0, len(tiles), cols)])


def write_reports(
    run: SceneRun, result: dict, labels: list[str], out: Path, gallery_size: int, iou_threshold: float
) -> dict[str, object]:
    """metrics.json-ready summary, PR curves (CSV per class), confusion CSV and figures under `out`;
    returns the figures by file name (for MLflow)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "pr").mkdir(exist_ok=True)
    for label, precision in result["pr"].items():
        pd.DataFrame({"recall": result["recall_points"], "precision": precision}).to_csv(
            out / "pr" / f"{label}.csv", index=False
        )
    rows = [
        {"actual": a, "predicted": p}
        for a, row in result["confusion"].items()
        for p, n in row.items()
        for _ in range(n)
    ]
    pd.DataFrame(rows, columns=["actual", "predicted"]).to_csv(out / "confusion.csv", index=False)
    table = errors(run, iou_threshold)
    table.drop(columns="box").to_csv(out / "errors.csv", index=False)
    cv2.imwrite(str(out / "worst_errors.png"), gallery(run, table, gallery_size))
    cols = [*labels, MISSED]
    matrix = np.array([[result["confusion"][a][p] for p in cols] for a in labels])
    figures = {
        "recall_by_size.png": plots.recall_by_size(result["recall_by_size"], labels, SIZES),
        "confusion.png": plots.confusion_matrix(matrix, labels, "Matched faces (scenes)", columns=cols),
        "pr_curves.png": plots.pr_curves(
            {lb: pd.DataFrame({"recall": result["recall_points"], "precision": pr}) for lb, pr in result["pr"].items()},
            result["ap"],
            title=f"Precision-recall on scenes (IoU {iou_threshold})",
        ),
    }
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
    return figures


def summary(result: dict) -> dict:
    """The scalar figures (DVC metrics, MLflow metrics)."""
    keep = (
        "map",
        "map_top1",
        "detector_recall",
        "detector_precision",
        "matched_accuracy",
        "faces",
        "detections",
        "scenes",
        "detect_ms_median",
        "classify_ms_median",
        "frame_ms_median",
        "fps",
        "iou_threshold",
    )
    out = {k: result[k] for k in keep}
    out["ap"] = result["ap"]
    out["ap_top1"] = result["ap_top1"]
    out["recall"] = {lb: {s: v["recall"] for s, v in sizes.items()} for lb, sizes in result["recall_by_size"].items()}
    out["false_positives"] = result["false_positives"]
    out["recall_at_precision"] = result["recall_at_precision"]
    out["ap_by_size"] = result["ap_by_size"]
    return out


def flat_metrics(result: dict, prefix: str = "scenes.") -> dict[str, float]:
    """MLflow metric names for a scene evaluation."""
    flat = {
        f"{prefix}{k}": float(result[k])
        for k in ("map", "map_top1", "detector_recall", "fps", "frame_ms_median")
        if result.get(k) is not None
    }
    flat[f"{prefix}recall_at_precision"] = float(result["recall_at_precision"]["recall"])
    flat.update({f"{prefix}map.{s}": v["map"] for s, v in result["ap_by_size"].items() if v["map"] is not None})
    flat.update({f"{prefix}ap.{lb}": v for lb, v in result["ap"].items()})
    flat.update({f"{prefix}ap_top1.{lb}": v for lb, v in result["ap_top1"].items()})
    for label, sizes in result["recall_by_size"].items():
        flat.update({f"{prefix}recall.{label}.{s}": c["recall"] for s, c in sizes.items() if c["recall"] is not None})
    return flat
