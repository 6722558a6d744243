"""INT8 static quantization of the served classifier and detector, measured against fp32.

    python -m facemask.bench.quantization [--calibration 320] [--out reports/bench/quantization.json]

ONNX Runtime's static quantization (QDQ, per-channel int8 weights, uint8 activations) of the
classifier's ONNX export and of the fine-tuned detector's graph, calibrated on training-split face
crops and training-split scenes (as the detector sees them: long side 640), then compared on the
test-split crops (top-1 agreement with fp32, largest probability gap, accuracy against the labels)
and timed (classifier ms per batch of 1/4/8 crops, detector ms per 640x480 frame; fp32 and int8 in
alternating rounds, medians). A measurement
for choosing a precision: nothing here is served. Needs the pipeline outputs (`dvc repro`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from facemask.bench.latency import timed
from facemask.classifier import MaskClassifier, onnx_graph
from facemask.config import Paths, load_params
from facemask.detection.retinaface_mnet import preprocess
from facemask.detector_training.scene_data import manifest_scenes
from facemask.imageio import read_image
from facemask.machine import describe
from facemask.onnx_sessions import ort_session
from facemask.quantization import quantize


def export_classifier(classifier: MaskClassifier, path: Path) -> Path:
    """The classifier's network as ONNX (dynamic batch), exported as its onnxruntime runtime does."""
    path.write_bytes(onnx_graph(classifier.network, classifier.preprocessor.input_size))
    return path


def calibration_sets(paths: Paths, labels: list[str], n: int) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """The crop table's first `n` training-split crops (shuffled once, seed 0) to calibrate the
    classifier on, its test-split crops, and `n / 5` (at least 8) training scenes for the detector."""
    table = pd.read_csv(paths.crop_table, keep_default_na=False)
    table = table[(table["crop"] != "") & table["label"].isin(labels)].sample(frac=1.0, random_state=0)
    scenes = [s.path for s in manifest_scenes(paths.manifest, paths.raw, "train")[: max(8, n // 5)]]
    return table[table["split"] == "train"][:n], table[table["split"] == "test"], scenes


def letterboxed(path: Path, side: int = 640) -> np.ndarray:
    """A scene resized to long side `side`, padded to a square (the detector's calibration input)."""
    image = read_image(path, 40_000_000)
    scale = side / max(image.shape[:2])
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    pad = ((0, side - image.shape[0]), (0, side - image.shape[1]), (0, 0))
    return np.pad(image, pad, constant_values=114)


def paired_ms(runs: dict[str, Callable[[], object]], rounds: int = 8, repeats: int = 8) -> dict[str, float]:
    """Median ms of each callable, timed in alternating rounds (this machine's speed drifts by the
    minute: interleaving keeps the comparison fair)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name] += timed(fn, repeats, warmup=1)
    return {name: statistics.median(t) for name, t in times.items()}


def classifier_rows(classifier: MaskClassifier, calibration: list, test: list, truth: np.ndarray, tmp: Path) -> list:
    """fp32 and int8 rows: ms per batch of 1/4/8 crops, test accuracy, int8's agreement with fp32."""
    pre = classifier.preprocessor
    models = {"fp32": export_classifier(classifier, tmp / "classifier.onnx")}
    batches = (pre.batch(calibration[i : i + 16], bgr=True).numpy() for i in range(0, len(calibration), 16))
    models["int8"] = quantize(models["fp32"], ({"input": x} for x in batches), tmp / "classifier.int8.onnx")
    runs = {precision: ort_session(model).run for precision, model in models.items()}
    rows = {p: {"model": f"classifier {classifier.meta['backbone']}", "precision": p} for p in models}
    probs = {}
    for precision, run in runs.items():
        logits = [
            run(None, {"input": pre.batch(test[i : i + 64], bgr=True).numpy()})[0] for i in range(0, len(test), 64)
        ]
        probs[precision] = torch.softmax(torch.from_numpy(np.concatenate(logits)), dim=1).numpy()
    for b in (1, 4, 8):
        x = pre.batch(test[:b], bgr=True).numpy()
        ms = paired_ms({p: (lambda run=run, x=x: run(None, {"input": x})) for p, run in runs.items()})
        for precision in models:
            rows[precision][f"ms, batch {b}"] = round(ms[precision], 2)
    for precision in models:
        rows[precision]["test accuracy"] = round(float((probs[precision].argmax(1) == truth).mean()), 4)
    rows["int8"]["top-1 = fp32"] = round(float((probs["int8"].argmax(1) == probs["fp32"].argmax(1)).mean()), 4)
    rows["int8"]["largest probability gap"] = round(float(np.abs(probs["int8"] - probs["fp32"]).max()), 4)
    return list(rows.values())


def detector_rows(detector: Path, scenes: list[Path], frame: np.ndarray, tmp: Path) -> list:
    """fp32 and int8 rows of the detector's graph: ms per `frame`."""
    name = ort_session(detector).get_inputs()[0].name
    int8 = quantize(detector, ({name: preprocess(letterboxed(p))} for p in scenes), tmp / "detector.int8.onnx")
    x = preprocess(frame)
    runs = {precision: ort_session(model).run for precision, model in (("fp32", detector), ("int8", int8))}
    ms = paired_ms({p: (lambda run=run: run(None, {name: x})) for p, run in runs.items()}, repeats=4)
    return [{"model": "detector (fine-tuned)", "precision": p, "ms, 640x480 frame": round(ms[p], 2)} for p in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--calibration", type=int, default=320, help="training crops (and scenes / 5) to calibrate on")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/quantization.json"))
    args = parser.parse_args(argv)
    paths = load_params(args.params).paths
    torch.set_num_threads(2)
    classifier = MaskClassifier.load(paths.classifier)
    train, test, scenes = calibration_sets(paths, classifier.labels, args.calibration)
    with tempfile.TemporaryDirectory() as tmp:
        rows = classifier_rows(
            classifier,
            [cv2.imread(str(paths.crops / c)) for c in train["crop"]],
            [cv2.imread(str(paths.crops / c)) for c in test["crop"]],
            np.array([classifier.labels.index(lb) for lb in test["label"]]),
            Path(tmp),
        )
        frame = cv2.resize(read_image(scenes[0], 40_000_000), (640, 480))
        rows += detector_rows(Path(paths.detector_onnx), scenes, frame, Path(tmp))
    print(f"calibrated on {len(train)} training crops and {len(scenes)} training scenes; {len(test)} test crops")
    print(pd.DataFrame(rows).astype(object).fillna("").to_markdown(index=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
