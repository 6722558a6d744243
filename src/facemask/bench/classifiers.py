"""`python -m facemask.bench.classifiers`: compare classifier recipes end to end, in one MLflow experiment.

Each variant is a set of Hydra overrides (`--variant NAME "model=mobilenetv2 model.input_size=112"`).
For each, the real stage scripts run on a params file of its own under `experiments/<NAME>/`
(the pipeline's crops and augmentation reused; models and reports kept apart): `train` (which also
fits the rejection threshold on the val-split scenes), `evaluate` (test split per source) and `scenes`
(the dev scenes end to end). Every run is tagged `comparison=<--tag>` and `variant=<NAME>` in the
pipeline's MLflow experiment, and one table is printed (and written to `--out` as CSV): dev-scene mAP
and AP per class, detector recall, test macro-F1 of close-up photos and of scene crops, classify ms.
Run `dvc repro augment` first (the crops and the augmentation pipeline are the pipeline's own).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from facemask import mlflow_tracking
from facemask.config import Params, compose, validate, write_params

DEFAULT_VARIANTS = {
    "lcnet075-scratch-96": "model=lcnet",
    "mobilenetv2-imagenet-96": "model=mobilenetv2 trainer=finetune",
    "mobilenetv2-imagenet-112": "model=mobilenetv2 trainer=finetune model.input_size=112",
    "mobilenetv2-imagenet-128": "model=mobilenetv2 trainer=finetune model.input_size=128",
}
CLOSE_UPS = ("face-mask-2class", "maskedface-net-sample")
SCENE_CROPS = "face-mask-scenes-train"


def run_variant(name: str, overrides: list[str], root: Path, tag: str, base: Params) -> dict:
    """Train, evaluate and score one variant on the dev scenes (the pipeline's crops and augmentation,
    from `base`'s paths); its row of the table."""
    folder = root / name
    detector = [f"paths.{k}={getattr(base.paths, k)}" for k in ("detector_weights", "detector_onnx", "detector_run")]
    # the variant's own models and reports; the pipeline's detector (the rejection fit and scenes use it)
    raw = compose([*overrides, f"paths.models={folder}/models", f"paths.reports={folder}/reports", *detector])
    params = validate(raw, f"variant {name}")
    params.paths.models.mkdir(parents=True, exist_ok=True)
    params.paths.reports.mkdir(parents=True, exist_ok=True)
    shutil.copy(base.paths.augmentation, params.paths.augmentation)
    shutil.copy(base.paths.augment_preview, params.paths.augment_preview)
    params_file = folder / "params.yaml"
    write_params(raw, params_file)
    for stage in ("train", "evaluate", "scenes"):
        print(f"== {name}: {stage}", flush=True)
        subprocess.run([sys.executable, "-m", f"facemask.stages.{stage}", "--params", str(params_file)], check=True)
    run_id = mlflow_tracking.read_run_ref(params.paths.classifier_run)["run_id"]
    mlflow.MlflowClient().set_tag(run_id, "comparison", tag)
    mlflow.MlflowClient().set_tag(run_id, "variant", name)
    test = json.loads(params.paths.metrics.read_text())
    dev = json.loads(params.paths.scene_metrics.read_text())
    train = json.loads((params.paths.reports / "train.json").read_text())
    by_source = test["per_source"]
    close = [by_source[s] for s in CLOSE_UPS if s in by_source]
    return {
        "variant": name,
        "overrides": " ".join(overrides),
        "map": round(dev["map"], 4),
        **{f"ap_{k}": round(v, 4) for k, v in dev["ap"].items()},
        "detector_recall": round(dev["detector_recall"], 4),
        "detector_precision": round(dev["detector_precision"], 4),
        "recall_small": round(dev["recall"]["all"]["small"], 4) if "all" in dev["recall"] else None,
        "closeup_macro_f1": round(sum(c["macro_f1"] * c["n"] for c in close) / sum(c["n"] for c in close), 4),
        "scene_crop_macro_f1": by_source[SCENE_CROPS]["macro_f1"],
        "reject_min_probability": train.get("reject_min_probability"),
        "classify_ms": round(dev["classify_ms_median"], 2),
        "frame_ms": round(dev["frame_ms_median"], 2),
        "epochs": train["epochs"],
        "train_s": train["train_seconds"],
        "run_id": run_id,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.bench.classifiers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), help="default: the four of issue 21"
    )
    parser.add_argument("--root", type=Path, default=Path("experiments"), help="one folder per variant")
    parser.add_argument("--tag", default="classifiers", help="MLflow tag `comparison` on every run")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/classifiers.csv"))
    args = parser.parse_args(argv)
    variants = dict(args.variant) if args.variant else DEFAULT_VARIANTS
    base = validate(compose([]), "conf/")
    mlflow_tracking.setup(base.mlflow)
    rows = []
    for name, overrides in variants.items():
        try:
            rows.append(run_variant(name, overrides.split(), args.root, args.tag, base))
        except subprocess.CalledProcessError as err:
            print(f"classifiers: variant {name} failed ({err}); the others go on", file=sys.stderr)
    if not rows:
        return 2
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.drop(columns=["overrides", "run_id"]).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
