"""`python -m facemask.scenes.score_sweep [--thresholds 0.3 0.2 0.1] [--classifier PATH] [overrides]`:
choose the detector's `score_threshold` (the candidate threshold) on validation data only.

Every detection at or above the candidate threshold goes through the classifier, whose rejection
class drops the false ones, and is answered with its score (the detector's times p(face)): the
threshold decides how far down the ranking the pipeline looks. For each threshold the classifier's
rejection threshold is fitted on the val-split training scenes exactly as the train stage fits it
(`scenes.rejection`), and the row shows the val-scene mAP it reaches, with the detector recall and
precision of everything answered. The largest threshold within `--tolerance` of the best mAP is the
one to configure (a lower one adds low-scored faces for no measured gain). The dev scenes play no part.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from facemask.classifier import MaskClassifier
from facemask.config import compose, validate
from facemask.errors import FacemaskError
from facemask.scenes.rejection import fit_rejection


def sweep(thresholds: list[float], classifier: Path | None, overrides: list[str]) -> pd.DataFrame:
    """One row per candidate threshold; `classifier`: the pipeline's own (`paths.classifier`) when None."""
    rows = []
    for t in thresholds:
        params = validate(compose([*overrides, f"detector.score_threshold={t}"]), f"score_threshold={t}")
        model = MaskClassifier.load(classifier or params.paths.classifier, params.pipeline.classifier_runtime)
        reject, table = fit_rejection(params, model)
        best = table[table["reject_min_probability"] == reject].iloc[0]
        rows.append({"score_threshold": t, "reject_min_probability": reject, "val mAP": best["map"],
                     "val recall": best["detector_recall"], "val precision": best["detector_precision"]})  # fmt: skip
    return pd.DataFrame(rows)


def choose(table: pd.DataFrame, tolerance: float) -> float:
    """The largest threshold whose val mAP is within `tolerance` of the best."""
    near = table[table["val mAP"] >= table["val mAP"].max() - tolerance]
    return float(near["score_threshold"].max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.scenes.score_sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. detector=yunet")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.3, 0.2, 0.15, 0.1, 0.05])
    parser.add_argument("--classifier", type=Path, help="a classifier artefact (default: paths.classifier)")
    parser.add_argument("--tolerance", type=float, default=0.002, help="val mAP within this of the best")
    args = parser.parse_args(argv)
    try:
        table = sweep(args.thresholds, args.classifier, args.overrides)
    except (FacemaskError, FileNotFoundError, ValueError) as err:
        print(f"score_sweep: {err}", file=sys.stderr)
        return 2
    print(table.round(4).to_markdown(index=False))
    print(f"\nlargest threshold within {args.tolerance} of the best val mAP: {choose(table, args.tolerance)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
