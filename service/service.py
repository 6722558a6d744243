"""BentoML service: every face in an image found and its mask classified (detect, annotate, gate),
live cameras streamed over a WebSocket (`/live/ws/<camera>`, a page at `/live/`), and the configured
cameras pulled by the service itself (`cameras.sources`; their health on `/cameras/status`).

Thin by design: decoding, the detection pipeline, tracking, alerts, the gate rule, the drawing and
the front door (API keys, limits, back-pressure: `facemask.serving.guard`) live in `facemask`.
Models come from BentoML's store (`make bento-models` imports the MLflow champion and the detector
with its packaged post-processing settings and limits).
"""

import asyncio
import logging
import os
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import BadInput
from bentoml.validators import ContentType
from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

with bentoml.importing():
    import cv2
    import mlflow
    import numpy as np

    from facemask.config import UnknownProfile
    from facemask.draw import draw_faces, label_colours
    from facemask.errors import FacemaskError
    from facemask.imageio import ImageError, decode_image, encode_jpeg
    from facemask.serving.cameras import PulledCameras
    from facemask.serving.decisions import GateRule
    from facemask.serving.events import MEDIA_TYPES, EventNotFound, EventReview, MediaNotReady, parse_time
    from facemask.serving.feedback import BadReview, FeedbackOff, Review
    from facemask.serving.grid import GridFeed
    from facemask.serving.guard import SUBPROTOCOL, Guard, GuardMiddleware, key_id, load_api_keys, request_key
    from facemask.serving.live import CameraLimitError, LiveStreams
    from facemask.serving.packaging import (
        CLASSIFIER_MODEL,
        DETECTOR_MODEL,
        ModelLoadError,
        load_cameras_config,
        load_pipeline,
        load_serving_config,
        load_stream_config,
    )
    from facemask.serving.pool import PipelinePool
    from facemask.serving.prometheus import LiveMetrics
    from facemask.serving.reload import ChampionWatch, Watched, model_version
    from facemask.serving.startup import fail_start, watch_for_failed_start

watch_for_failed_start()  # in `bentoml serve`'s own process: a worker that cannot start ends the server
ImageFile = Annotated[Path, ContentType("image/*")]
live_app = FastAPI(title="facemask live", docs_url=None, redoc_url=None)
cameras_app = FastAPI(title="facemask cameras", docs_url=None, redoc_url=None)
events_app = FastAPI(title="facemask events", docs_url=None, redoc_url=None)
admin_app = FastAPI(title="facemask admin", docs_url=None, redoc_url=None)
METRICS = LiveMetrics()
GUARD = Guard()  # configured once the models are loaded; until then guarded calls get 503


class FaceOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: float = Field(description="face detector score")
    label: str = Field(description="the class, one of info's labels (mask | no_mask | incorrect by default)")
    confidence: float
    probabilities: dict[str, float]


Profile = Annotated[
    str | None,
    Field(description="the detection profile (info's `profiles`: crowd | door | hall by default); none: the default"),
]


class DetectOut(BaseModel):
    model_version: str = Field(description="the classifier that answered: registry name/vN")
    detector_version: str | None = Field(description="the registered face detector that answered (None: a stock one)")
    profile: str | None = Field(description="the detection profile that found the faces")
    width: int
    height: int
    faces: list[FaceOut]


class ReviewIn(BaseModel):
    verdict: str = Field(description="right | wrong_class | not_a_face")
    label: str | None = Field(None, description="with wrong_class: the right class (one of info's labels)")
    box: list[float] | None = Field(
        None, description="a corrected face box x1, y1, x2, y2 in the region image's pixels (default: the detector's)"
    )
    reviewer: str | None = Field(None, description="who judged it (recorded in the scene's annotation)")


class GateOut(BaseModel):
    model_version: str
    detector_version: str | None
    profile: str | None
    allow: bool
    reason: str = Field(
        description="ok | no_face | several_faces | low_confidence | the class's serving.gate_deny reason "
        "(no_mask | mask_incorrect by default)"
    )
    message: str
    faces: list[FaceOut]


# threads: BentoML runs sync APIs on 1 thread by default, which would serialise the pipeline pool;
# admission (serving.pipelines + max_waiting) is the guard's, so more threads only ever wait
@bentoml.service(name="facemask", threads=16, traffic={"timeout": 30})
@bentoml.asgi_app(live_app, path="/live")
@bentoml.asgi_app(cameras_app, path="/cameras")
@bentoml.asgi_app(events_app, path="/events")
@bentoml.asgi_app(admin_app, path="/admin")
class FaceMask:
    classifier_model = bentoml.models.BentoModel(f"{CLASSIFIER_MODEL}:latest")
    detector_model = bentoml.models.BentoModel(f"{DETECTOR_MODEL}:latest")

    def __init__(self) -> None:
        try:
            self._start()
        except (FacemaskError, ModelLoadError, ValueError) as err:  # a model, a setting, the cameras list
            fail_start(str(err))  # the whole server ends with the reason (exit 3), no restart loop

    def _start(self) -> None:
        clf, det = self.classifier_model, self.detector_model  # resolved to stored models when served
        self.limits = load_serving_config(det.path)
        classifier = Watched.of_stored(clf) or Watched(clf.tag.name, "", str(clf.tag.version))
        detector = Watched.of_stored(det)
        self.pool = PipelinePool(lambda: load_pipeline(clf.path, det.path), self.limits.pipelines,
                                 version=model_version(classifier, detector))  # fmt: skip
        self.pipeline = self.pool.first
        compliant = self.pipeline.compliant
        self.gate_rule = GateRule(compliant, self.limits.gate_deny, self.limits.gate_min_confidence,
                                  self.pipeline.settings.gate_min_score).check(self.pipeline.labels)  # fmt: skip
        self.colours = label_colours(self.pipeline.labels, compliant)
        poll_s = self.limits.reload_poll_s if classifier.alias else 0.0  # a pinned version is not followed
        if not os.environ.get("MLFLOW_TRACKING_URI") and clf.info.metadata.get("mlflow_tracking_uri"):
            mlflow.set_tracking_uri(clf.info.metadata["mlflow_tracking_uri"])  # the registry it came from
        self.watch = ChampionWatch(self.pool, classifier, detector, det.path, load_pipeline, poll_s).start()
        self.live = LiveStreams(self.pool, load_stream_config(det.path), self.limits, METRICS)
        self.cameras = PulledCameras(self.live, load_cameras_config(det.path), METRICS).start()
        self.grid = GridFeed(self.cameras)
        self.review = EventReview(self.live.cfg, self.pipeline.labels)
        keys = load_api_keys(self.limits)
        if not keys:
            logging.getLogger(__name__).warning(
                "no API key configured (FACEMASK_API_KEYS or FACEMASK_API_KEYS_FILE): every API is open"
            )
        GUARD.configure(self.limits, keys)

    def __is_ready__(self) -> bool:
        return GUARD.ready  # loaded, warmed up, and a free place at the door

    @bentoml.on_shutdown
    def flush(self) -> None:
        """Every camera's last stats window to the event file; undelivered webhook events kept."""
        self.watch.close()
        self.cameras.close()
        self.live.close()

    def _run(self, image: Path, profile: str | None) -> tuple[np.ndarray, list, dict]:
        """The decoded image, its faces found under the detection `profile`, and the versions of the
        models (and the profile) that found them."""
        try:
            self.pipeline.profile(profile)  # an unknown name is refused before any work
            frame = decode_image(Path(image).read_bytes(), self.limits.max_pixels)
        except (ImageError, UnknownProfile) as err:
            raise BadInput(str(err)) from None
        with self.pool.lease() as pipeline:
            profiled = pipeline.profile(profile)
            return frame, profiled(frame), {**self.pool.version_of(pipeline), "profile": profiled.profile_name}

    @bentoml.api
    def detect(self, image: ImageFile, profile: Profile = None) -> DetectOut:
        """Every face: box, detector score, class and class probabilities."""
        frame, faces, version = self._run(image, profile)
        h, w = frame.shape[:2]
        return DetectOut(**version, width=w, height=h, faces=[f.to_dict() for f in faces])

    @bentoml.api
    def annotate(
        self, image: ImageFile, ctx: bentoml.Context, profile: Profile = None
    ) -> Annotated[Path, ContentType("image/jpeg")]:
        """The image with boxes and labels drawn (JPEG); the model version is in a response header."""
        frame, faces, version = self._run(image, profile)
        out = Path(ctx.temp_dir) / "annotated.jpg"
        out.write_bytes(encode_jpeg(draw_faces(frame, faces, self.colours)))
        ctx.response.headers["X-Model-Version"] = version["model_version"]
        ctx.response.headers["X-Detector-Version"] = version["detector_version"] or "stock"
        ctx.response.headers["X-Faces"] = str(len(faces))
        ctx.response.headers["X-Profile"] = version["profile"] or ""
        return out

    @bentoml.api
    def gate(self, image: ImageFile, profile: Profile = None) -> GateOut:
        """May this person enter? Allow one correctly masked face; otherwise deny with the reason."""
        _, faces, version = self._run(image, profile)
        decision = self.gate_rule.decide(faces)
        return GateOut(
            **version,
            allow=decision.allow,
            reason=decision.reason,
            message=decision.message,
            faces=[f.to_dict() for f in faces],
        )

    @bentoml.api
    def info(self) -> dict:
        """Model version, labels and limits of this deployment."""
        return {
            **self.pool.version,
            "reload": self.watch.status(),  # the aliases followed, reloads done, a version refused and why
            "labels": self.pipeline.labels,
            "compliant": self.pipeline.compliant,
            "detector": self.pipeline.detector.name,
            "profiles": _profiles(self.pipeline),  # the detection profiles a camera or a request may name
            "classifier_runtime": self.pipeline.classifier.runtime,  # onnxruntime_int8: the artefact's int8 graph
            "frame_batches": dict(sorted(self.live.batcher.sizes.items())),  # camera frames per batch -> batches
            "limits": self.limits.model_dump(mode="json", exclude={"api_keys_file", "allowed_origins"}),
            "api_keys_required": GUARD.keys_required,
            "opencv": cv2.__version__,
        }

    @cameras_app.get("/status")
    def camera_status(self) -> list[dict]:
        """The pulled cameras: state (connecting | connected | reconnecting | failed), last error,
        frames read / sampled / dropped / analysed, median latency from capture to answer, faces
        and compliance now. Needs the API key."""
        return self.cameras.health()

    @cameras_app.get("/", response_class=HTMLResponse)
    def cameras_page(self) -> str:
        """The grid page: every pulled camera's newest frame with its boxes and zones, its state and
        compliance, and one alert timeline."""
        return files("facemask.serving").joinpath("web/cameras.html").read_text(encoding="utf-8")

    @cameras_app.websocket("/ws")
    async def cameras_feed(self, websocket: WebSocket) -> None:
        """The grid page's feed: a JSON update every half second, then each camera's new frame as a
        binary message (`GridFeed`). The API key and Origin were checked by the guard."""
        await websocket.accept(
            subprotocol=SUBPROTOCOL if SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None
        )
        sent: dict[str, int] = {}
        alerts_seen = 0
        try:
            while True:
                update, frames, alerts_seen = await asyncio.to_thread(self.grid.update, sent, alerts_seen)
                await websocket.send_json(update)
                for message in frames:
                    await websocket.send_bytes(message)
                await asyncio.sleep(0.5)
        except (WebSocketDisconnect, RuntimeError):  # the page was closed mid-send
            pass

    @admin_app.post("/reload")
    def reload(self) -> dict:
        """Ask the registry now: a champion alias that moved is loaded, warmed up and swapped in
        between frames (`reloaded`: true), or refused with the reason (`refused`) while the old model
        keeps serving. Needs the API key."""
        return self.watch.check()

    @events_app.get("/")
    def list_events(
        self,
        camera: str | None = None,
        label: Annotated[str | None, Query(alias="class")] = None,
        since: str | None = None,
        until: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ):
        """Alerts, newest first: filter by `camera`, `class` and time (`since`/`until`: epoch seconds
        or ISO 8601), paged by `limit`/`offset`. Each names its snapshot and clip (URLs once written,
        and their state: ready | recording | deleted). Needs the API key."""
        try:
            window = parse_time(since), parse_time(until)
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return self.review.list(camera, label, *window, limit=limit, offset=offset)

    @events_app.post("/{event_id}/review")
    def review_event(self, event_id: str, verdict: ReviewIn, request: Request):
        """A reviewer's verdict on an alert's face: `right`, `wrong_class` with the right `label`, or
        `not_a_face`; optionally a corrected `box` in the region image's pixels and the `reviewer`.
        Stored as a PASCAL VOC scene in the feedback folder (`make retrain` trains on it). 403 when
        this deployment keeps nothing for review (`stream.feedback`), 404 for an unknown alert or a
        region deleted by retention, 422 for a verdict, class, box or name that cannot be stored
        (nothing is written), 503 while the region is being recorded. Needs the API key."""
        review = Review(verdict.verdict, verdict.label, tuple(verdict.box) if verdict.box is not None else None,
                        verdict.reviewer, key_id(request_key(request.scope)))  # fmt: skip
        try:
            return self.review.review(event_id, review)
        except (FeedbackOff, BadReview, MediaNotReady, EventNotFound) as err:
            return _refusal(err)

    @events_app.get("/reviewed")
    def reviewed_archive(self):
        """Every reviewed alert this deployment stored (`images/` and `annotations/`, the feedback
        folder's layout) as one gzipped tar, its count in `X-Reviewed-Scenes`: what `make retrain
        FROM=<this service's URL>` pulls. 403 when this deployment keeps nothing for review. Needs the
        API key."""
        handle, name = tempfile.mkstemp(prefix="facemask-reviewed-", suffix=".tar.gz")
        os.close(handle)
        out = Path(name)
        try:
            count = self.review.archive(out)
        except FeedbackOff as err:
            out.unlink(missing_ok=True)
            return _refusal(err)
        return FileResponse(out, media_type="application/gzip", filename="reviewed.tar.gz",
                            headers={"X-Reviewed-Scenes": str(count)},
                            background=BackgroundTask(out.unlink, missing_ok=True))  # fmt: skip

    @events_app.get("/{event_id}/{kind}")
    def event_media(self, event_id: str, kind: str):
        """An alert's `snapshot` (JPEG: the best view, faces blurred unless configured otherwise),
        `clip` (MP4 from the pre-roll to the post-roll) or, with `stream.feedback` on, `region` (the
        face a reviewer judges, sharp, the other faces blurred). 503 with Retry-After while it is being
        recorded; 404 for an unknown event or a deleted file. Needs the API key."""
        if kind not in MEDIA_TYPES:
            return JSONResponse({"error": f"no such media {kind!r}: snapshot or clip"}, status_code=404)
        try:
            path = self.review.media(event_id, kind)
        except (MediaNotReady, EventNotFound) as err:
            return _refusal(err)
        return FileResponse(path, media_type=MEDIA_TYPES[kind], filename=path.name)

    @live_app.get("/", response_class=HTMLResponse)
    def live_page(self) -> str:
        """The browser page: its camera streamed here, boxes, labels, alerts and compliance drawn."""
        return files("facemask.serving").joinpath("web/index.html").read_text(encoding="utf-8")

    @live_app.websocket("/ws/{camera}")
    async def live_stream(self, websocket: WebSocket, camera: str) -> None:
        """One camera per connection: binary JPEG/PNG frames in, one JSON answer per frame out
        (tracks, alerts, compliance). A bad frame gets {"error": ...}; the stream goes on. The API key
        and Origin were checked by the guard before this runs."""
        await websocket.accept(
            subprotocol=SUBPROTOCOL if SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None
        )
        # ?frame_diff=on|off and ?regions=on|off override the packaged settings for a new camera,
        # ?profile=<name> picks its detection profile
        switch = {k: websocket.query_params[k].lower() in ("1", "on", "true") for k in ("frame_diff", "regions")
                  if k in websocket.query_params}  # fmt: skip
        try:
            self.live.open(camera, **switch, profile=websocket.query_params.get("profile"))
        except ValueError as err:  # a bad camera name, an unknown profile
            await websocket.close(code=1008, reason=str(err))
            return
        except CameraLimitError as err:
            await websocket.close(code=1013, reason=str(err))  # try again later
            return
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes")
                if not data:
                    await websocket.send_json({"camera": camera, "error": "send frames as binary JPEG or PNG messages"})
                    continue
                await websocket.send_json(await asyncio.to_thread(self.live.handle, camera, data))
        except WebSocketDisconnect:
            pass
        finally:
            self.live.release(camera)


REFUSALS = ((FeedbackOff, 403), (BadReview, 422), (MediaNotReady, 503), (EventNotFound, 404))


def _refusal(err: Exception) -> JSONResponse:
    """The review API's answer to what it cannot do: the reason, its status, and when to retry a
    medium still being recorded."""
    status = next(code for kind, code in REFUSALS if isinstance(err, kind))
    headers = {"retry-after": str(err.retry_after_s)} if isinstance(err, MediaNotReady) else None
    return JSONResponse({"error": str(err)}, status_code=status, headers=headers)


def _profiles(pipeline) -> dict:
    """The detection profiles served: the default's name and each one's settings."""
    if pipeline.profiles is None:
        return {"default": None, "profiles": {}}
    return pipeline.profiles.model_dump(mode="json")


FaceMask.add_asgi_middleware(
    GuardMiddleware,
    guard=GUARD,
    fields={f"/{name}": api.input_spec.model_fields.keys() for name, api in FaceMask.apis.items()},
)
