"""Frames of several cameras analysed together: each worker (one per pipeline of the pool) takes the
frames waiting, at most one per camera, finds the faces of each (`CameraSession.begin`), sends every
face of every frame through the classifier in one batch (`MaskPipeline.classify_many`) and hands the
results back to each camera (`finish`). Pushed (WebSocket) and pulled cameras share it.

A lone frame waits up to `batch_window_ms` for the other cameras seen in the last second, never when
no other camera is live (one stream pays no latency). The detector runs frame by frame: measured on
this CPU, a batch of frames costs ONNX Runtime as much per frame as single frames (README, Fast
inference); the classifier gains (MobileNetV2 in ONNX Runtime: 3.9 ms a face in a batch of 4, 5.8 alone).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from facemask.serving.pool import PipelinePool
from facemask.stream.session import CameraSession, Pending

log = logging.getLogger(__name__)
LIVE_S = 1.0  # a camera that sent a frame this recently is expected to send another


class BatcherClosed(RuntimeError):
    """The service is stopping: the frame was not analysed."""


@dataclass(eq=False)
class _Job:
    session: CameraSession
    frame: np.ndarray
    now: float | None
    future: Future = field(default_factory=Future)


class FrameBatcher:
    def __init__(self, pool: PipelinePool, window_ms: float, max_frames: int):
        self.pool, self.window_s, self.max_frames = pool, window_ms / 1000, max(1, max_frames)
        self._jobs: deque[_Job] = deque()
        self._wake = threading.Condition()
        self._in_flight: set[str] = set()  # cameras with a frame in a worker's batch
        self._seen: dict[str, float] = {}  # camera -> its last frame's arrival (monotonic)
        self._stop = False
        self.sizes: Counter[int] = Counter()  # frames per batch -> batches (bench, tests)
        self._workers = [
            threading.Thread(target=self._work, name=f"frame-batcher-{i}", daemon=True)
            for i in range(len(pool.pipelines))
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, session: CameraSession, frame: np.ndarray, now: float | None = None) -> Future:
        """Queue one frame of `session`; the future holds its answer (`CameraSession.finish`) or the
        error of this frame alone. A camera's frames are analysed one at a time, in order."""
        job = _Job(session, frame, now)
        with self._wake:
            if self._stop:
                raise BatcherClosed("the service is stopping")
            self._jobs.append(job)
            self._seen[session.camera] = time.monotonic()
            if len(self._seen) > 4 * max(1, len(self._jobs)) + 64:  # long-gone cameras forgotten
                cutoff = time.monotonic() - LIVE_S
                self._seen = {c: t for c, t in self._seen.items() if t >= cutoff}
            self._wake.notify()
        return job.future

    @property
    def in_flight(self) -> frozenset[str]:
        """The cameras with a frame in a batch now."""
        with self._wake:
            return frozenset(self._in_flight)

    def _eligible(self) -> list[_Job]:
        """The oldest waiting frame of each camera not in a batch."""
        out, cameras = [], set(self._in_flight)
        for job in self._jobs:
            if job.session.camera not in cameras:
                cameras.add(job.session.camera)
                out.append(job)
        return out

    def _take(self) -> list[_Job] | None:
        """The next batch: the waiting frames up to this worker's share of the live cameras (the
        workers split them: a batch on one core while the other idles would be slower than none),
        topped up within the window while other live cameras may still send. Its cameras are in
        flight until `_work` is done with it."""
        with self._wake:
            while not (eligible := self._eligible()):
                if self._stop:
                    return None
                self._wake.wait()
            now = time.monotonic()
            live = sum(now - t < LIVE_S for t in self._seen.values())
            share = min(self.max_frames, max(1, math.ceil(live / len(self._workers))))
            batch: list[_Job] = []
            self._claim(eligible[:share], batch)
            deadline = now + self.window_s
            while len(batch) < share and not self._stop:
                now = time.monotonic()
                if now >= deadline or not any(
                    now - t < LIVE_S and c not in self._in_flight for c, t in self._seen.items()
                ):  # no other live camera may send within the window
                    break
                self._wake.wait(deadline - now)
                self._claim(self._eligible()[: share - len(batch)], batch)
            self.sizes[len(batch)] += 1
            return batch

    def _claim(self, jobs: list[_Job], batch: list[_Job]) -> None:
        for job in jobs:
            self._jobs.remove(job)
            self._in_flight.add(job.session.camera)
            batch.append(job)

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._run(batch)
            except Exception as err:  # never expected: every frame's own errors are caught in _run
                log.exception("a batch of %d frame(s) failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            finally:
                with self._wake:
                    self._in_flight.difference_update(job.session.camera for job in batch)
                    self._wake.notify_all()

    def _run(self, batch: list[_Job]) -> None:
        """Detect per frame, classify all faces at once, finish per camera; a frame that fails
        (a bad frame, a session error) fails alone."""
        with ExitStack() as held, self.pool.lease() as pipeline:
            started: list[tuple[_Job, Pending]] = []
            for job in batch:
                held.enter_context(job.session.lock)
                try:
                    started.append((job, job.session.begin(job.frame, job.now, pipeline)))
                except Exception as err:
                    job.future.set_exception(err)
            try:
                results = pipeline.classify_many([(p.frame, p.faces) for _, p in started],
                                                 via=[p.pipeline for _, p in started])  # fmt: skip
            except Exception as err:
                for job, _ in started:
                    job.future.set_exception(err)
                return
            version = self.pool.version_of(pipeline)  # the models that answered (hot reload swaps them)
            for (job, pending), faces in zip(started, results, strict=True):
                try:
                    answer = job.session.finish(pending, faces)
                    answer.update(version)
                    job.future.set_result(answer)
                except Exception as err:
                    job.future.set_exception(err)

    def close(self) -> None:
        """Stop the workers after their batch in progress; frames still waiting fail with BatcherClosed."""
        with self._wake:
            self._stop = True
            waiting = list(self._jobs)
            self._jobs.clear()
            self._wake.notify_all()
        for job in waiting:
            job.future.set_exception(BatcherClosed("the service is stopping"))
        for worker in self._workers:
            worker.join(10)
