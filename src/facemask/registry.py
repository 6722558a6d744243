"""The promotion gate: register a candidate model and move the champion alias only when it wins."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
METRIC_TAG = "test_macro_f1"


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

    def to_dict(self) -> dict:
        return asdict(self)


def current_champion(client: MlflowClient, name: str, alias: str) -> tuple[str, float] | None:
    """(version, test macro-F1) of the model version holding `alias`, or None when there is none."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    if METRIC_TAG in version.tags:
        return version.version, float(version.tags[METRIC_TAG])
    run = client.get_run(version.run_id)
    if "test.macro_f1" not in run.data.metrics:
        raise MlflowException(f"champion {name} v{version.version} has no {METRIC_TAG} tag nor test metric")
    return version.version, float(run.data.metrics["test.macro_f1"])


def promote(
    client: MlflowClient, name: str, model_uri: str, run_id: str, macro_f1: float, alias: str, margin: float
) -> Decision:
    """Register `model_uri` as a new version of `name`; give it `alias` if it beats the champion by `margin`.

    The decision and both figures are written as tags on the new version, so the registry itself
    says why every version was or was not promoted. An alias is never moved backwards.
    """
    champion = current_champion(client, name, alias)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Face-mask classifier (mask / no_mask / incorrect)")
    # an MLflow 3 logged model ("models:/m-<id>") registers by its artifact location and id
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    source = client.get_logged_model(model_id).artifact_location if model_id else model_uri
    version = client.create_model_version(
        name, source, run_id=run_id, tags={METRIC_TAG: str(macro_f1)}, model_id=model_id
    )
    if champion is None:
        promoted, reason = True, "no champion yet"
    elif macro_f1 > champion[1] + margin:
        promoted, reason = True, f"beats champion v{champion[0]} ({macro_f1:.4f} > {champion[1]:.4f} + {margin})"
    else:
        promoted, reason = (
            False,
            f"does not beat champion v{champion[0]} ({macro_f1:.4f} <= {champion[1]:.4f} + {margin})",
        )
    if promoted:
        client.set_registered_model_alias(name, alias, version.version)
    client.set_model_version_tag(name, version.version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version.version, "promotion_reason", reason)
    decision = Decision(
        promoted, reason, name, alias, version.version, macro_f1,
        champion[0] if champion else None, champion[1] if champion else None, margin,
    )  # fmt: skip
    log.info("%s v%s: %s", name, version.version, "PROMOTED to @" + alias if promoted else "kept out: " + reason)
    return decision
