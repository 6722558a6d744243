"""`make bench-front`: accuracy against time for every way of finding faces, the peer on the same plot.

    python -m facemask.bench.front                          # 3 detectors x 6 sizes x fp32/int8
    python -m facemask.bench.front --detectors retinaface_ft --sizes 320 640 --precisions fp32 --scenes 40

Each row is the pipeline as served (the trained classifier in its served runtime, its crops and its
rejection threshold) with one detector (`detectors.<name>`), one full-pass input size
(`pipeline.detect_long_side`) and one detector precision: `fp32`, the graph as shipped, or `int8`,
ONNX Runtime's static quantization of it calibrated on val-split training scenes (ONNX Runtime
detectors only; YuNet runs in OpenCV). Per row, in one process, one row after the other:
- the dev scenes: mAP, AP per class, recall by face size, the frame's median and p95 ms, frames/s;
- the val-split training scenes: mAP (the figure a choice may be made on; the dev scenes only measure);
- close-up photos of the test split (a door camera's faces): macro-F1 of the class answered for the
  photo's highest-scored face, a photo with no face counting as wrong.
The AIZOO peer (`facemask.bench.peers`) is measured first in the same run on the same frames. Writes
reports/bench/front.{csv,json} and front.png (dev mAP against ms a frame, the front of rows no other
row beats on both drawn, the peer marked) and logs them to MLflow as one run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from tqdm import tqdm

from facemask import machine
from facemask.bench.peers import AizooPeer, write_table
from facemask.classifier import MaskClassifier
from facemask.config import Params, Pipeline, compose, validate
from facemask.data.manifest import split_scenes
from facemask.data.voc import Scene, evaluation_folder, load_scenes
from facemask.detection import FaceDetector, build_detector, detector_backend
from facemask.detection.base import LargeFacePass
from facemask.errors import FacemaskError
from facemask.imageio import read_image
from facemask.onnx_sessions import ort_session
from facemask.pipeline import MaskPipeline, detect_at, face_labels
from facemask.quantization import quantize_graph
from facemask.scenes.average_precision import Prediction, scene_metrics
from facemask.scenes.evaluate import to_prediction

DETECTORS = ("retinaface_ft", "yunet", "centerface")
SIZES = (256, 320, 416, 512, 640, 800)
CALIBRATION_SCENES = 32


def detector_graph(name: str, params: Params) -> bytes | None:
    """The ONNX graph a detector's session runs (None: not run by ONNX Runtime)."""
    cfg = params.detectors[name]
    if name == params.detector_train.target:
        return Path(params.paths.detector_onnx).read_bytes()
    if name == "centerface":
        import onnx
        from onnx import version_converter

        from facemask.detection.centerface import dynamic_graph

        model = onnx.load_from_string(dynamic_graph(detector_backend(cfg).weights_file(cfg)))
        if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            model = version_converter.convert_version(model, 13)  # per-channel int8 needs opset 13
        return model.SerializeToString()
    return None


def int8_detector(detector: FaceDetector, graph: bytes, frames: list[np.ndarray], settings: Pipeline) -> FaceDetector:
    """A copy of `detector` on its graph quantized to int8, calibrated on what it is fed for `frames`
    by the pipeline's one detection call (`detect_at` with `settings`)."""
    if isinstance(detector, LargeFacePass):  # the wrapper keeps its pass; the network inside is quantized
        quantized = copy.copy(detector)
        quantized.detector = int8_detector(detector.detector, graph, frames, settings)
        return quantized
    feeds: list[dict] = []
    session = detector.session

    class Recorder:
        def run(self, outputs, inputs):
            feeds.append({k: v.copy() for k, v in inputs.items()})
            return session.run(outputs, inputs)

        def __getattr__(self, name):
            return getattr(session, name)

    detector.session = Recorder()
    try:
        for frame in frames:
            detect_at(detector, frame, settings)
    finally:
        detector.session = session
    quantized = copy.copy(detector)
    quantized.session = ort_session(quantize_graph(graph, iter(feeds)))
    return quantized


def photo_set(params: Params, per_label: int) -> list[tuple[np.ndarray, str]]:
    """Close-up photos of the test split, the first `per_label` of each label by id, decoded."""
    manifest = pd.read_csv(params.paths.manifest, keep_default_na=False)
    photos = manifest[(manifest["kind"] == "photo") & (manifest["split"] == "test")].sort_values("id")
    rows = photos.groupby("label", sort=True).head(per_label)
    raw, max_pixels = Path(params.paths.raw), params.data.max_image_pixels
    return [(read_image(raw / r.source / r.relpath, max_pixels), r.label) for r in rows.itertuples()]


def photo_f1(answer: Callable[[np.ndarray], Prediction], photos: list, labels: list[str]) -> float:
    """Macro-F1 over the face labels of the class answered for each photo's highest-scored face."""
    truth, said = [], []
    for frame, label in photos:
        pred = answer(frame)
        truth.append(label)
        said.append(pred.labels[int(np.argmax(pred.scores))] if len(pred.scores) else "missed")
    return float(f1_score(truth, said, labels=labels, average="macro", zero_division=0))


def measure(answer: Callable[[np.ndarray], Prediction], frames: list[np.ndarray], scenes: list[Scene],
            params: Params, labels: list[str]) -> tuple[dict, list[float]]:  # fmt: skip
    """`answer` over `frames` (the decoded `scenes`): the scene metrics and each frame's ms."""
    answer(frames[0])  # warm-up
    preds, ms = [], []
    for frame in frames:
        t0 = time.perf_counter()
        preds.append(answer(frame))
        ms.append((time.perf_counter() - t0) * 1000)
    cfg = params.scenes
    gts = [(s.boxes, s.labels) for s in scenes]
    return scene_metrics(gts, preds, labels, cfg.iou_threshold, cfg.size_bins, cfg.operating_precision), ms


def front(params: Params, detectors: list[str], sizes: list[int], precisions: list[str], scenes_limit: int | None,
          val_limit: int | None, photos_per_label: int) -> pd.DataFrame:  # fmt: skip
    max_pixels = params.data.max_image_pixels
    dev = load_scenes(evaluation_folder(params.scenes), params.scenes.source.label_map)[:scenes_limit]
    val = split_scenes(params.paths.manifest, params.paths.raw, "val")[:val_limit]
    dev_frames = [read_image(s.image, max_pixels) for s in dev]
    val_frames = [read_image(s.image, max_pixels) for s in val]
    photos = photo_set(params, photos_per_label)
    classifier = MaskClassifier.load(params.paths.classifier, params.pipeline.classifier_runtime)
    labels = face_labels(classifier)
    rows = []
    peer = AizooPeer.from_mirror().with_score_threshold(0.05)
    result, ms = measure(peer, dev_frames, dev, params, labels)
    rows.append(_row("aizoo (peer)", "AizooPeer", 260, "fp32", result, ms, None, photo_f1(peer, photos, labels)))
    for name in detectors:
        cfg = params.detectors[name]
        detector = build_detector(cfg)
        graph = detector_graph(name, params) if "int8" in precisions else None
        for precision in precisions:
            if precision == "int8" and graph is None:
                print(f"front: {name} is not run by ONNX Runtime: no int8 rows", file=sys.stderr)
                continue
            used = (
                detector
                if precision == "fp32"
                else int8_detector(detector, graph, val_frames[:CALIBRATION_SCENES], params.pipeline)
            )
            for size in tqdm(sizes, desc=f"{name} {precision}", unit="size"):
                settings = params.pipeline.model_copy(update={"detect_long_side": size})
                pipe = MaskPipeline.from_classifier(used, classifier, params.crop.model_dump(), settings, cfg.box_fit)
                answer = lambda f, pipe=pipe: to_prediction(pipe(f), labels)  # noqa: E731
                dev_result, ms = measure(answer, dev_frames, dev, params, labels)
                val_result, _ = measure(answer, val_frames, val, params, labels)
                f1 = photo_f1(answer, photos, labels)
                rows.append(_row(name, type(used).__name__, size, precision, dev_result, ms, val_result["map"], f1))
    table = pd.DataFrame(rows)
    ours = table[table["detector"] != "aizoo (peer)"]
    table["on_front"] = False
    table.loc[ours.index, "on_front"] = on_front(ours)
    peer_row = table.iloc[0]
    table["ms_ratio_to_peer"] = table["frame_ms_median"] / peer_row["frame_ms_median"]
    table["map_ratio_to_peer"] = table["dev_map"] / peer_row["dev_map"]
    return table.assign(scenes=len(dev), val_scenes=len(val), photos=len(photos), machine=machine.label())


def _row(detector: str, backend: str, size: int, precision: str, result: dict, ms: list[float],
         val_map: float | None, photo_f1_: float) -> dict:  # fmt: skip
    return {
        "detector": detector, "backend": backend, "detect_long_side": size, "precision": precision,
        "dev_map": result["map"], **{f"ap_{lb}": v for lb, v in result["ap"].items()},
        "recall_at_precision": result["recall_at_precision"]["recall"],
        **{f"recall_{s}": c["recall"] for s, c in result["recall_by_size"]["all"].items() if s != "all"},
        "val_map": val_map, "closeup_f1": photo_f1_,
        "frame_ms_median": float(np.median(ms)), "frame_ms_p95": float(np.percentile(ms, 95)),
        "fps": 1000 / float(np.median(ms)),
    }  # fmt: skip


def on_front(table: pd.DataFrame) -> list[bool]:
    """True for the rows no other row beats on both dev mAP (higher) and frame median (lower)."""
    ms, acc = table["frame_ms_median"].to_numpy(), table["dev_map"].to_numpy()
    return [not np.any((ms <= m) & (acc >= a) & ((ms < m) | (acc > a))) for m, a in zip(ms, acc, strict=True)]


def plot(table: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    ours = table[table["detector"] != "aizoo (peer)"]
    for (name, precision), part in ours.groupby(["detector", "precision"], sort=False):
        part = part.sort_values("detect_long_side")  # one line per detector and precision, through its sizes
        ax.plot(part["frame_ms_median"], part["dev_map"], "o-" if precision == "fp32" else "^--", alpha=0.8, lw=0.8,
                label=f"{name} {precision}")  # fmt: skip
        for r in part.itertuples():
            ax.annotate(str(r.detect_long_side), (r.frame_ms_median, r.dev_map), fontsize=7, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
    best = ours[ours["on_front"]].sort_values("frame_ms_median")
    ax.step(best["frame_ms_median"], best["dev_map"], where="post", color="black", lw=1, label="front")
    peer = table[table["detector"] == "aizoo (peer)"].iloc[0]
    ax.plot([peer["frame_ms_median"]], [peer["dev_map"]], "*", color="red", markersize=14, label="AIZOO peer")
    ax.set_xlabel("ms a frame (median, dev scenes)")
    ax.set_ylabel("dev-scene mAP@0.5")
    ax.set_title(f"accuracy against time, {table['machine'].iloc[0][:60]}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--scenes", type=int, default=None, help="the first N dev scenes (default: all)")
    parser.add_argument("--val-scenes", type=int, default=None, help="the first N val-split scenes (default: all)")
    parser.add_argument("--photos", type=int, default=100, help="test-split close-up photos per label")
    parser.add_argument("--out", type=Path, default=None, help="folder (default reports/bench)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the table and plot to MLflow")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args(argv)
    try:
        params = validate(compose(args.overrides))
        unknown = set(args.detectors) - set(params.detectors)
        if unknown:
            raise ValueError(f"unknown detectors {sorted(unknown)}: one of {sorted(params.detectors)}")
        table = front(params, args.detectors, args.sizes, args.precisions, args.scenes, args.val_scenes, args.photos)
    except (FacemaskError, ValueError, FileNotFoundError) as err:
        print(f"front: {err}", file=sys.stderr)
        return 2
    out = args.out or params.paths.reports / "bench"
    write_table(table, out, "front")
    plot(table, out / "front.png")
    shown = ["detector", "precision", "detect_long_side", "dev_map", "val_map", "recall_small", "closeup_f1",
             "frame_ms_median", "frame_ms_p95", "fps", "map_ratio_to_peer", "ms_ratio_to_peer", "on_front"]  # fmt: skip
    print(table[[c for c in shown if c in table]].round(3).to_markdown(index=False))
    print(f"\n{machine.label()}\n-> {out / 'front.csv'}, {out / 'front.png'}")
    if not args.no_mlflow:
        log_run(params, out)
    return 0


def log_run(params: Params, out: Path) -> None:
    import mlflow

    from facemask import mlflow_tracking

    mlflow_tracking.setup(params.mlflow)
    with mlflow.start_run(run_name="bench-front"):
        mlflow.set_tag("bench", "front")
        for name in ("front.csv", "front.json", "front.png"):
            mlflow.log_artifact(str(out / name))


if __name__ == "__main__":
    sys.exit(main())
