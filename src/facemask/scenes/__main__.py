"""`python -m facemask.scenes [hydra overrides] [--classifier PATH|URI] [--out DIR]`

Evaluate a model on any folder of annotated scenes and print the table, e.g.
``python -m facemask.scenes scenes.dir=/data/my-scenes detector=retinaface_mnet``
``python -m facemask.scenes --classifier models:/facemask-classifier@champion``
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from facemask import mlflow_tracking
from facemask.cli import write_json
from facemask.config import compose, validate
from facemask.errors import FacemaskError
from facemask.scenes.average_precision import format_scene_table
from facemask.scenes.evaluate import evaluate_scenes, summary, write_reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.scenes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. scenes.dir=/path detector=yunet")
    parser.add_argument(
        "--classifier",
        help="a classifier file, or an MLflow URI such as models:/facemask-classifier@champion "
        "(default: paths.classifier, the train stage's)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/scenes-adhoc"), help="report folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = validate(compose(args.overrides), "conf/ + overrides")
        classifier = args.classifier or str(params.paths.classifier)
        if "://" in classifier or classifier.startswith("models:/"):
            mlflow_tracking.setup(params.mlflow)
        run, result = evaluate_scenes(params, mlflow_tracking.classifier_file(classifier))
    except (FacemaskError, FileNotFoundError) as err:
        print(f"scenes: {err}", file=sys.stderr)
        return 2
    write_reports(run, result, run.labels, args.out, params.scenes.gallery_size, params.scenes.iou_threshold)
    write_json(args.out / params.paths.scene_metrics.name, summary(result))
    print(f"{result['scenes']} scenes, {result['faces']} faces; reports in {args.out}")
    print(format_scene_table(result, run.labels))
    print(f"median {result['frame_ms_median']:.1f} ms/frame ({result['fps']:.1f} fps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
