"""`make bench-runtimes`: the whole pipeline per runtime x precision on the dev scenes.

    python -m facemask.bench.runtimes [--calibration 320] [--scenes 200]

One table: for PyTorch (eager), ONNX Runtime and OpenVINO (the `runtimes` dependency group), each in
fp32 and int8 (static quantization, QDQ per-channel, calibrated on training-split face crops and
training-split scenes as `make bench-quantization` does): detection ms per frame, classification ms
per face, frame ms median and p95 over the dev scenes (as the pipeline sees them: long side 640),
and the dev-scene mAP@0.5 with its change against PyTorch fp32. int8 rows quantize the classifier
(the int8 graph the train stage stored in the artefact, the one served; else calibrated here);
"int8, detector too" quantizes both. Then the detector's ms per frame when run on 1, 2, 4 and 8
frames at once (does batching frames across cameras pay for it?). One pipeline in this process, one scene at a time, the
configured threads. Needs the pipeline's outputs (`dvc repro`) and FACEMASK_MIRROR; writes
reports/bench/runtimes.json. The dev scenes only measure: nothing here is tuned on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from facemask.bench.quantization import calibration_sets, export_classifier, letterboxed, paired_ms
from facemask.classifier import MaskClassifier
from facemask.config import Params, load_params
from facemask.data.voc import evaluation_folder, load_scenes
from facemask.detection import build_detector
from facemask.detection.retinaface_mnet import RetinaFaceMobileNetDetector, RetinaFaceOnnxDetector, preprocess
from facemask.machine import describe, label
from facemask.onnx_sessions import ort_session
from facemask.pipeline import MaskPipeline
from facemask.quantization import quantize
from facemask.scenes.average_precision import scene_metrics
from facemask.scenes.evaluate import predict_scene


class GraphClassifier(MaskClassifier):
    """A trained classifier (labels, metadata, preprocessing) whose network a graph session runs:
    anything answering `run(None, {"input": batch})` as an ONNX Runtime session does."""

    def __init__(self, base: MaskClassifier, graph_session: Any):
        super().__init__(base.network, base.labels, base.preprocessor, base.meta, "torch")
        self._session = graph_session


class OpenVinoSession:
    """An OpenVINO graph compiled for the CPU (f32: fp32 means fp32 where the CPU has bf16), answering
    as an ONNX Runtime session does, so the served classes run it unchanged."""

    def __init__(self, graph: Path):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        self._compiled = ov.Core().compile_model(str(graph), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def run(self, _outputs: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(list(feeds.values()))
        return [np.array(result[output]) for output in self._compiled.outputs]  # copies: the request reuses its buffers


def graphs(params: Params, classifier: MaskClassifier, calibration: int, tmp: Path) -> dict[str, Path]:
    """The fp32 and int8 graphs of both networks (int8 calibrated on training-split crops and scenes)."""
    pre, paths = classifier.preprocessor, params.paths
    train, _, scenes = calibration_sets(paths, classifier.labels, calibration)
    crops = [cv2.imread(str(paths.crops / c)) for c in train["crop"]]
    out = {"classifier fp32": export_classifier(classifier, tmp / "classifier.onnx")}
    if classifier.int8_graph is not None:  # the graph the train stage calibrated: the one served
        out["classifier int8"] = tmp / "classifier.int8.onnx"
        out["classifier int8"].write_bytes(classifier.int8_graph)
    else:
        batches = ({"input": pre.batch(crops[i : i + 16], bgr=True).numpy()} for i in range(0, len(crops), 16))
        out["classifier int8"] = quantize(out["classifier fp32"], batches, tmp / "classifier.int8.onnx")
    out["detector fp32"] = Path(paths.detector_onnx)
    name = ort_session(out["detector fp32"]).get_inputs()[0].name
    inputs = ({name: preprocess(letterboxed(p))} for p in scenes)
    out["detector int8"] = quantize(out["detector fp32"], inputs, tmp / "detector.int8.onnx")
    return out


def variants(params: Params, classifier: MaskClassifier, g: dict[str, Path]) -> dict[tuple[str, str], MaskPipeline]:
    """Each runtime x precision as a pipeline (the same settings, crops and preprocessing)."""
    detector = build_detector(params.detector)
    if not isinstance(detector, RetinaFaceOnnxDetector):
        raise SystemExit(f"runtimes: the configured detector ({detector.name}) is not the fine-tuned ONNX graph")
    eager_classifier = MaskClassifier.load(params.paths.classifier, "torch")
    eager_detector = RetinaFaceMobileNetDetector(
        params.paths.detector_weights,
        detector.score_threshold,
        detector.nms_threshold,
        detector.top_k,
        detector.min_face,
    )
    runtimes: dict[str, Callable[[Path], Any]] = {"ONNX Runtime": ort_session}
    try:
        import openvino  # noqa: F401

        runtimes["OpenVINO"] = OpenVinoSession
    except ImportError:
        print("runtimes: OpenVINO not installed (uv sync --group runtimes): its rows are left out", file=sys.stderr)
    out = {("PyTorch", "fp32"): (eager_detector, eager_classifier)}
    for runtime, graph_session in runtimes.items():
        det, clf = {}, {}
        for p in ("fp32", "int8"):
            det[p] = RetinaFaceOnnxDetector(  # the served class, on this precision's graph (ONNX Runtime) ...
                g[f"detector {p}"], detector.score_threshold, detector.nms_threshold, detector.top_k, detector.min_face
            )
            if graph_session is not ort_session:  # ... or on another runtime's session of it
                det[p].session = graph_session(g[f"detector {p}"])
            clf[p] = GraphClassifier(classifier, graph_session(g[f"classifier {p}"]))
        out[(runtime, "fp32")] = (det["fp32"], clf["fp32"])
        out[(runtime, "int8")] = (det["fp32"], clf["int8"])
        out[(runtime, "int8, detector too")] = (det["int8"], clf["int8"])
    return {
        key: MaskPipeline.from_classifier(d, c, params.crop.model_dump(), params.pipeline, params.detector.box_fit)
        for key, (d, c) in out.items()
    }


def measure(pipeline: MaskPipeline, params: Params, scenes: list, desc: str) -> dict:
    max_pixels = params.data.max_image_pixels
    predict_scene(pipeline, (scenes[0].image, max_pixels))  # warm-up
    outputs = [
        predict_scene(pipeline, (s.image, max_pixels)) for s in tqdm(scenes, desc=desc, unit="scene", leave=False)
    ]
    preds = [p for p, _, _ in outputs]
    det = np.array([d for _, d, _ in outputs])
    cls = np.array([c for _, _, c in outputs])
    faces = sum(len(p.boxes) for p in preds)
    gts = [(s.boxes, s.labels) for s in scenes]
    result = scene_metrics(gts, preds, pipeline.labels, params.scenes.iou_threshold, params.scenes.size_bins)
    return {
        "detect ms": round(float(np.median(det)), 2),
        "classify ms per face": round(float(cls.sum() / max(faces, 1)), 2),
        "frame ms median": round(float(np.median(det + cls)), 2),
        "frame ms p95": round(float(np.percentile(det + cls, 95)), 2),
        "fps": round(1000 / float(np.median(det + cls)), 1),
        "dev mAP": round(float(result["map"]), 4),
        **{f"AP {lb}": round(float(result["ap"][lb]), 4) for lb in pipeline.labels},
    }


def detector_batches(params: Params, tmp: Path, sizes: Sequence[int] = (1, 2, 4, 8)) -> list[dict]:
    """ms per 640x480 frame when ONNX Runtime runs the fine-tuned detector on `sizes` frames at once
    (an export with a batch axis; the served graph has none), on one thread (as each pipeline of the
    served pool) and on all of torch's: does batching frames pay?"""
    from facemask.detection.retinaface_mnet import RetinaFaceMobileNet, load_state
    from facemask.detector_training.export import OUTPUTS

    network = load_state(RetinaFaceMobileNet(), params.paths.detector_weights).eval()
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch", 1: "anchors"} for n in OUTPUTS}}
    graph = tmp / "detector.batched.onnx"
    torch.onnx.export(network, (torch.zeros(1, 3, 480, 640),), str(graph), input_names=["input"],
                      output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=17, dynamo=False)  # fmt: skip
    frame = preprocess(np.full((480, 640, 3), 114, np.uint8))
    inputs = {n: np.repeat(frame, n, axis=0) for n in sizes}
    rows, threads = [], torch.get_num_threads()
    for t in sorted({1, threads}):
        torch.set_num_threads(t)  # `ort_session` takes torch's thread count
        run = ort_session(graph)
        calls = {n: (lambda x=inputs[n], run=run: run.run(None, {"input": x})) for n in sizes}
        ms = paired_ms(calls, rounds=4, repeats=3)
        rows += [{"threads": t, "frames per call": n, "ms per frame": round(ms[n] / n, 2)} for n in sizes]
    torch.set_num_threads(threads)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--calibration", type=int, default=320, help="training crops (and scenes / 5) to calibrate on")
    parser.add_argument("--scenes", type=int, default=200, help="the first n dev scenes")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/runtimes.json"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    torch.set_num_threads(2)
    scenes = load_scenes(evaluation_folder(params.scenes), params.scenes.source.label_map)[: args.scenes]
    classifier = MaskClassifier.load(params.paths.classifier, "torch")
    with tempfile.TemporaryDirectory() as tmp:
        pipelines = variants(params, classifier, graphs(params, classifier, args.calibration, Path(tmp)))
        rows = [{"runtime": r, "precision": p, **measure(pipe, params, scenes, f"{r} {p}")}
                for (r, p), pipe in pipelines.items()]  # fmt: skip
        batches = detector_batches(params, Path(tmp))
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("dev mAP") + 1, "mAP change", (table["dev mAP"] - table["dev mAP"][0]).round(4))
    print(f"{len(scenes)} dev scenes, {params.detector.name} at {params.pipeline.detect_long_side} + "
          f"{classifier.meta['backbone']}; {torch.get_num_threads()} threads on {label()}")  # fmt: skip
    print(table.to_markdown(index=False))
    print("\nthe detector on several frames at once (ONNX Runtime, fp32):")
    print(pd.DataFrame(batches).to_markdown(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "machine": describe(),
        "scenes": len(scenes),
        "calibration": args.calibration,
        "rows": rows,
        "detector_batches": batches,
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
