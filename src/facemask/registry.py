"""The promotion gate: register a candidate model and move the champion alias only when it wins.

Like is compared with like: every version records the test split its figure was measured on
(`test_split`, a digest of the split's crop ids and labels). When the champion's split differs from
the candidate's, its figure is not compared: the champion is re-scored on the candidate's split
(`rescore`), or, when that is impossible, the alias stays where it is and the reason says why."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
METRIC_TAG = "test_face_macro_f1"
SPLIT_TAG = "test_split"


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
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    figure = float(version.tags[METRIC_TAG]) if METRIC_TAG in version.tags else None
    return version.version, figure, version.tags.get(SPLIT_TAG)


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
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Face-mask classifier (mask / no_mask / incorrect)")
    # an MLflow 3 logged model ("models:/m-<id>") registers by its artifact location and id
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    source = client.get_logged_model(model_id).artifact_location if model_id else model_uri
    tags = {METRIC_TAG: str(macro_f1), SPLIT_TAG: test_split}
    version = client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
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
    if promoted:
        client.set_registered_model_alias(name, alias, version.version)
    client.set_model_version_tag(name, version.version, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(name, version.version, "promotion_reason", reason)
    decision = Decision(
        promoted, reason, name, alias, version.version, macro_f1,
        champion[0] if champion else None, champion_f1, margin, test_split, rescored,
    )  # fmt: skip
    log.info("%s v%s: %s", name, version.version, "PROMOTED to @" + alias if promoted else "kept out: " + reason)
    return decision
