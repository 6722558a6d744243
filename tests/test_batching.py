"""Camera frames analysed in batches (`FrameBatcher`): several cameras' frames classified together
answer exactly what each camera alone answers, one camera's bad frame fails alone, a lone camera
never waits for a batch, and frames still waiting at shutdown are refused, not lost silently.

Real data: the entrance clip (`entrance_frames`, made from the shared photos) and the pipeline's
own classifier and detector (the ones dvc.lock records).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from facemask.config import load_params
from facemask.pipeline import MaskPipeline
from facemask.serving.batching import BatcherClosed
from facemask.serving.live import LiveStreams
from facemask.serving.pool import PipelinePool
from facemask.stream.session import CameraSession

from .conftest import FPS, REPO, entrance_frames, pipeline_output

pytestmark = pytest.mark.slow
CAMERAS = ("door", "ward", "queue", "lobby")


@pytest.fixture(scope="module")
def clip(shared) -> list[np.ndarray]:
    return list(entrance_frames(shared))[::2][:30]  # 3 s at 5 fps: the unmasked person enters at 2 s


def streams(pipelines: list[MaskPipeline], tmp_path, window_ms: float, max_frames: int = 8) -> LiveStreams:
    params = load_params(REPO / "params.yaml")
    raw = params.stream.model_dump()
    raw["sinks"]["jsonl"] = tmp_path / "events.jsonl"
    raw["alerts"]["snapshots"] = "off"
    cfg = type(params.stream).model_validate(raw)
    limits = params.serving.model_copy(update={"batch_window_ms": window_ms, "batch_max_frames": max_frames})
    it = iter(pipelines)
    return LiveStreams(PipelinePool(lambda: next(it), len(pipelines)), cfg, limits)


def push_at_once(live: LiveStreams, cameras, clip: list[np.ndarray]) -> dict[str, list[dict]]:
    """Every camera pushes the clip at once (the next frame after the answer, 5 fps timestamps), each
    from a thread of its own; then the streams are closed. Returns each camera's answers."""
    answers: dict[str, list[dict]] = {c: [] for c in cameras}

    def camera_client(camera: str) -> None:
        for i, frame in enumerate(clip):
            answers[camera].append(live.analyse(camera, frame, now=1000.0 + i / 5))

    threads = [threading.Thread(target=camera_client, args=(c,)) for c in cameras]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    live.close()
    return answers


def summary(answer: dict) -> list[tuple]:
    return [(t["id"], t["label"], t["since"]) for t in answer["tracks"]]


def test_cameras_batched_together_answer_as_each_alone(pipeline, shared, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEMASK_MIRROR", str(shared))
    second = MaskPipeline.from_params(load_params(REPO / "params.yaml"), pipeline_output("models/classifier.pt"))
    live = streams([pipeline, second], tmp_path, window_ms=50)
    reference = CameraSession("alone", pipeline, live.cfg)
    expected = [reference.process(frame, now=1000.0 + i / 5) for i, frame in enumerate(clip)]
    for camera in CAMERAS:
        live.open(camera)
    answers = push_at_once(live, CAMERAS, clip)
    sizes = live.batcher.sizes
    assert sum(n * k for n, k in sizes.items()) == len(CAMERAS) * len(clip)  # every frame once
    assert sum(k for n, k in sizes.items() if n > 1) >= len(clip) // 2, f"frames were not batched: {sizes}"
    assert max(sizes) <= len(CAMERAS)  # one frame per camera in a batch
    assert any(summary(e) for e in expected) and any(e["alerts"] for e in expected)  # faces and an alert
    for camera in CAMERAS:
        got = answers[camera]
        assert [summary(a) for a in got] == [summary(e) for e in expected], camera
        assert [len(a["alerts"]) for a in got] == [len(e["alerts"]) for e in expected], camera
        assert [a["detection"] for a in got] == [e["detection"] for e in expected], camera
        for a, e in zip(got, expected, strict=True):
            for ta, te in zip(a["tracks"], e["tracks"], strict=True):
                assert ta["box"] == pytest.approx(te["box"], abs=0.2)
                assert (ta["confidence"], ta["score"]) == pytest.approx((te["confidence"], te["score"]), abs=2e-3)


def test_a_bad_frame_fails_alone_and_shutdown_refuses_what_waits(pipeline, clip, tmp_path):
    live = streams([pipeline], tmp_path, window_ms=200)
    for camera in CAMERAS:
        live.open(camera)
    live.analyse("door", clip[0], now=1000.0)  # door is live: the others' frames wait for it
    futures = {c: live.submit(c, clip[1], now=1000.2) for c in CAMERAS[1:]}
    bad = live.submit("door", np.zeros((0, 0, 3), np.uint8), now=1000.2)
    with pytest.raises(ValueError, match="non-empty HxWx3"):
        bad.result(60)
    for camera, future in futures.items():
        assert len(future.result(60)["tracks"]) == 1, camera
    assert max(live.batcher.sizes) > 1  # the bad frame was in a batch with good ones
    assert len(live.analyse("door", clip[2], now=1000.4)["tracks"]) == 1  # and door goes on

    with live.pool.lease():  # the only pipeline held: the worker's next batch cannot start
        running = live.submit("door", clip[3], now=1000.6)  # taken into a batch, waits for the pipeline
        deadline = time.monotonic() + 30
        while "door" not in live.batcher.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        waiting = live.submit("door", clip[4], now=1000.8)  # door is in flight: this one waits
        closing = threading.Thread(target=live.batcher.close)
        closing.start()
        deadline = time.monotonic() + 30
        while not waiting.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(BatcherClosed):
            waiting.result(0)
    assert len(running.result(60)["tracks"]) == 1  # the batch in progress ends
    closing.join(30)
    with pytest.raises(BatcherClosed):
        live.submit("ward", clip[4], now=1000.8)
    live.close()


def test_a_lone_camera_never_waits_for_a_batch(pipeline, clip, tmp_path):
    live = streams([pipeline], tmp_path, window_ms=1000)  # a frame that waited would take 1 s more
    live.open("door")
    started = time.monotonic()
    for i, frame in enumerate(clip[:10]):
        live.analyse("door", frame, now=1000.0 + i / FPS)
    elapsed = time.monotonic() - started
    live.close()
    assert elapsed < 5.0, f"10 frames of one camera took {elapsed:.1f} s: the lone frame waited for a batch"
