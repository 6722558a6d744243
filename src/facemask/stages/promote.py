"""Stage 6, promote: register the evaluated model; move the champion alias only if it wins. The
report (`reports/promotion.json`) sets the candidate beside the champion on each part of the test
split: the sources' crops and the reviewed alerts' (`facemask.data.feedback`)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

import mlflow
from mlflow.tracking import MlflowClient

from facemask import mlflow_tracking
from facemask.classifier import MaskClassifier
from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.crop_scoring import score_test_split
from facemask.registry import Decision, promote

log = logging.getLogger("facemask.promote")


def promote_stage(params: Params) -> None:
    paths, cfg = params.paths, params.mlflow
    ref = mlflow_tracking.attach(cfg, paths.classifier_run)
    metrics = json.loads(paths.metrics.read_text())
    client = MlflowClient()

    champion_parts: dict[str, dict] = {}

    def rescore(version: str) -> float:
        """The champion's face macro-F1 on this pipeline's test split (its parts kept for the report)."""
        path = mlflow_tracking.classifier_file(f"models:/{cfg.registered_model}/{version}")
        figure, _, champion_parts[version] = score_test_split(MaskClassifier.load(path), params)
        return figure

    decision = promote(
        client, cfg.registered_model, ref["model_uri"], ref["run_id"], metrics["face_macro_f1"],
        cfg.champion_alias, cfg.promotion_margin, metrics["test_split"], rescore,
    )  # fmt: skip
    parts = side_by_side(metrics.get("parts"), decision, champion_parts, rescore)
    with mlflow.start_run(run_id=ref["run_id"]):
        mlflow.set_tags(
            {
                "promotion": "promoted" if decision.promoted else "rejected",
                "registered_version": decision.candidate_version,
            }
        )
    write_json(paths.reports / "promotion.json", decision.to_dict() | {"test_parts": parts})
    for line in side_by_side_lines(parts, decision.champion_version) if parts else []:
        log.info(line)


def side_by_side(
    parts: dict | None, decision: Decision, champion_parts: dict[str, dict], rescore: Callable[[str], float]
) -> dict | None:
    """Candidate and champion on each part of the test split (`crop_scoring.scored_parts`); None for
    metrics written before the split had parts. The champion is scored on reviewed alerts when the
    split holds some; without them its figure on the sources is the one the gate compared."""
    if parts is None:
        return None
    champion = decision.champion_version
    if champion and champion not in champion_parts:
        if parts["feedback"]["crops"]:
            rescore(champion)
        else:
            sources = {**parts["sources"], "accuracy": None, "face_macro_f1": decision.champion_macro_f1}
            champion_parts[champion] = {"sources": sources, "feedback": parts["feedback"]}
    return {"candidate": parts, "champion": champion_parts.get(champion) if champion else None}


def side_by_side_lines(side_by_side: dict, champion: str | None) -> list[str]:
    """The promotion report as a table: each part of the test split, candidate and champion."""
    header = f"champion v{champion}" if champion else "no champion"
    lines = [f"{'test split part (face macro-F1)':<34}{'candidate':>10}{header:>16}"]
    for part, mine in side_by_side["candidate"].items():
        theirs = (side_by_side["champion"] or {}).get(part, {})
        shown = [
            f"{v:.4f}" if isinstance(v, float) else "-" for v in (mine["face_macro_f1"], theirs.get("face_macro_f1"))
        ]
        name = f"{part} ({mine['crops']} crops)"
        lines.append(f"{name:<34}{shown[0]:>10}{shown[1]:>16}")
    return lines


def main(argv: list[str] | None = None) -> int:
    return run_stage("promote", promote_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
