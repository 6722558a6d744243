"""Project configuration: Hydra composition into params.yaml and a validated, typed view of it.

`conf/` holds the Hydra groups; `compose()` turns them (plus overrides) into the plain dictionary
that is written to `params.yaml`, the single file DVC tracks. Every stage reads params.yaml through
`load_params()`, which validates it and names the offending key on any bad value.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from facemask.atomic_files import write_atomic
from facemask.errors import FacemaskError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
PARAMS_FILE = Path("params.yaml")


class ConfigError(FacemaskError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Strict):
    raw: Path
    interim: Path
    crops: Path
    models: Path
    reports: Path
    manifest: Path
    feedback: Path
    feedback_manifest: Path
    crop_table: Path
    augmentation: Path
    augment_preview: Path
    classifier: Path
    classifier_run: Path
    metrics: Path
    scene_metrics: Path
    detector_weights: Path
    detector_onnx: Path
    detector_run: Path


class Source(_Strict):
    """An image source. `kind: folders`: one subfolder per label (upstream archives that label by
    file-name suffix instead name the folder each suffix goes to in `suffix_folders`); `kind: scenes`:
    PASCAL VOC scenes (images/ + annotations/), every boxed face a sample. `url` may list several
    archives (merged). `auth: kaggle`: the download needs a Kaggle API token."""

    kind: Literal["folders", "scenes"] = "folders"
    url: str | list[str] | None = None
    sha256: str | list[str | None] | None = None
    mirror_dir: str
    label_map: dict[str, str] = Field(min_length=1)
    suffix_folders: dict[str, str] | None = None
    auth: Literal["none", "kaggle"] = "none"
    licence: str | None = None

    @model_validator(mode="after")
    def _suffixes(self) -> Source:
        unknown = set((self.suffix_folders or {}).values()) - set(self.label_map)
        if unknown:
            raise ValueError(f"suffix_folders names folders {sorted(unknown)} that label_map does not map")
        return self

    @model_validator(mode="after")
    def _checksums(self) -> Source:
        urls = self.urls
        sums = self.sha256 if isinstance(self.sha256, list) else [self.sha256] * len(urls)
        if len(sums) != len(urls):
            raise ValueError(f"sha256 lists {len(sums)} digests for {len(urls)} urls")
        for digest in sums:
            if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"sha256 {digest!r} is not 64 lowercase hex digits")
        return self

    @property
    def urls(self) -> list[str]:
        return [] if self.url is None else [self.url] if isinstance(self.url, str) else list(self.url)

    @property
    def checksums(self) -> list[str | None]:
        return self.sha256 if isinstance(self.sha256, list) else [self.sha256] * len(self.urls)


class Dedup(_Strict):
    drop_distance: int = Field(ge=0, le=64)
    group_distance: int = Field(ge=0, le=64)

    @model_validator(mode="after")
    def _ordered(self) -> Dedup:
        if self.group_distance < self.drop_distance:
            raise ValueError("group_distance must be >= drop_distance")
        return self


class Split(_Strict):
    val: float = Field(gt=0, lt=1)
    test: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_train(self) -> Split:
        if self.val + self.test >= 0.9:
            raise ValueError("val + test must leave at least 10% for training")
        return self


class EvalGuard(_Strict):
    """Training images that copy an evaluation scene (perceptual hash, also of a central crop) are
    dropped at ingest, so the scenes the project is judged on are never trained on."""

    enabled: bool
    distance: int = Field(ge=0, le=64)


class Data(_Strict):
    labels: list[str] = Field(min_length=2)
    compliant: str  # the class worn correctly (the gate admits it, compliance counts it)
    sources: dict[str, Source] = Field(min_length=1)
    image_extensions: list[str]
    max_per_class: int | None = Field(gt=0)
    max_image_pixels: int = Field(gt=0)
    dedup: Dedup
    split: Split
    eval_guard: EvalGuard

    @model_validator(mode="after")
    def _labels_known(self) -> Data:
        if self.compliant not in self.labels:
            raise ValueError(f"compliant {self.compliant!r} is not one of the labels {self.labels}")
        for name, source in self.sources.items():
            unknown = set(source.label_map.values()) - set(self.labels)
            if unknown:
                raise ValueError(f"sources.{name}.label_map maps onto unknown labels {sorted(unknown)}")
        return self


class Weights(_Strict):
    """Where a model file comes from: `path` (a file this project builds, e.g. a pipeline output),
    else the mirror copy (`mirror_path` under $FACEMASK_MIRROR/models), else a verified download."""

    file: str
    path: str | None = None
    mirror_path: str | None = None
    url: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


DetectorName = Literal["yunet", "retinaface", "retinaface_mnet", "retinaface_ft", "centerface"]


class BoxFit(_Strict):
    """How a detector's box maps onto the annotated face box (PASCAL VOC face-mask convention):
    centre shifted by a fraction of the box's width/height, sides scaled. Identity by default;
    `python -m facemask.scenes.calibrate` measures it on annotated scenes."""

    scale_w: float = Field(default=1.0, gt=0.5, lt=2.0)
    scale_h: float = Field(default=1.0, gt=0.5, lt=2.0)
    shift_x: float = Field(default=0.0, ge=-0.5, le=0.5)
    shift_y: float = Field(default=0.0, ge=-0.5, le=0.5)


class Detector(_Strict):
    """A face detector: `_target_` is the factory `hydra.utils.instantiate` calls with (cfg, weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)
    target: str = Field(alias="_target_", pattern=r"^[A-Za-z_][\w.]*$")
    name: DetectorName
    weights: Weights
    score_threshold: float = Field(gt=0, lt=1)
    nms_threshold: float = Field(gt=0, lt=1)
    top_k: int = Field(gt=0)
    min_face: int = Field(ge=1)
    box_fit: BoxFit = Field(default_factory=BoxFit)
    # > 0: a second pass on the image shrunk by this factor, merged by NMS, for faces larger than the
    # detector's training range (a close-up photo's face for a detector made for small faces); 0: none
    large_face_pass: float = Field(default=0.0, ge=0.0, lt=1.0)


class Background(_Strict):
    """False-face crops for the classifier's rejection class: detections in training scenes that
    overlap no annotated face, taken only from scenes that look fully boxed (no unmatched detection
    scores `max_score` or more: a confident unmatched one is likely a real face nobody boxed)."""

    enabled: bool
    label: str = Field(min_length=1)
    max_iou: float = Field(ge=0, lt=1)
    max_score: float = Field(gt=0, le=1)
    max_per_scene: int = Field(ge=0)


class Engine(_Strict):
    """Where per-image work runs (facemask.compute), the crop stage's and the scene evaluation's:
    `dask`, a local Dask cluster of the stage's `workers` processes, or the running cluster at
    `scheduler`; `pool`, a process pool here. One worker and no scheduler: in the stage's process."""

    kind: Literal["dask", "pool"]
    scheduler: str | None = Field(pattern=r"^(tcp|tls|ucx|inproc)://\S+$")
    in_flight: int = Field(ge=1)  # tasks submitted ahead of the next result (memory bound)
    batch: int = Field(ge=1)  # images per task
    connect_timeout_s: float = Field(gt=0)  # to reach `scheduler`

    def in_process(self, workers: int) -> bool:
        """Whether work over `workers` processes runs in the calling process (no cluster, no pool)."""
        return workers <= 1 and not self.scheduler

    @model_validator(mode="after")
    def _scheduler_is_dask(self) -> Engine:
        if self.scheduler and self.kind != "dask":
            raise ValueError("a scheduler address needs kind: dask")
        return self


class Crop(_Strict):
    min_score: float = Field(ge=0, lt=1)
    size: int = Field(ge=16, le=1024)
    margin: float = Field(ge=0, le=2)
    align: bool
    multi_face: Literal["largest", "drop"]
    match_iou: float = Field(gt=0, lt=1)
    background: Background
    workers: int = Field(ge=1)
    jpeg_quality: int = Field(ge=10, le=100)


class Augment(_Strict):
    preview_count: int = Field(ge=1, le=256)
    transforms: list[dict[str, Any]]

    @field_validator("transforms")
    @classmethod
    def _known_transforms(cls, transforms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import albumentations as A

        for i, spec in enumerate(transforms):
            name = spec.get("name")
            if not isinstance(name, str) or not isinstance(getattr(A, name, None), type):
                raise ValueError(f"[{i}].name: {name!r} is not an albumentations transform")
        return transforms


class PretrainedWeights(Weights):
    """Starting weights for the classifier's backbone from a file (the mirror copy, or a download):
    a state dict of the timm model with its own (ImageNet) head, loaded strictly. `mean`/`std` are
    the input normalisation the weights were trained with (the model's must equal them).
    `batchnorm: folded`: every BatchNorm is an identity carrying the folded bias (weights converted
    from a TFLite graph), so its statistics are re-estimated on `bn_samples` training crops before
    fine-tuning (`facemask.training.pretrained`)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    batchnorm: Literal["trained", "folded"] = "trained"
    bn_samples: int = Field(default=512, ge=16)


class Model(_Strict):
    """The classifier's timm backbone. `pretrained`: `none` (from scratch), `timm` (timm's own hub
    weights: needs internet) or a weights file (`PretrainedWeights`)."""

    backbone: str
    pretrained: Literal["none", "timm"] | PretrainedWeights
    drop_rate: float = Field(ge=0, lt=1)
    input_size: int = Field(ge=16, le=1024)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    freeze: list[str]  # module names kept as pretrained (e.g. conv_stem, blocks.0)
    int8_calibration: int = Field(default=0, ge=0)  # training crops the int8 graph is calibrated on; 0: none

    @model_validator(mode="after")
    def _normalisation_of_the_weights(self) -> Model:
        expected = None
        if isinstance(self.pretrained, PretrainedWeights):
            expected = (self.pretrained.mean, self.pretrained.std)
        elif self.pretrained == "timm":
            import timm

            cfg = timm.get_pretrained_cfg(self.backbone)
            expected = (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else None
        if expected is not None and (self.mean, self.std) != expected:
            raise ValueError(
                f"mean/std {list(self.mean)}/{list(self.std)} differ from the pretrained weights' "
                f"{list(expected[0])}/{list(expected[1])}: the network must see inputs as it was trained"
            )
        return self

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("trained"):  # a trained artefact's: checked when it was trained
            return name
        import timm

        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ValueError(f"{name!r} is not a timm model{hint}")
        return name


def _instantiable(value: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(value.get("_target_"), str) or not value["_target_"].strip():
        raise ValueError("needs a `_target_`: the dotted path hydra.utils.instantiate builds")
    return value


# Arguments of an object Hydra builds (`_target_` + keyword arguments), as in lightning-hydra-template.
Instantiable = Annotated[dict[str, Any], AfterValidator(_instantiable)]


class Trainer(_Strict):
    max_epochs: int = Field(ge=1)
    epoch_samples: int | None = Field(ge=1)  # crops drawn per epoch; null: the train split
    scene_share: float | None = Field(ge=0, le=1)  # share of scene crops drawn; null: natural
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    focal_gamma: float = Field(ge=0)  # 0: cross-entropy; > 0: its focal form (training.module.FocalLoss)
    balance: Literal["class_weights", "sampler", "none"]
    num_workers: int = Field(ge=0)
    lightning: Instantiable  # pytorch_lightning.Trainer arguments
    callbacks: dict[str, Instantiable]


class Photometric(_Strict):
    brightness: float = Field(ge=0, le=128)  # +- this many levels
    contrast: float = Field(ge=0, lt=1)  # x U(1 - c, 1 + c)
    saturation: float = Field(ge=0, lt=1)
    hue: float = Field(ge=0, le=90)  # +- degrees


class LowResolution(_Strict):
    p: float = Field(ge=0, le=1)  # share of crops degraded
    min_scale: float = Field(gt=0, le=1)  # shrunk by a log-uniform factor in [min_scale, 1], enlarged back


class DetectorTrain(_Strict):
    """Fine-tuning RetinaFace-MobileNet0.25 on the training scenes (stage `train_detector`)."""

    init: str = Field(min_length=1)  # the `detectors` entry whose pretrained weights start the run
    target: str = Field(min_length=1)  # the `detectors` entry that serves the result (thresholds, file)
    input_size: int = Field(ge=64, le=1280)
    max_epochs: int = Field(ge=1)
    epoch_samples: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    freeze: list[str]
    freeze_batchnorm: bool = True
    match_iou: float = Field(gt=0, lt=1)
    neg_ratio: int = Field(ge=1)
    min_negatives: int = Field(ge=0)
    unboxed_min_score: float = Field(gt=0, le=1)
    box_weight: float = Field(gt=0)
    landmark_weight: float = Field(ge=0)
    scale_range: tuple[float, float]
    face_centred: float = Field(ge=0, le=1)
    flip: bool
    photometric: Photometric
    low_resolution: LowResolution
    val_scenes: int | None = Field(ge=1)
    num_workers: int = Field(ge=0)
    lightning: Instantiable  # pytorch_lightning.Trainer arguments
    callbacks: dict[str, Instantiable]

    @model_validator(mode="after")
    def _scales(self) -> DetectorTrain:
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("scale_range must be two increasing positive factors, e.g. [0.35, 1.5]")
        return self


class Mlflow(_Strict):
    tracking_uri: str
    artifact_location: str
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)
    champion_alias: str = Field(min_length=1, pattern=r"^[A-Za-z][\w-]*$")
    promotion_margin: float = Field(ge=0, le=1)
    registered_detector: str = Field(min_length=1)


ClassifierRuntime = Literal["torch", "onnxruntime", "onnxruntime_int8"]


class Pipeline(_Strict):
    detect_long_side: int = Field(ge=0, le=8192)
    classifier_runtime: ClassifierRuntime  # onnxruntime: the network's ONNX export (conf/pipeline)
    max_upscale: float = Field(ge=1, le=16)
    nested_share: float = Field(gt=0, le=1)  # 1: keep every detection NMS kept
    gate_min_score: float = Field(ge=0, le=1)
    # p(background) that drops a box; null: the value calibrated for the classifier (its artefact)
    reject_min_probability: float | None = Field(gt=0, le=1)


class Variant(_Strict):
    detector: DetectorName
    detect_long_side: int = Field(ge=0, le=8192)

    @property
    def name(self) -> str:
        return f"{self.detector}@{self.detect_long_side or 'native'}"


class Scenes(_Strict):
    source: Source
    dir: Path | None
    iou_threshold: float = Field(gt=0, lt=1)
    size_bins: tuple[int, int]
    operating_precision: float = Field(gt=0, le=1)
    workers: int = Field(ge=1)
    gallery_size: int = Field(ge=0, le=400)
    compare: list[Variant]

    @model_validator(mode="after")
    def _bins_ordered(self) -> Scenes:
        if not 0 < self.size_bins[0] < self.size_bins[1]:
            raise ValueError("size_bins must be two increasing positive sizes, e.g. [32, 96]")
        return self


class Smoothing(_Strict):
    method: Literal["k_of_n", "ema"]
    window: int = Field(ge=1, le=100)
    k: int = Field(ge=1)
    ema_alpha: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _k_in_window(self) -> Smoothing:
        if self.k > self.window:
            raise ValueError("k must not exceed window")
        return self


class Alerts(_Strict):
    classes: list[str] = Field(min_length=1)
    after_s: float = Field(ge=0)
    track_cooldown_s: float = Field(ge=0)
    camera_cooldown_s: float = Field(ge=0)
    min_score: float = Field(ge=0, le=1)
    snapshots: Literal["store", "blur", "off"]  # the faces in an alert's snapshot and clip: personal data


class FrameDiff(_Strict):
    enabled: bool
    threshold: float = Field(ge=0, le=255)
    max_reuse: int = Field(ge=0)


class SearchRegions(_Strict):
    """Between full-frame detections, the detector searches only around the faces it last found."""

    enabled: bool
    full_every: int = Field(ge=1, le=100)  # a full-frame detection at least every this many frames
    margin: float = Field(ge=0, le=10)  # each face's region: its box grown by margin x its size per side
    max_share: float = Field(gt=0, le=1)  # regions covering this share of the frame: a full pass instead


class Webhook(_Strict):
    url: str | None = Field(pattern=r"^https?://")
    timeout_s: float = Field(gt=0)
    retries: int = Field(ge=0, le=20)
    backoff_s: float = Field(ge=0)
    max_queue: int = Field(ge=1)  # events waiting in memory; more spill to the pending file
    retry_s: float = Field(gt=0)  # how often the pending file is retried while idle


class Mqtt(_Strict):
    url: str | None = Field(pattern=r"^mqtts?://[A-Za-z0-9.\-]+(:\d{1,5})?/?$")  # null: no MQTT
    topic_prefix: str = Field(pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")  # no wildcards
    username: str | None
    password_env: str = Field(pattern=r"^[A-Z_][A-Z0-9_]*$")  # the environment variable with the password
    ca_file: Path | None  # mqtts: the CA that signed the broker's certificate (null: the system's)
    keepalive_s: int = Field(ge=5, le=3600)
    timeout_s: float = Field(gt=0)  # the broker's acknowledgement of one event
    max_queue: int = Field(ge=1)  # events waiting in memory; more spill to the pending file
    retry_s: float = Field(gt=0)  # the pending file is retried this often; the longest reconnect delay


class Sinks(_Strict):
    log: bool
    jsonl: Path
    rotate_bytes: int = Field(ge=1000)  # the event file rotates at this size or each UTC day
    retention_days: float = Field(gt=0)  # rotated event files older than this are deleted
    webhook: Webhook
    mqtt: Mqtt


class Media(_Strict):
    """Event media: per alert, the best view of the offending face and a clip around the alert."""

    dir: Path | None  # <dir>/<camera>/<event id>.jpg | .mp4; null: `media` beside the event file
    clips: bool  # false: a snapshot only, no frames kept
    pre_roll_s: float = Field(ge=0, le=60)
    post_roll_s: float = Field(ge=0, le=60)
    max_fps: float = Field(gt=0, le=60)  # frames kept per second for clips
    max_side: int = Field(ge=64, le=4096)  # frames kept at most this long (px)
    reveal_subject: bool  # with alerts.snapshots=blur: the alerted face left sharp, the others blurred
    retention_days: float = Field(gt=0)
    max_media_mb: float = Field(gt=0)
    sweep_s: float = Field(gt=0)  # how often retention is enforced (and at start)
    max_pending: int = Field(ge=1)  # recordings waiting to be written; more are dropped, with a warning


class Feedback(_Strict):
    """Reviewers turn alerts into training data: the alerted face's region is kept unblurred (under
    media retention) so that a verdict on it can be stored as a PASCAL VOC scene."""

    enabled: bool  # off: no unblurred pixels are kept for review and corrections are refused
    dir: Path | None  # <dir>/images/<event id>.jpg + annotations/<event id>.xml; null: `feedback` beside the event file
    context: float = Field(ge=0, le=10)  # the region kept: the face box grown by this x its size on each side


class Stream(_Strict):
    min_score: float = Field(ge=0, lt=1)
    iou_match: float = Field(gt=0, lt=1)
    max_missed_s: float = Field(gt=0)
    smoothing: Smoothing
    alerts: Alerts
    frame_diff: FrameDiff
    regions: SearchRegions
    stats_interval_s: float = Field(gt=0)
    sinks: Sinks
    media: Media
    feedback: Feedback = Feedback(enabled=False, dir=None, context=1.0)  # absent in models packaged before it

    @property
    def media_dir(self) -> Path:
        """Where event media are written: `media.dir`, or the folder `media` beside the event file."""
        return self.media.dir or Path(self.sinks.jsonl).parent / "media"

    @property
    def feedback_dir(self) -> Path:
        """Where reviewed alerts become scenes: `feedback.dir`, or the folder `feedback` beside the event file."""
        return self.feedback.dir or Path(self.sinks.jsonl).parent / "feedback"

    def switched(self, **enabled: bool | None) -> Stream:
        """These settings with sections switched on or off (`frame_diff=True`, `regions=False`;
        None leaves a section as configured)."""
        update = {k: getattr(self, k).model_copy(update={"enabled": v}) for k, v in enabled.items() if v is not None}
        return self.model_copy(update=update)


CAMERA_NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # a camera's name: in URLs, topics, file names and metric labels
PROFILE_NAME = r"^[a-z][a-z0-9_-]{0,31}$"  # a detection profile's name: in requests, URLs and camera configs


class Profile(_Strict):
    """How faces are found (the classifier is the same for all): the full pass's input size, region
    search between full passes on streams, and the detector."""

    description: str = ""
    detector: DetectorName | None = None  # None: the served detector (`detector`); else a `detectors` entry
    detect_long_side: int = Field(ge=0, le=8192)  # as pipeline.detect_long_side (0: the frame as it is)
    regions: bool | None = None  # region search on streams; None: as stream.regions.enabled


class Profiles(_Strict):
    """Named detection profiles; a camera or a request picks one, else `default` answers."""

    default: str
    profiles: dict[str, Profile] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> Profiles:
        bad = [name for name in self.profiles if not re.match(PROFILE_NAME, name)]
        if bad:
            raise ValueError(f"profile names are 1-32 lower-case letters, digits, '_' or '-': {bad}")
        if self.default not in self.profiles:
            raise ValueError(f"default profile {self.default!r} is not one of {sorted(self.profiles)}")
        return self

    def check(self, name: str | None) -> str:
        """`name` (None: the default) if it is a profile; UnknownProfile naming the known ones if not."""
        name = self.default if name is None else name
        if name not in self.profiles:
            raise UnknownProfile(f"unknown detection profile {name!r}: one of {', '.join(sorted(self.profiles))}")
        return name


class UnknownProfile(FacemaskError, ValueError):
    """A camera or a request named a detection profile the deployment does not have."""


class Zone(_Strict):
    """A polygon in frame-relative coordinates (0..1, x right, y down). Faces in an `ignore` zone are
    left out; where a camera has `count` zones, a face outside all of them is left out too."""

    name: str = Field(min_length=1)
    kind: Literal["count", "ignore"] = "count"
    points: list[tuple[float, float]] = Field(min_length=3)

    @model_validator(mode="after")
    def _relative(self) -> Zone:
        if any(not (0 <= v <= 1) for point in self.points for v in point):
            raise ValueError(f"zone {self.name!r}: points are frame-relative, each coordinate in [0, 1]")
        return self


class Camera(_Strict):
    """A camera the service pulls itself: an RTSP or HTTP(S) (MJPEG) URL, a video file, or a device index."""

    name: str = Field(pattern=CAMERA_NAME)
    source: str | int
    fps: float = Field(default=5.0, gt=0, le=60)  # frames sampled per second for analysis
    enabled: bool = True
    zones: list[Zone] = Field(default_factory=list)
    anchor: Literal["centre", "feet"] = "centre"  # the point of a face's box a zone must hold
    profile: str | None = None  # the detection profile (`profiles`); None: the default one

    @model_validator(mode="after")
    def _source(self) -> Camera:
        if isinstance(self.source, str) and not self.source.strip():
            raise ValueError("source is empty")
        if isinstance(self.source, int) and self.source < 0:
            raise ValueError("a device index is >= 0")
        return self


class Reconnect(_Strict):
    initial_s: float = Field(gt=0)  # the first wait after a failed or dropped connection, doubled each try
    max_s: float = Field(gt=0)  # the longest wait
    fail_after: int = Field(ge=1)  # attempts in a row before the camera is `failed` (it keeps trying)


class Cameras(_Strict):
    """The cameras the service pulls (RTSP, HTTP, files, devices); WebSocket cameras push instead."""

    open_timeout_s: float = Field(gt=0)
    read_timeout_s: float = Field(gt=0)
    reconnect: Reconnect
    sources: list[Camera]

    @model_validator(mode="after")
    def _unique(self) -> Cameras:
        names = [c.name for c in self.sources]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"camera names must be unique: {twice} given more than once")
        return self


class Serving(_Strict):
    """The service's limits (one worker). Each can be overridden per deployment by the environment
    variable FACEMASK_<NAME> (e.g. FACEMASK_MAX_UPLOAD_BYTES); API keys never live here."""

    max_upload_bytes: int = Field(ge=1024)
    max_frame_bytes: int = Field(ge=1024, le=16_000_000)  # uvicorn closes a WebSocket on a message over 16 MiB
    max_pixels: int = Field(ge=1)
    gate_min_confidence: float = Field(ge=0, le=1)
    gate_deny: dict[str, str]  # the gate's reason for each class but the compliant one
    pipelines: int = Field(ge=1, le=64)
    max_waiting: int = Field(ge=0)
    max_cameras: int = Field(ge=1)
    idle_expiry_s: float = Field(gt=0)
    allowed_origins: list[str]
    api_keys_file: Path | None
    reload_poll_s: float = Field(ge=0)  # how often the registry's champion alias is checked; 0: never
    batch_window_ms: float = Field(default=0.0, ge=0, le=1000)  # a lone camera frame waits this long for others
    batch_max_frames: int = Field(default=8, ge=1, le=256)  # camera frames classified in one batch at most


class Params(_Strict):
    seed: int  # the data split (ingest)
    train_seed: int  # the networks' training draws (train_detector, augment, train)
    paths: Paths
    data: Data
    detector: Detector
    crop: Crop
    engine: Engine
    augment: Augment
    model: Model
    trainer: Trainer
    mlflow: Mlflow
    pipeline: Pipeline
    scenes: Scenes
    stream: Stream
    serving: Serving
    cameras: Cameras
    profiles: Profiles
    detectors: dict[str, Detector] = Field(default_factory=dict)
    detector_train: DetectorTrain

    @property
    def classifier_labels(self) -> list[str]:
        """The classifier's outputs: the face labels, then the rejection class when enabled."""
        bg = self.crop.background
        return [*self.data.labels, bg.label] if bg.enabled else list(self.data.labels)

    @model_validator(mode="after")
    def _cross_checks(self) -> Params:
        unknown = set(self.scenes.source.label_map.values()) - set(self.data.labels)
        if unknown:
            raise ValueError(f"scenes.source.label_map maps onto unknown labels {sorted(unknown)}")
        if self.crop.background.label in self.data.labels:
            raise ValueError(f"crop.background.label {self.crop.background.label!r} is also a face label")
        others = set(self.data.labels) - {self.data.compliant}
        if set(self.serving.gate_deny) != others:
            raise ValueError(f"serving.gate_deny must give a reason for each of {sorted(others)}")
        unknown = set(self.stream.alerts.classes) - set(self.data.labels)
        if unknown:
            raise ValueError(f"stream.alerts.classes names unknown labels {sorted(unknown)}")
        missing = {self.detector_train.init, self.detector_train.target} - set(self.detectors)
        if missing:
            raise ValueError(f"detector_train names detectors with no config under `detectors`: {sorted(missing)}")
        missing = {v.detector for v in self.scenes.compare} - set(self.detectors)
        if missing:
            raise ValueError(f"scenes.compare names detectors with no config under `detectors`: {sorted(missing)}")
        missing = {p.detector for p in self.profiles.profiles.values() if p.detector} - set(self.detectors)
        if missing:
            raise ValueError(f"profiles name detectors with no config under `detectors`: {sorted(missing)}")
        trained = {n for n, p in self.profiles.profiles.items() if p.detector not in (None, self.detector.name)
                   and p.detector == self.detector_train.target}  # fmt: skip
        if trained:
            raise ValueError(f"profiles {sorted(trained)}: the fine-tuned detector ships only as `detector`")
        for camera in self.cameras.sources:
            if camera.profile is not None and camera.profile not in self.profiles.profiles:
                raise ValueError(f"camera {camera.name!r}: unknown profile {camera.profile!r}, "
                                 f"one of {sorted(self.profiles.profiles)}")  # fmt: skip
        return self


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def validate(raw: dict[str, Any], origin: str = "params") -> Params:
    """Validate a composed configuration; raise ConfigError naming each bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (the file DVC tracks)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `make params` to compose it from conf/")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping, got {type(raw).__name__}")
    return validate(raw, str(path))


def compose(overrides: list[str] | None = None, config_dir: Path = CONF_DIR) -> dict[str, Any]:
    """Compose conf/config.yaml with Hydra overrides into a plain, validated dictionary."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides or [])
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose {config_dir}: {err}") from None
    validate(raw, f"{config_dir} with overrides {overrides or []}")
    return raw


def write_params(raw: dict[str, Any], path: Path | str = PARAMS_FILE) -> None:
    header = "# Composed from conf/ by `make params` (facemask.config). Do not edit by hand.\n"
    text = header + yaml.safe_dump(raw, sort_keys=False, default_flow_style=False, width=100)
    write_atomic(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compose conf/ into params.yaml (Hydra overrides allowed).")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=mobilenetv3 trainer.lr=0.01")
    parser.add_argument("--out", default=str(PARAMS_FILE), help="where to write (default params.yaml)")
    parser.add_argument("--check", action="store_true", help="only verify that --out is up to date")
    args = parser.parse_args(argv)
    try:
        raw = compose(args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    if args.check:
        current = yaml.safe_load(Path(args.out).read_text()) if Path(args.out).is_file() else None
        if current != raw:
            print(f"{args.out} is out of date with conf/: run `make params`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    write_params(raw, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
