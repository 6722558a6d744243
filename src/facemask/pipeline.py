"""The detection pipeline: detector -> aligned crops -> batched classifier.

`FaceFinder` is the one way a face is found and cut out: the crop stage builds the training crops
with it and `MaskPipeline` (evaluation, the service, the camera client) serves with it, so a face is
detected, cropped and preprocessed exactly as in training.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np

from facemask.boxes import Box, Region, merge_regions, nested
from facemask.classifier import MaskClassifier
from facemask.config import BoxFit, Params, Pipeline, Profiles, UnknownProfile
from facemask.detection import Face, FaceDetector, build_detector
from facemask.detection.align import crop_face


@dataclass(frozen=True)
class FaceResult:
    """One face: box (x1, y1, x2, y2) in frame pixels, detector score, class and probabilities."""

    box: Box
    score: float
    label: str
    confidence: float
    probabilities: dict[str, float]
    detection: Face | None = field(default=None, repr=False, compare=False)  # what the crop was cut from

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "detection"}


REGION_GRID = 32  # detector pixels: a searched region starts on the detectors' coarsest stride, so
# its anchors sit where the whole frame's do and a face in it is seen as in the whole frame


def detect_at(
    detector: FaceDetector, frame: np.ndarray, settings: Pipeline, regions: Sequence[Region] | None = None
) -> list[Face]:
    """Faces in frame coordinates, the detector seeing the frame resized to `detect_long_side` (0: as
    is), enlarged at most `max_upscale` times (a close-up blown up further outgrows the detector's
    anchors); parts of a face (`nested_share` of their area inside a larger, higher-scored face) dropped.

    `regions` (frame pixels): only these parts of the resized frame are searched (a stream's known
    faces between full passes), each widened to the `REGION_GRID`, so a face looks to the detector
    as it does in the whole frame."""
    h, w = frame.shape[:2]
    long_side = settings.detect_long_side
    scale = min(long_side / max(h, w), settings.max_upscale) if long_side else 1.0
    image = frame
    if abs(scale - 1.0) < 1e-3:
        scale = 1.0
    else:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=interpolation)
    if regions is None:
        faces = detector.detect(image)
    else:
        faces = [
            face.transformed(1.0, (-x1, -y1))
            for x1, y1, x2, y2 in _on_grid(regions, scale, image.shape)
            for face in detector.detect(image[y1:y2, x1:x2])
        ]
    if image is not frame:
        faces = [face.transformed(scale) for face in faces]
    if len(faces) < 2 or settings.nested_share >= 1:
        return faces
    parts = nested([f.box for f in faces], [f.score for f in faces], settings.nested_share)
    return [f for f, part in zip(faces, parts, strict=True) if not part]


def _on_grid(regions: Sequence[Region], scale: float, shape: tuple[int, ...]) -> list[Region]:
    """Frame regions in pixels of the frame resized by `scale`, widened to `REGION_GRID`, merged."""
    g, (h, w) = REGION_GRID, shape[:2]
    return merge_regions([
        (int(x1 * scale) // g * g, int(y1 * scale) // g * g,
         min(w, -(-int(np.ceil(x2 * scale)) // g) * g), min(h, -(-int(np.ceil(y2 * scale)) // g) * g))
        for x1, y1, x2, y2 in regions
    ])  # fmt: skip


def fit_box(box: np.ndarray, fit: BoxFit) -> np.ndarray:
    """A detector box (x1, y1, x2, y2) mapped onto the annotated face-box convention."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + fit.shift_x * w, (y1 + y2) / 2 + fit.shift_y * h
    hw, hh = fit.scale_w * w / 2, fit.scale_h * h / 2
    return np.array([cx - hw, cy - hh, cx + hw, cy + hh], dtype=np.float32)


def unfit_box(box: np.ndarray, fit: BoxFit) -> np.ndarray:
    """The inverse of `fit_box`: an annotated face box in the detector's own box convention."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = (x2 - x1) / fit.scale_w, (y2 - y1) / fit.scale_h
    cx, cy = (x1 + x2) / 2 - fit.shift_x * w, (y1 + y2) / 2 - fit.shift_y * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float32)


class FaceFinder:
    """Finds faces in a BGR frame and cuts each out: one detection call (`detect_at` with the
    pipeline settings) and one crop function (`crop_face`), for training crops and serving alike."""

    def __init__(self, detector: FaceDetector, settings: Pipeline, crop_size: int, margin: float, align: bool = True):
        self.detector, self.settings = detector, settings
        self.crop_size, self.margin, self.align = crop_size, margin, align

    @classmethod
    def from_params(cls, params: Params, detector: FaceDetector | None = None) -> FaceFinder:
        crop = params.crop
        detector = detector or build_detector(params.detector)
        return cls(detector, params.pipeline, crop.size, crop.margin, crop.align)

    def detect(self, frame: np.ndarray, regions: Sequence[Region] | None = None) -> list[Face]:
        """Faces in frame coordinates; the detector sees the frame (or only its `regions`) resized
        as `detect_at` says."""
        return detect_at(self.detector, frame, self.settings, regions)

    def crop(self, frame: np.ndarray, faces: list[Face]) -> list[np.ndarray]:
        """One `crop_size` square crop per face, cut from the frame at its own resolution."""
        return [crop_face(frame, f, self.crop_size, self.margin, self.align) for f in faces]


def face_labels(classifier: MaskClassifier) -> list[str]:
    """The face classes a pipeline with this classifier answers (its rejection class never is one)."""
    return [lb for lb in classifier.labels if lb != classifier.meta.get("reject_label")]


def compliant_label(classifier: MaskClassifier) -> str:
    """The class worn correctly (the training config's `data.compliant`, kept in the artefact)."""
    label = classifier.meta.get("compliant_label")
    if label not in face_labels(classifier):
        raise ValueError(
            f"the classifier artefact names no compliant class among {face_labels(classifier)}: retrain it"
        )
    return label


class MaskPipeline:
    """Finds every face in a BGR frame and classifies its mask, all faces in one batch."""

    def __init__(
        self,
        detector: FaceDetector,
        classifier: MaskClassifier,
        crop_size: int,
        margin: float,
        align: bool = True,
        settings: Pipeline | None = None,
        box_fit: BoxFit | None = None,
    ):
        """`settings` default: detect at the frame's own size, every detection kept and counted by the gate.

        A classifier trained with a rejection class (the crop stage's `background`) drops the faces
        it gives that class `settings.reject_min_probability` or more: they are never reported."""
        self.classifier = classifier
        self.settings = settings or Pipeline(
            detect_long_side=0, classifier_runtime="torch", max_upscale=1.0, nested_share=1.0,
            gate_min_score=0.0, reject_min_probability=None,
        )  # fmt: skip
        self.finder = FaceFinder(detector, self.settings, crop_size, margin, align)
        self.box_fit = box_fit or BoxFit()
        rejects = [i for i, lb in enumerate(classifier.labels) if lb == classifier.meta.get("reject_label")]
        self.reject_index = rejects[0] if rejects else None
        self.face_index = [i for i in range(len(classifier.labels)) if i != self.reject_index]
        self.profiles: Profiles | None = None  # `with_profiles`: the named ways faces are found
        self.profile_name: str | None = None  # the profile this pipeline answers as (None: no profiles)
        self.region_search: bool | None = None  # the profile's region search on streams (None: as configured)
        self._profiled: dict[str, MaskPipeline] = {}

    def with_profiles(
        self, profiles: Profiles, detectors: Mapping[str, tuple[FaceDetector, BoxFit]] | None = None
    ) -> MaskPipeline:
        """This pipeline answering under each of `profiles` (`profile(name)`): one classifier in memory,
        faces found at the profile's input size by its detector (`detectors` by name, with its box fit;
        a profile naming none uses this pipeline's). Returns self."""
        detectors = detectors or {}
        self.profiles, self._profiled = profiles, {}
        for name, profile in profiles.profiles.items():
            variant = copy.copy(self)
            detector, box_fit = self.detector, self.box_fit
            if profile.detector not in (None, self.detector.name):
                if profile.detector not in detectors:
                    raise ValueError(f"profile {name!r} needs the detector {profile.detector!r}, which is not loaded")
                detector, box_fit = detectors[profile.detector]
            variant.settings = self.settings.model_copy(update={"detect_long_side": profile.detect_long_side})
            finder = self.finder
            variant.finder = FaceFinder(detector, variant.settings, finder.crop_size, finder.margin, finder.align)
            variant.box_fit, variant.profile_name, variant.region_search = box_fit, name, profile.regions
            self._profiled[name] = variant
        return self

    def profile(self, name: str | None = None) -> MaskPipeline:
        """The pipeline of the detection profile `name` (None: the default; without profiles, this
        one); an unknown name is an UnknownProfile that names the known ones."""
        if self.profiles is None:
            if name is None:
                return self
            raise UnknownProfile(f"unknown detection profile {name!r}: this pipeline has no profiles")
        return self._profiled[self.profiles.check(name)]

    @classmethod
    def from_classifier(
        cls,
        detector: FaceDetector,
        classifier: MaskClassifier,
        fallback_crop: dict | None = None,
        settings: Pipeline | None = None,
        box_fit: BoxFit | None = None,
    ) -> MaskPipeline:
        """Crop faces as the classifier's training did: the settings its artefact records, else
        `fallback_crop`; an artefact without them and no fallback is refused."""
        crop = {**(fallback_crop or {}), **classifier.meta.get("crop", {})}
        if not crop:
            raise ValueError("the classifier artefact records no crop settings: retrain it with this version")
        return cls(detector, classifier, crop["size"], crop["margin"], crop["align"], settings, box_fit)

    @classmethod
    def from_params(
        cls,
        params: Params,
        classifier: Path | MaskClassifier,
        detector: FaceDetector | None = None,
        profiles: bool = False,
    ) -> MaskPipeline:
        """Pipeline from the configuration; crop settings come from the classifier artefact when it
        records them (they must match training), else from `params.crop`. `profiles`: with the
        configured detection profiles (`with_profiles`), their other detectors built too."""
        if not isinstance(classifier, MaskClassifier):
            classifier = MaskClassifier.load(classifier, params.pipeline.classifier_runtime)
        detector = detector or build_detector(params.detector)
        pipeline = cls.from_classifier(
            detector, classifier, params.crop.model_dump(), params.pipeline, params.detector.box_fit
        )
        if not profiles:
            return pipeline
        names = {p.detector for p in params.profiles.profiles.values()} - {None, params.detector.name}
        others = {n: (build_detector(params.detectors[n]), params.detectors[n].box_fit) for n in sorted(names)}
        return pipeline.with_profiles(params.profiles, others)

    @property
    def detector(self) -> FaceDetector:
        return self.finder.detector

    @property
    def labels(self) -> list[str]:
        """The face classes the pipeline answers (a rejection class is never an answer)."""
        return face_labels(self.classifier)

    @property
    def compliant(self) -> str:
        """The class worn correctly (gate, compliance, colours)."""
        return compliant_label(self.classifier)

    def detect_faces(self, frame: np.ndarray, regions: Sequence[Region] | None = None) -> list[Face]:
        """Faces in frame coordinates (kept apart from `classify` so callers can reuse detections).

        With `detect_long_side` set, the detector sees the frame resized to that longer side;
        with `regions`, only those parts of it (`detect_at`)."""
        return self.finder.detect(frame, regions)

    def classify(self, frame: np.ndarray, faces: list[Face]) -> list[FaceResult]:
        """Classify given faces of a frame (one batch through the network). Crops come from the
        detector's own boxes, as in training; the reported box is mapped by `box_fit`. Faces the
        classifier rejects as background are dropped; the others' probabilities are over the face
        classes (they sum to one) and their `score` is the detector's times p(face)."""
        return self.classify_many([(frame, faces)])[0]

    def classify_many(
        self, items: Sequence[tuple[np.ndarray, list[Face]]], via: Sequence[MaskPipeline] | None = None
    ) -> list[list[FaceResult]]:
        """`classify` for several frames (each with its faces): every face of every frame through
        the network in one batch (several cameras' frames at once), the results split back per frame.
        `via`: the profile pipeline that found each frame's faces (its crops and box fit; default this)."""
        via = via or [self] * len(items)
        crops = [crop for (frame, faces), p in zip(items, via, strict=True) for crop in p.finder.crop(frame, faces)]
        probs = self._predict(crops)
        out, start = [], 0
        for (_, faces), p in zip(items, via, strict=True):
            out.append(p.results(faces, probs[start : start + len(faces)]))
            start += len(faces)
        return out

    def probabilities(self, frame: np.ndarray, faces: list[Face]) -> np.ndarray:
        """The classifier's raw output (faces x all its labels, the rejection class included)."""
        return self._predict(self.finder.crop(frame, faces))

    def _predict(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, len(self.classifier.labels)), dtype=np.float32)
        return self.classifier.predict_proba(crops, bgr=True)

    @property
    def reject_min_probability(self) -> float:
        """p(background) from which a face is dropped: the setting, else the value calibrated for
        this classifier on validation scenes (its artefact records it), else 0.5."""
        configured = self.settings.reject_min_probability
        return float(configured if configured is not None else self.classifier.meta.get("reject_min_probability", 0.5))

    def results(
        self, faces: list[Face], probs: np.ndarray, reject_min_probability: float | None = None
    ) -> list[FaceResult]:
        """FaceResults from raw `probabilities`, rejecting at `reject_min_probability` (default: the
        pipeline's). Each result carries the detection it came from."""
        threshold = self.reject_min_probability if reject_min_probability is None else reject_min_probability
        results = []
        for face, p in zip(faces, probs, strict=True):
            p_face = 1.0 if self.reject_index is None else 1.0 - float(p[self.reject_index])
            if p_face <= 1.0 - threshold:
                continue
            q = p[self.face_index] / max(float(p[self.face_index].sum()), 1e-9)
            k = int(q.argmax())
            results.append(
                FaceResult(
                    box=tuple(round(float(v), 1) for v in fit_box(face.box, self.box_fit)),
                    score=round(face.score * p_face, 4),
                    label=self.labels[k],
                    confidence=round(float(q[k]), 4),
                    probabilities={lb: round(float(v), 4) for lb, v in zip(self.labels, q, strict=True)},
                    detection=face,
                )
            )
        return results

    def __call__(self, frame: np.ndarray) -> list[FaceResult]:
        if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
            raise ValueError("expected a non-empty HxWx3 BGR frame")
        return self.classify(frame, self.detect_faces(frame))
