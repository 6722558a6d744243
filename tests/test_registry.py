"""The promotion gate against a real MLflow tracking server and model registry: both outcomes."""

from __future__ import annotations

import os

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from facemask.registry import current_champion, promote


def log_candidate(uri: str, f1: float) -> tuple[str, str]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run() as run:
        mlflow.log_metric("test.macro_f1", f1)
        info = mlflow.pytorch.log_model(
            torch.nn.Linear(4, 3), name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    return run.info.run_id, info.model_uri


@pytest.fixture
def restore_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: undo both after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI", ""))
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_promotion_gate_both_outcomes(mlflow_server, restore_tracking_uri):
    client = MlflowClient(mlflow_server)
    name = "gate-test"
    run1, uri1 = log_candidate(mlflow_server, 0.90)
    first = promote(client, name, uri1, run1, 0.90, "champion", margin=0.01)
    assert first.promoted and first.reason == "no champion yet"
    assert client.get_model_version_by_alias(name, "champion").version == first.candidate_version

    run2, uri2 = log_candidate(mlflow_server, 0.905)  # better, but not by the margin
    second = promote(client, name, uri2, run2, 0.905, "champion", margin=0.01)
    assert not second.promoted
    assert second.champion_version == first.candidate_version and second.champion_macro_f1 == 0.90
    assert client.get_model_version_by_alias(name, "champion").version == first.candidate_version
    rejected = client.get_model_version(name, second.candidate_version)
    assert rejected.tags["promotion"] == "rejected" and "does not beat" in rejected.tags["promotion_reason"]

    run3, uri3 = log_candidate(mlflow_server, 0.93)
    third = promote(client, name, uri3, run3, 0.93, "champion", margin=0.01)
    assert third.promoted
    assert current_champion(client, name, "champion") == (third.candidate_version, 0.93)
    assert len(client.search_model_versions(f"name='{name}'")) == 3
