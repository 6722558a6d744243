"""MLflow set-up shared by the stages: tracking URI, experiment, run hand-over between stages."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from facemask.config import Mlflow as MlflowConfig


def tracking_uri(cfg: MlflowConfig) -> str:
    """MLFLOW_TRACKING_URI wins over the configured default (an embedded sqlite file)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the tracking server and make sure the experiment exists; returns its id."""
    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = cfg.artifact_location
    if "://" not in location:
        location = Path(location).resolve().as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params -> {"a.b.c": value} with values cut to MLflow's 6000-character limit."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def write_run_ref(path: Path, run_id: str, experiment_id: str, uri: str, model_uri: str) -> None:
    """Record which MLflow run (and logged model) the later stages attach to."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri, "model_uri": model_uri}
    path.write_text(json.dumps(ref, indent=2))


def read_run_ref(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the train stage writes it (dvc repro train)")
    return json.loads(path.read_text())


def classifier_file(model: str | Path) -> Path:
    """`classifier.pt` from a local path (file or folder) or an MLflow model URI (`models:/name@alias`,
    `runs:/...`), downloaded through the current tracking server."""
    if "://" not in str(model) and not str(model).startswith("models:/"):
        path = Path(model)
        path = path / "classifier.pt" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"classifier not found: {path}")
        return path
    local = Path(mlflow.artifacts.download_artifacts(str(model)))
    found = sorted(local.rglob("classifier.pt"))
    if not found:
        raise FileNotFoundError(f"{model} carries no classifier.pt (logged before extra_files?)")
    return found[0]
