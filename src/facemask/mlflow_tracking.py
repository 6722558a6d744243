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


# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" (a traces page
# and a pop-up) for an experiment with no runs yet; model development opens on the runs table.
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


def setup(cfg: MlflowConfig) -> str:
    """Point MLflow at the tracking server and make sure the experiment exists, tagged as model
    development (so the UI opens on its runs); returns its id."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        location: str | None = cfg.artifact_location
        if uri.startswith(("http://", "https://")):
            location = None  # a tracking server keeps the artifacts (proxied), not this client's disk
        elif "://" not in location:
            location = Path(location).resolve().as_uri()
        return mlflow.create_experiment(
            cfg.experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT}
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_DEVELOPMENT:  # made before the tag existed
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return experiment.experiment_id


def runs_url(ui: str, experiment_id: str) -> str:
    """The UI page of the experiment's training runs. MLflow 3.17's UI opens an experiment's root
    on its GenAI overview in a browser that never chose "Model training", whatever the kind tag
    says (checked in Chromium); the link names the page and the workflow."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> int:
    """`python -m facemask.mlflow_tracking --ui URL`: tag the experiment and print its runs page."""
    import argparse

    from facemask.config import load_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="where the UI is (or will be) served")
    args = parser.parse_args(argv)
    experiment_id = setup(load_params(args.params).mlflow)
    print(f"the training runs: {runs_url(args.ui, experiment_id)}")
    return 0


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


def attach(cfg: MlflowConfig, ref_path: Path) -> dict[str, str]:
    """What a later stage opens with: the reference of the training run it logs to (`ref_path`, which
    the training stage wrote), MLflow pointed at the tracking server. Then `mlflow.start_run(run_id=ref["run_id"])`."""
    ref = read_run_ref(ref_path)
    setup(cfg)
    return ref


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


if __name__ == "__main__":
    raise SystemExit(main())
