"""Moving models into BentoML's model store and loading them back into a `MaskPipeline`.

`import_champion` copies the MLflow registry's champion classifier (its `classifier.pt`) and the
configured face detector into the BentoML model store (the fine-tuned detector: the registry's
detector champion; a stock one: its weights file), so that a built Bento carries both and downloads
nothing at start. A model is stored once per content (`make serve` imports on every call).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import bentoml
import mlflow
import yaml
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from facemask import mlflow_tracking
from facemask.classifier import MaskClassifier
from facemask.config import Cameras, ConfigError, Detector, Params, Pipeline, Profiles, Serving, Stream
from facemask.detection import FaceDetector, build_detector, detector_backend
from facemask.pipeline import MaskPipeline
from facemask.registry import DEV_TAG, METRIC_TAG, SPLIT_TAG, detector_file

log = logging.getLogger(__name__)
CLASSIFIER_MODEL = "facemask-classifier"
DETECTOR_MODEL = "facemask-detector"
PROFILE_DIR = "profiles"  # in the detector's store folder: the profiles' other detectors


def import_champion(params: Params, classifier_version: str | None = None) -> tuple[str, str]:
    """Champion classifier + detector into the BentoML store; returns their tags. `classifier_version`
    imports that registered version instead of the champion (a test that judges quality on held-out
    photos serves the model whose split it knows)."""
    mlflow_tracking.setup(params.mlflow)
    registry = _absolute_uri(mlflow.get_tracking_uri())  # where a served champion watches its alias
    name, alias = params.mlflow.registered_model, params.mlflow.champion_alias
    client = MlflowClient()
    if classifier_version is None:
        version = client.get_model_version_by_alias(name, alias)
        classifier = mlflow_tracking.classifier_file(f"models:/{name}@{alias}")
    else:
        version = client.get_model_version(name, classifier_version)
        classifier = mlflow_tracking.classifier_file(f"models:/{name}/{classifier_version}")
    meta = {
        "mlflow_model": name,
        "mlflow_version": version.version,
        "mlflow_run_id": version.run_id,
        "mlflow_alias": alias if classifier_version is None else "",  # followed by hot reload; "" pinned
        "mlflow_tracking_uri": registry,
        METRIC_TAG: version.tags.get(METRIC_TAG, ""),  # BentoML metadata takes no None
        SPLIT_TAG: version.tags.get(SPLIT_TAG, ""),
    }
    label = alias if classifier_version is None else f"version-{classifier_version}"
    clf_tag = _store_once(CLASSIFIER_MODEL, f"v{version.version}", {"classifier.pt": classifier.read_bytes()},
                          {"alias": label}, meta)  # fmt: skip

    detector = params.detector
    det_meta = {"backend": detector.name}
    weights = None
    if detector.name == params.detector_train.target:  # the fine-tuned detector ships from the registry
        det_version = client.get_model_version_by_alias(params.mlflow.registered_detector, alias)
        weights = detector_file(f"models:/{params.mlflow.registered_detector}@{alias}")
        det_meta.update({"mlflow_model": params.mlflow.registered_detector, "mlflow_version": det_version.version,
                         "mlflow_alias": alias})  # fmt: skip
        det_meta.update({k: det_version.tags.get(k, "") for k in ("dev_recall", "dev_precision", DEV_TAG)})
    else:
        weights = detector_backend(detector).weights_file(detector)  # None: its package keeps a cache
    files = {
        "detector.json": json.dumps(detector.model_dump(mode="json"), indent=2).encode(),
        "pipeline.json": params.pipeline.model_dump_json(indent=2).encode(),
        "stream.json": params.stream.model_dump_json(indent=2).encode(),
        "serving.json": params.serving.model_dump_json(indent=2).encode(),
        "cameras.json": params.cameras.model_dump_json(indent=2).encode(),
        "profiles.json": params.profiles.model_dump_json(indent=2).encode(),
    }
    if weights is not None:
        files[detector.weights.file] = Path(weights).read_bytes()
    files.update(_profile_detector_files(params))
    det_tag = _store_once(DETECTOR_MODEL, detector.name.replace("_", "-"), files, {}, det_meta)
    log.info("imported %s v%s as %s and detector %s as %s", name, version.version, clf_tag, detector.name, det_tag)
    return clf_tag, det_tag


def _profile_detector_files(params: Params) -> dict[str, bytes]:
    """The stock detectors the detection profiles name besides the served one, with their weights,
    under `profiles/` (a Bento downloads nothing at start)."""
    files = {}
    names = {p.detector for p in params.profiles.profiles.values()} - {None, params.detector.name}
    for name in sorted(names):
        cfg = params.detectors[name]
        files[f"{PROFILE_DIR}/{name}.json"] = json.dumps(cfg.model_dump(mode="json"), indent=2).encode()
        weights = detector_backend(cfg).weights_file(cfg)
        if weights is not None:
            files[f"{PROFILE_DIR}/{cfg.weights.file}"] = Path(weights).read_bytes()
    return files


def _absolute_uri(uri: str) -> str:
    """A local store (`sqlite:///mlflow.db`, a folder) as an absolute URI: the service may start elsewhere."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def _store_once(name: str, prefix: str, files: dict[str, bytes], labels: dict, metadata: dict) -> str:
    """`files` into the BentoML store as `name:<prefix>-<content hash>`, once: the same content imported
    again is the same tag, no new copy (`make serve` imports on every call). The service serves
    `:latest`, so an earlier import brought back (a champion rolled back) is re-created as the newest."""
    digest = hashlib.sha256()
    for file_name in sorted(files):
        digest.update(file_name.encode() + b"\0" + hashlib.sha256(files[file_name]).digest())
    tag = bentoml.Tag(name, f"{prefix}-{digest.hexdigest()[:16]}")
    try:
        bentoml.models.get(tag)
        if bentoml.models.get(f"{name}:latest").tag == tag:
            return str(tag)
        bentoml.models.delete(tag)
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for file_name, data in files.items():
            Path(model.path, file_name).parent.mkdir(parents=True, exist_ok=True)
            Path(model.path, file_name).write_bytes(data)
    return str(model.tag)


class ModelLoadError(RuntimeError):
    """A model in the store is missing or unreadable; the message names the file."""


def load_pipeline(classifier_dir: Path | str, detector_dir: Path | str) -> MaskPipeline:
    """A ready pipeline from the two model-store folders, with its detection profiles when packaged;
    ModelLoadError names a bad file."""
    detector, cfg = _load_detector(Path(detector_dir), "detector.json")
    settings = Path(detector_dir, "pipeline.json")
    try:
        pipeline = Pipeline.model_validate_json(settings.read_text()) if settings.is_file() else None
    except Exception as err:
        raise ModelLoadError(f"cannot load the pipeline settings {settings}: {type(err).__name__}: {err}") from err
    path = Path(classifier_dir) / "classifier.pt"
    try:
        classifier = MaskClassifier.load(path, pipeline.classifier_runtime if pipeline else "torch")
    except Exception as err:  # a truncated or tampered file fails in many ways; all mean the same
        raise ModelLoadError(f"cannot load the classifier model {path}: {type(err).__name__}: {err}") from err
    pipeline = MaskPipeline.from_classifier(detector, classifier, settings=pipeline, box_fit=cfg.box_fit)
    path = Path(detector_dir, "profiles.json")
    if not path.is_file():  # a detector packaged before profiles: its one way of finding faces
        return pipeline
    try:
        profiles = Profiles.model_validate_json(path.read_text())
    except Exception as err:
        raise ModelLoadError(f"cannot load the detection profiles {path}: {type(err).__name__}: {err}") from err
    others = {}
    for name in sorted({p.detector for p in profiles.profiles.values()} - {None, cfg.name}):
        other, other_cfg = _load_detector(Path(detector_dir, PROFILE_DIR), f"{name}.json")
        others[name] = (other, other_cfg.box_fit)
    return pipeline.with_profiles(profiles, others)


def _load_detector(folder: Path, config_file: str) -> tuple[FaceDetector, Detector]:
    """A packaged detector (its config file and the weights beside it); ModelLoadError names a bad file."""
    path = folder / config_file
    try:
        cfg = Detector.model_validate_json(path.read_text())
        weights = folder / cfg.weights.file if detector_backend(cfg).reads_weights else None
        path = weights or path
        return build_detector(cfg, weights), cfg
    except Exception as err:
        raise ModelLoadError(f"cannot load the face detector model {path}: {type(err).__name__}: {err}") from err


def load_stream_config(detector_dir: Path | str) -> Stream:
    """The live post-processing settings packaged beside the detector; the event file and the
    webhook and MQTT broker URLs and the review feedback can be set per deployment (FACEMASK_EVENTS,
    FACEMASK_WEBHOOK_URL, FACEMASK_MQTT_URL, FACEMASK_FEEDBACK=on|off)."""
    raw = json.loads(Path(detector_dir, "stream.json").read_text())
    if os.environ.get("FACEMASK_EVENTS"):
        raw["sinks"]["jsonl"] = os.environ["FACEMASK_EVENTS"]
    if os.environ.get("FACEMASK_WEBHOOK_URL"):
        raw["sinks"]["webhook"]["url"] = os.environ["FACEMASK_WEBHOOK_URL"]
    if os.environ.get("FACEMASK_MQTT_URL"):
        raw["sinks"]["mqtt"]["url"] = os.environ["FACEMASK_MQTT_URL"]
    if os.environ.get("FACEMASK_FEEDBACK"):  # on | off: this deployment keeps faces for review, or not
        feedback = raw.setdefault("feedback", Stream.model_fields["feedback"].default.model_dump(mode="json"))
        feedback["enabled"] = os.environ["FACEMASK_FEEDBACK"].strip().lower() in ("1", "on", "true", "yes")
    cfg = Stream.model_validate(raw)
    if cfg.feedback.enabled and cfg.alerts.snapshots == "off":
        raise ConfigError(
            "stream.feedback is on but stream.alerts.snapshots is off: no alert keeps media, so none keeps its "
            "face for review; set snapshots to blur or store, or FACEMASK_FEEDBACK=off"
        )
    return cfg


def load_cameras_config(detector_dir: Path | str, environ=os.environ) -> Cameras:
    """The cameras to pull: those packaged (conf/cameras), or the YAML file FACEMASK_CAMERAS_FILE
    names (its keys override the packaged ones: usually just `sources`). A bad entry is a ConfigError
    naming the camera and the key."""
    packaged = Path(detector_dir, "cameras.json")
    raw = json.loads(packaged.read_text()) if packaged.is_file() else {}
    if file := environ.get("FACEMASK_CAMERAS_FILE"):
        try:
            override = yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read FACEMASK_CAMERAS_FILE {file}: {err}") from None
        if not isinstance(override, dict):
            raise ConfigError(f"FACEMASK_CAMERAS_FILE {file}: expected a mapping with `sources:`, got {override!r:.80}")
        raw = {**raw, **override}
    try:
        return Cameras.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"bad cameras config ({file or packaged}): {camera_errors(err, raw)}") from None


def camera_errors(err: ValidationError, raw: dict) -> str:
    """Pydantic's errors with each camera named: `camera 'door' (sources[1]) fps: ...`."""
    sources = raw.get("sources") if isinstance(raw.get("sources"), list) else []
    parts = []
    for e in err.errors():
        loc = list(e["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            entry = sources[loc[1]] if loc[1] < len(sources) else {}
            name = entry.get("name", "?") if isinstance(entry, dict) else "?"
            key = ".".join(str(p) for p in loc[2:] if not isinstance(p, str) or p not in ("str", "int")) or "entry"
            where = f"camera {name!r} (sources[{loc[1]}]) {key}"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def load_serving_config(detector_dir: Path | str, environ=os.environ) -> Serving:
    """The service's limits packaged beside the detector, each overridable by FACEMASK_<NAME>
    (a list as comma-separated values, a mapping as JSON); a bad value is a ConfigError naming the variable."""
    raw = json.loads(Path(detector_dir, "serving.json").read_text())
    for name, field in Serving.model_fields.items():
        value = environ.get(f"FACEMASK_{name.upper()}")
        if value is None:
            continue
        if field.annotation == list[str]:
            raw[name] = [v.strip() for v in value.split(",") if v.strip()]
        elif field.annotation == dict[str, str]:
            try:
                raw[name] = json.loads(value)
            except json.JSONDecodeError as err:
                raise ConfigError(f"bad service setting FACEMASK_{name.upper()}: not JSON ({err})") from None
        else:
            raw[name] = value
    try:
        return Serving.model_validate(raw)
    except ValueError as err:
        raise ConfigError(f"bad service setting (serving.json or FACEMASK_<NAME>): {err}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m facemask.serving.packaging`: import the champion + detector into the BentoML store."""
    import argparse
    import sys

    from facemask.config import load_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--classifier-version", help="a registered version to serve instead of the champion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        clf, det = import_champion(load_params(args.params), args.classifier_version)
    except (ConfigError, FileNotFoundError, mlflow.exceptions.MlflowException) as err:
        print(f"cannot import the champion: {err}", file=sys.stderr)
        return 2
    print(f"{clf}\n{det}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
