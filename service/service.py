"""BentoML service: every face in an image found and its mask classified (detect, annotate, gate),
and live cameras streamed over a WebSocket (`/live/ws/<camera>`, a page at `/live/`).

Thin by design: decoding, the detection pipeline, tracking, alerts, the gate rule and the drawing
live in `facemask`. Models come from BentoML's store (`make bento-models` imports the MLflow
champion and the detector with its packaged post-processing settings).
"""

import asyncio
import os
import threading
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import bentoml
from bentoml.exceptions import BadInput
from bentoml.validators import ContentType
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

with bentoml.importing():
    import cv2
    import numpy as np

    from facemask.imageio import ImageError, decode_image, encode_jpeg
    from facemask.serving.decisions import gate_decision
    from facemask.serving.draw import draw_faces
    from facemask.serving.live import LiveStreams
    from facemask.serving.metrics import LiveMetrics
    from facemask.serving.packaging import CLASSIFIER_MODEL, DETECTOR_MODEL, load_pipeline, load_stream_config

MAX_PIXELS = int(os.environ.get("FACEMASK_MAX_PIXELS", "40000000"))
GATE_MIN_CONFIDENCE = float(os.environ.get("FACEMASK_GATE_MIN_CONFIDENCE", "0.6"))
ImageFile = Annotated[Path, ContentType("image/*")]
live_app = FastAPI(title="facemask live", docs_url=None, redoc_url=None)
METRICS = LiveMetrics()


class FaceOut(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in image pixels")
    score: float = Field(description="face detector score")
    label: str = Field(description="mask | no_mask | incorrect")
    confidence: float
    probabilities: dict[str, float]


class DetectOut(BaseModel):
    model_version: str
    width: int
    height: int
    faces: list[FaceOut]


class GateOut(BaseModel):
    model_version: str
    allow: bool
    reason: str = Field(description="ok | no_face | several_faces | no_mask | mask_incorrect | low_confidence")
    message: str
    faces: list[FaceOut]


@bentoml.service(name="facemask", traffic={"timeout": 30, "max_concurrency": 16})
@bentoml.asgi_app(live_app, path="/live")
class FaceMask:
    classifier_model = bentoml.models.BentoModel(f"{CLASSIFIER_MODEL}:latest")
    detector_model = bentoml.models.BentoModel(f"{DETECTOR_MODEL}:latest")

    def __init__(self) -> None:
        clf, det = self.classifier_model, self.detector_model  # resolved to stored models when served
        self.pipeline = load_pipeline(clf.path, det.path)
        meta = clf.info.metadata
        self.model_version = f"{meta.get('mlflow_model', clf.tag.name)}/v{meta.get('mlflow_version', clf.tag.version)}"
        self._lock = threading.Lock()  # the detector keeps per-input-size state: one frame at a time
        self.live = LiveStreams(self.pipeline, load_stream_config(det.path), self._lock, METRICS)

    def __is_ready__(self) -> bool:
        return self.pipeline is not None

    def _run(self, image: Path) -> tuple[np.ndarray, list]:
        try:
            frame = decode_image(Path(image).read_bytes(), MAX_PIXELS)
        except ImageError as err:
            raise BadInput(str(err)) from None
        with self._lock:
            return frame, self.pipeline(frame)

    @bentoml.api
    def detect(self, image: ImageFile) -> DetectOut:
        """Every face: box, detector score, class and class probabilities."""
        frame, faces = self._run(image)
        h, w = frame.shape[:2]
        return DetectOut(model_version=self.model_version, width=w, height=h, faces=[f.to_dict() for f in faces])

    @bentoml.api
    def annotate(self, image: ImageFile, ctx: bentoml.Context) -> Annotated[Path, ContentType("image/jpeg")]:
        """The image with boxes and labels drawn (JPEG); the model version is in a response header."""
        frame, faces = self._run(image)
        out = Path(ctx.temp_dir) / "annotated.jpg"
        out.write_bytes(encode_jpeg(draw_faces(frame, faces)))
        ctx.response.headers["X-Model-Version"] = self.model_version
        ctx.response.headers["X-Faces"] = str(len(faces))
        return out

    @bentoml.api
    def gate(self, image: ImageFile) -> GateOut:
        """May this person enter? Allow one correctly masked face; otherwise deny with the reason."""
        _, faces = self._run(image)
        decision = gate_decision(faces, GATE_MIN_CONFIDENCE, self.pipeline.settings.gate_min_score)
        return GateOut(
            model_version=self.model_version,
            allow=decision.allow,
            reason=decision.reason,
            message=decision.message,
            faces=[f.to_dict() for f in faces],
        )

    @bentoml.api
    def info(self) -> dict:
        """Model version, labels and limits of this deployment."""
        return {
            "model_version": self.model_version,
            "labels": self.pipeline.labels,
            "detector": self.pipeline.detector.name,
            "max_pixels": MAX_PIXELS,
            "gate_min_confidence": GATE_MIN_CONFIDENCE,
            "opencv": cv2.__version__,
        }

    @live_app.get("/", response_class=HTMLResponse)
    def live_page(self) -> str:
        """The browser page: its camera streamed here, boxes, labels, alerts and compliance drawn."""
        return files("facemask.serving").joinpath("web/index.html").read_text(encoding="utf-8")

    @live_app.websocket("/ws/{camera}")
    async def live_stream(self, websocket: WebSocket, camera: str) -> None:
        """One camera per connection: binary JPEG/PNG frames in, one JSON answer per frame out
        (tracks, alerts, compliance). A bad frame gets {"error": ...}; the stream goes on."""
        await websocket.accept()
        diff = websocket.query_params.get("frame_diff")  # "on" / "off" overrides the packaged setting
        try:
            self.live.open(camera, None if diff is None else diff.lower() in ("1", "on", "true"))
        except ValueError as err:
            await websocket.close(code=1008, reason=str(err))
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
                await websocket.send_json(await asyncio.to_thread(self.live.handle, camera, data, MAX_PIXELS))
        except WebSocketDisconnect:
            pass
        finally:
            self.live.release(camera)
