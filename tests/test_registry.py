"""The promotion gate against a real MLflow tracking server and model registry: both outcomes, a
champion measured on another test split, and a registry that cannot be read."""

from __future__ import annotations

import os

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from facemask.registry import current_champion, promote

from .conftest import free_port


def log_candidate(uri: str, f1: float) -> tuple[str, str]:
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run() as run:
        mlflow.log_metric("test.face_macro_f1", f1)
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
    first = promote(client, name, uri1, run1, 0.90, "champion", margin=0.01, test_split="split-a")
    assert first.promoted and first.reason == "no champion yet"
    assert client.get_model_version_by_alias(name, "champion").version == first.candidate_version

    run2, uri2 = log_candidate(mlflow_server, 0.905)  # better, but not by the margin
    second = promote(client, name, uri2, run2, 0.905, "champion", margin=0.01, test_split="split-a")
    assert not second.promoted and not second.champion_rescored
    assert second.champion_version == first.candidate_version and second.champion_macro_f1 == 0.90
    assert client.get_model_version_by_alias(name, "champion").version == first.candidate_version
    rejected = client.get_model_version(name, second.candidate_version)
    assert rejected.tags["promotion"] == "rejected" and "does not beat" in rejected.tags["promotion_reason"]

    run3, uri3 = log_candidate(mlflow_server, 0.93)
    third = promote(client, name, uri3, run3, 0.93, "champion", margin=0.01, test_split="split-a")
    assert third.promoted
    assert current_champion(client, name, "champion") == (third.candidate_version, 0.93, "split-a")
    assert len(client.search_model_versions(f"name='{name}'")) == 3


@pytest.mark.slow
def test_a_champion_from_another_test_split_is_rescored_not_compared(mlflow_server, restore_tracking_uri):
    client = MlflowClient(mlflow_server)
    name = "gate-split-test"
    run1, uri1 = log_candidate(mlflow_server, 0.97)  # a high figure, on an easier, older test split
    first = promote(client, name, uri1, run1, 0.97, "champion", margin=0.0, test_split="old-split")
    assert first.promoted

    # without a way to re-score the champion, the figures are not comparable: the alias stays
    run2, uri2 = log_candidate(mlflow_server, 0.90)
    second = promote(client, name, uri2, run2, 0.90, "champion", margin=0.0, test_split="new-split")
    assert not second.promoted and "not comparable" in second.reason and "old-split" in second.reason
    assert client.get_model_version_by_alias(name, "champion").version == first.candidate_version

    # re-scored on the new split the champion reaches only 0.85: the candidate's 0.90 wins
    asked: list[str] = []
    third = promote(
        client, name, uri2, run2, 0.90, "champion", margin=0.0, test_split="new-split",
        rescore=lambda version: asked.append(version) or 0.85,
    )  # fmt: skip
    assert asked == [first.candidate_version]
    assert third.promoted and third.champion_rescored and third.champion_macro_f1 == 0.85
    assert "champion re-scored" in third.reason
    version = client.get_model_version(name, third.candidate_version)
    assert version.tags["test_split"] == "new-split" and version.tags["test_face_macro_f1"] == "0.9"

    # on the same split again, the recorded figure is compared and no re-scoring is asked for
    run4, uri4 = log_candidate(mlflow_server, 0.89)
    fourth = promote(
        client, name, uri4, run4, 0.89, "champion", margin=0.0, test_split="new-split",
        rescore=lambda version: pytest.fail("re-scored a champion measured on the same split"),
    )  # fmt: skip
    assert not fourth.promoted and fourth.champion_macro_f1 == 0.90


def test_a_registry_that_cannot_be_reached_is_an_error_not_an_empty_one(monkeypatch):
    """A server that is down must stop the gate; it must never read as "no champion yet"."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException):
        promote(client, "nowhere", "runs:/x/model", "x", 0.9, "champion", margin=0.0, test_split="s")
