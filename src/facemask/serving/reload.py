"""Hot reload: a service that serves the registry's champions follows their aliases.

Every `serving.reload_poll_s` (and on `POST /admin/reload`) the `ChampionWatch` asks the MLflow
registry which versions hold the aliases the served models were imported from. When one moved, the
new classifier (and detector, if its alias moved) is downloaded and loaded into a new pipeline pool
beside the old one, each pipeline warmed up on a frame, checked to answer with the same labels,
then swapped in between frames (`PipelinePool.replace`): requests in flight finish on the old
models, the next ones get the new. A version that cannot be loaded or warmed up is refused (the
reason logged and on `/info`) and the old models keep serving; it is not tried again until the
alias moves once more.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from facemask.serving.pool import PipelinePool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Watched:
    """A registered model the service serves: its registry name, the alias it follows, the version
    it serves now."""

    name: str
    alias: str
    version: str

    @property
    def served(self) -> str:
        return f"{self.name}/v{self.version}"

    @classmethod
    def of_stored(cls, model) -> Watched | None:
        """The registered model a BentoML-stored one was imported from (`packaging.import_champion`'s
        metadata) and the alias it follows ("" for a pinned version); None for a model not from the
        registry (a stock detector)."""
        meta = model.info.metadata
        if "mlflow_model" not in meta:
            return None
        alias = meta.get("mlflow_alias", model.info.labels.get("alias", ""))
        return cls(meta["mlflow_model"], "" if alias.startswith("version-") else alias, str(meta["mlflow_version"]))


def model_version(classifier: Watched, detector: Watched | None) -> dict[str, str | None]:
    """What every answer names: the classifier's registered version and the detector's (None for a
    stock detector)."""
    return {"model_version": classifier.served, "detector_version": detector.served if detector else None}


class ChampionWatch:
    def __init__(
        self,
        pool: PipelinePool,
        classifier: Watched,
        detector: Watched | None,
        detector_dir: Path,
        build: Callable[[Path, Path], object],
        poll_s: float,
        registry: Callable[[], object] | None = None,
    ):
        """`build(classifier_dir, detector_dir)`: one pipeline (`packaging.load_pipeline`);
        `registry()`: an MlflowClient (default: MLFLOW_TRACKING_URI's)."""
        self.pool, self.classifier, self.detector = pool, classifier, detector
        self.detector_dir, self.build, self.poll_s = Path(detector_dir), build, poll_s
        self.registry = registry or _client
        self.reloads = 0
        self.last_check: float | None = None
        self.last_reload: float | None = None
        self.refused: dict | None = None  # the last version refused and why
        self.registry_error: str | None = None
        self._refused_versions: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-watch", daemon=True)
        self._workdir = Path(tempfile.mkdtemp(prefix="facemask-reload-"))

    def start(self) -> ChampionWatch:
        if self.poll_s > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def status(self) -> dict:
        return {
            "poll_s": self.poll_s,
            "serving": self.pool.version,
            "classifier": vars(self.classifier),
            "detector": vars(self.detector) if self.detector else None,
            "reloads": self.reloads,
            "last_check": self.last_check,
            "last_reload": self.last_reload,
            "refused": self.refused,
            "registry_error": self.registry_error,
        }

    def _champions(self) -> tuple[str, str | None]:
        client = self.registry()
        clf = client.get_model_version_by_alias(self.classifier.name, self.classifier.alias).version
        det = None
        if self.detector is not None:
            det = client.get_model_version_by_alias(self.detector.name, self.detector.alias).version
        return str(clf), None if det is None else str(det)

    def check(self) -> dict:
        """Ask the registry; load and swap in what moved. Returns `status()` with `reloaded`."""
        with self._lock:
            if not self.classifier.alias:  # a Bento built from a pinned version serves that version
                return {**self.status(), "reloaded": False, "pinned": True}
            self.last_check = time.time()
            try:
                clf_version, det_version = self._champions()
            except Exception as err:  # unreachable, a missing alias: the models serving stay
                message = f"{type(err).__name__}: {err}"
                if message != self.registry_error:
                    log.warning("model registry: %s (the served models stay)", message)
                self.registry_error = message
                return {**self.status(), "reloaded": False}
            self.registry_error = None
            classifier = Watched(self.classifier.name, self.classifier.alias, clf_version)
            detector = self.detector and Watched(self.detector.name, self.detector.alias, det_version)
            if classifier == self.classifier and detector == self.detector:
                return {**self.status(), "reloaded": False}
            wanted = " + ".join(v for v in model_version(classifier, detector).values() if v)
            if wanted in self._refused_versions:
                return {**self.status(), "reloaded": False}
            try:
                pool, detector_dir = self._load(classifier, detector)
            except Exception as err:
                self._refused_versions.add(wanted)
                self.refused = {"version": wanted, "reason": f"{type(err).__name__}: {err}", "time": time.time()}
                log.error("refused %s: %s; %s keeps serving", wanted, self.refused["reason"], self.pool.version)
                return {**self.status(), "reloaded": False}
            previous = self.pool.version
            self.pool.replace(pool)
            self.classifier, self.detector, self.detector_dir = classifier, detector, detector_dir
            self.reloads += 1
            self.last_reload = time.time()
            log.info("hot reload: %s now serves (was %s)", self.pool.version, previous)
            return {**self.status(), "reloaded": True}

    def _load(self, classifier: Watched, detector: Watched | None) -> tuple[PipelinePool, Path]:
        """The new versions in a warmed-up pool, and the detector's folder; raises when they cannot
        serve as the old ones do."""
        from facemask.mlflow_tracking import classifier_file
        from facemask.registry import detector_file

        clf_dir = classifier_file(f"models:/{classifier.name}/{classifier.version}").parent
        det_dir = self.detector_dir
        if detector is not None and detector != self.detector:
            det_dir = self._workdir / f"detector-v{detector.version}"
            shutil.copytree(self.detector_dir, det_dir, dirs_exist_ok=True)  # its settings, then its weights
            onnx = detector_file(f"models:/{detector.name}/{detector.version}")
            served = next(self.detector_dir.glob("*.onnx"), None)
            shutil.copy(onnx, det_dir / (served.name if served else onnx.name))
        pool = PipelinePool(lambda: self.build(clf_dir, det_dir), len(self.pool.pipelines),
                            version=model_version(classifier, detector))  # fmt: skip
        old, new = self.pool.first, pool.first
        if (new.labels, new.compliant) != (old.labels, old.compliant):
            raise ValueError(f"its classes {new.labels} (compliant {new.compliant}) are not the served "
                             f"{old.labels} (compliant {old.compliant})")  # fmt: skip
        return pool, det_dir

    def close(self) -> None:
        self._stop.set()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()
