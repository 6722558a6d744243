"""The promotion gate: register a candidate model and move the champion alias only when it wins.

Like is compared with like: every version records the test split its figure was measured on
(`test_split`, a digest of the split's crop ids and labels). When the champion's split differs from
the candidate's, its figure is not compared: the champion is re-scored on the candidate's split
(`rescore`), or, when that is impossible, the alias stays where it is and the reason says why.

Classifiers (`promote`) win on test face macro-F1; fine-tuned detectors (`promote_detector`) win on
dev-scene recall at equal or better precision, measured on the same dev scenes (`dev_scenes`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
METRIC_TAG = "test_face_macro_f1"
SPLIT_TAG = "test_split"
DEV_TAG = "dev_scenes"  # detectors: digest of the dev scenes their recall/precision were measured on


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    model: str
    alias: str
    candidate_version: str
    candidate_macro_f1: float
    champion_version: str | None
    champion_macro_f1: float | None
    margin: float
    test_split: str = ""
    champion_rescored: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def current_champion(client: MlflowClient, name: str, alias: str) -> tuple[str, float | None, str | None] | None:
    """(version, promotion figure, test split) of the version holding `alias`; None when no version
    holds it (or the model does not exist yet). Any other registry error propagates: a gate that
    cannot see its champion must not promote."""
    version = _champion_version(client, name, alias)
    if version is None:
        return None
    figure = float(version.tags[METRIC_TAG]) if METRIC_TAG in version.tags else None
    return version.version, figure, version.tags.get(SPLIT_TAG)


def register(client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str], about: str):
    """A new version of registered model `name` (created with description `about` if new)."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=about)
    # an MLflow 3 logged model ("models:/m-<id>") registers by its artifact location and id
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    source = client.get_logged_model(model_id).artifact_location if model_id else model_uri
    return client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)


def record(client: MlflowClient, name: str, version: str, alias: str, promoted: bool, reason: str) -> None:
    """Move the alias when promoted; tag the version with the decision and its reason either way."""
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    log.info("%s v%s: %s", name, version, "PROMOTED to @" + alias if promoted else "kept out: " + reason)


def _champion_version(client: MlflowClient, name: str, alias: str):
    """The version holding `alias`, or None (no such model or alias); other errors propagate."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    macro_f1: float,
    alias: str,
    margin: float,
    test_split: str = "",
    rescore: Callable[[str], float] | None = None,
) -> Decision:
    """Register `model_uri` as a new version of `name`; give it `alias` if it beats the champion by
    `margin` on the same test split (`rescore(version)` measures the champion on the candidate's
    split when its own figure came from another).

    The decision and both figures are written as tags on the new version, so the registry itself
    says why every version was or was not promoted. An alias is never moved backwards.
    """
    champion = current_champion(client, name, alias)
    rescored = False
    champion_f1: float | None = None
    if champion is not None:
        champion_f1 = champion[1]
        if champion[2] != test_split or champion_f1 is None:
            if rescore is not None:
                champion_f1, rescored = round(float(rescore(champion[0])), 4), True
            else:
                champion_f1 = None
    tags = {METRIC_TAG: str(macro_f1), SPLIT_TAG: test_split}
    version = register(client, name, model_uri, run_id, tags, "Face-mask classifier (mask / no_mask / incorrect)")
    on = f" on test split {test_split}" + (" (champion re-scored)" if rescored else "")
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif champion_f1 is None:
        promoted, reason = (
            False,
            f"not comparable: champion v{champion[0]} was measured on test split {champion[2]}, "
            f"the candidate on {test_split}, and the champion could not be re-scored",
        )
    elif macro_f1 > champion_f1 + margin:
        promoted, reason = True, f"beats champion v{champion[0]} ({macro_f1:.4f} > {champion_f1:.4f} + {margin}){on}"
    else:
        promoted, reason = (
            False,
            f"does not beat champion v{champion[0]} ({macro_f1:.4f} <= {champion_f1:.4f} + {margin}){on}",
        )
    record(client, name, version.version, alias, promoted, reason)
    decision = Decision(
        promoted, reason, name, alias, version.version, macro_f1,
        champion[0] if champion else None, champion_f1, margin, test_split, rescored,
    )  # fmt: skip
    return decision


@dataclass(frozen=True)
class DetectorDecision:
    promoted: bool
    reason: str
    model: str
    alias: str
    candidate_version: str
    candidate: dict[str, float]
    champion_version: str | None
    champion: dict[str, float] | None
    dev_scenes: str
    champion_rescored: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def promote_detector(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    scores: dict[str, float],
    alias: str,
    dev_scenes: str,
    rescore: Callable[[str], dict[str, float]] | None = None,
) -> DetectorDecision:
    """Register a fine-tuned detector; give it `alias` only when its dev-scene recall beats the
    champion's at equal or better precision (`scores`: {"recall": r, "precision": p}), both measured
    on the same dev scenes (digest `dev_scenes`; `rescore(version)` re-measures a champion measured
    on others). The decision and figures are tags on the new version."""
    held = _champion_version(client, name, alias)
    champion, rescored = None, False
    if held is not None:
        tags = held.tags
        if tags.get(DEV_TAG) == dev_scenes and all(f"dev_{k}" in tags for k in ("recall", "precision")):
            champion = {k: float(tags[f"dev_{k}"]) for k in ("recall", "precision")}
        elif rescore is not None:
            champion, rescored = rescore(held.version), True
    tags = {DEV_TAG: dev_scenes, **{f"dev_{k}": str(v) for k, v in scores.items()}}
    version = register(client, name, model_uri, run_id, tags, "Face detector (RetinaFace-MobileNet0.25, fine-tuned)")
    if held is None:
        promoted, reason = True, "no champion yet"
    elif champion is None:
        promoted, reason = False, f"not comparable: champion v{held.version} was measured on other dev scenes"
    else:
        figures = (
            f"recall {scores['recall']:.4f} vs {champion['recall']:.4f}, "
            f"precision {scores['precision']:.4f} vs {champion['precision']:.4f}"
        )
        promoted = scores["recall"] > champion["recall"] and scores["precision"] >= champion["precision"]
        verdict = "beats" if promoted else "does not beat"
        reason = f"{verdict} champion v{held.version} on dev scenes {dev_scenes}: {figures}"
    record(client, name, version.version, alias, promoted, reason)
    return DetectorDecision(
        promoted, reason, name, alias, version.version, scores,
        held.version if held else None, champion, dev_scenes, rescored,
    )  # fmt: skip


def detector_file(model: str) -> Path:
    """The `.onnx` file of a registered detector version (`models:/name/version`)."""
    local = Path(mlflow.artifacts.download_artifacts(model))
    found = sorted(local.rglob("*.onnx"))
    if not found:
        raise FileNotFoundError(f"{model} carries no .onnx file")
    return found[0]
