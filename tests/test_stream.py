"""Live post-processing on a real video file made from the shared photos: stable tracks, exactly
the expected alerts, a webhook that goes down and comes back (every event delivered exactly once),
a rotating event log that loses no line, bounded and expiring camera sessions, and a stream that
survives a bad frame.

The video (10 fps, 640x480, 8 s): a masked person stands on the left the whole time; an unmasked
person enters on the right at 2 s and leaves at 6.5 s. Needs the pipeline's classifier (dvc repro).
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemask.config import load_params
from facemask.pipeline import MaskPipeline
from facemask.stream.delivery import read_jsonl
from facemask.stream.session import CameraSession
from facemask.stream.sinks import EventSinks

from .conftest import FPS, REPO, Subscriber, free_port

pytestmark = pytest.mark.slow


def frames(path: Path):
    cap = cv2.VideoCapture(str(path))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        yield i / FPS, frame
        i += 1
    cap.release()


def stream_cfg(
    tmp_path: Path,
    webhook: str | None = None,
    snapshots: str = "store",
    regions: dict | None = None,
    mqtt: str | None = None,
    **frame_diff,
):
    params = load_params(REPO / "params.yaml")
    cfg = params.stream.model_dump()
    cfg["sinks"]["jsonl"] = tmp_path / "events.jsonl"
    cfg["sinks"]["webhook"].update(url=webhook, timeout_s=0.5, retries=1, backoff_s=0.05, retry_s=0.2)
    cfg["sinks"]["mqtt"].update(url=mqtt, timeout_s=2.0, retry_s=1.0)
    cfg["alerts"]["snapshots"] = snapshots
    cfg["frame_diff"].update(frame_diff)
    cfg["regions"].update(regions or {})
    cfg["stats_interval_s"] = 2.0
    return type(params.stream).model_validate(cfg)


def run(session: CameraSession, video: Path) -> list[dict]:
    return [session.process(frame, now=1000.0 + t) for t, frame in frames(video)]


def streamed_events(pipeline: MaskPipeline, video: Path, cfg) -> list[dict]:
    """The clip through a camera session with `cfg`'s sinks, closed after; the event file's events."""
    sinks = EventSinks(cfg.sinks)
    session = CameraSession("entrance", pipeline, cfg, sinks)
    run(session, video)
    session.close(now=1008.0)
    sinks.close()
    return read_jsonl(cfg.sinks.jsonl)


def test_tracks_are_stable_and_one_alert_fires(pipeline, video, tmp_path):
    cfg = stream_cfg(tmp_path)
    sinks = EventSinks(cfg.sinks)
    session = CameraSession("entrance", pipeline, cfg, sinks)
    out = run(session, video)
    session.close(now=1008.0)
    sinks.close()

    ids_left = {t["id"] for o in out for t in o["tracks"] if t["box"][0] < 320}
    ids_right = {t["id"] for o in out for t in o["tracks"] if t["box"][0] >= 320}
    assert len(ids_left) == 1, f"the standing person changed track id: {ids_left}"
    assert len(ids_right) == 1, f"the visitor changed track id: {ids_right}"
    before = [o for o in out if o["time"] < 1001.9]
    assert all(len(o["tracks"]) == 1 for o in before)
    assert {t["label"] for o in before for t in o["tracks"]} == {"mask"}

    alerts = [a for o in out for a in o["alerts"]]
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert alert["track"] in ids_right and alert["class"] in ("no_mask", "incorrect")
    assert 2.0 <= alert["duration_s"] < 3.5
    assert 1004.0 <= alert["time"] < 1006.0

    events = read_jsonl(cfg.sinks.jsonl)
    written = [e for e in events if e["type"] == "alert"]
    assert len(written) == 1 and written[0]["track"] == alert["track"]
    snapshot = cv2.imdecode(
        np.frombuffer(__import__("base64").b64decode(written[0]["snapshot_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR
    )
    assert snapshot.shape == (128, 128, 3)
    stats = [e for e in events if e["type"] == "stats"]
    assert sum(e["frames"] for e in stats) == len(out) == 80
    assert sum(e["faces_mask"] for e in stats) >= 75  # the standing, masked person in nearly every frame


def test_frame_differencing_skips_the_detector_on_a_static_scene(pipeline, video, tmp_path):
    on = CameraSession("a", pipeline, stream_cfg(tmp_path / "on", enabled=True))
    off = CameraSession("b", pipeline, stream_cfg(tmp_path / "off", enabled=False))
    out_on, out_off = run(on, video), run(off, video)
    assert on.total.detector_runs < 0.6 * on.total.frames
    assert off.total.detector_runs == off.total.frames == 80
    # reusing detections changes no decision about who is there
    assert [len(o["tracks"]) for o in out_on] == [len(o["tracks"]) for o in out_off]
    assert len([a for o in out_on for a in o["alerts"]]) == 1


def test_searching_around_tracked_faces_raises_the_alerts_of_full_detection(pipeline, video, shared, tmp_path):
    """Region mode (the detector searches only around tracked faces between full passes) on the
    entrance clip and the real clip: the same alerts (within a frame), the same faces per frame and the same
    compliance (within 0.02) as with the whole frame searched every frame, the faces per frame the
    same in all but 3 % of the frames, with regions searched on most of the entrance clip's frames.
    A region pass never changes what a track is called nor starts one (a disputed one is replaced
    by a full pass): on every frame answered from regions, every track keeps the class it had.
    Holds for any model the pipeline trains (the real clip's face is borderline: a mask held up,
    nose out; on a model of another machine, region passes once called it `mask` 0.7 s long)."""
    real = shared / "videos/mask-on-1280x720.mp4"
    cap = cv2.VideoCapture(str(real))
    clip = [f for ok, f in iter(cap.read, (False, None))]
    cap.release()
    for name, clip_frames in [("entrance", [f for _, f in frames(video)]), ("real", clip)]:
        sessions = {
            mode: CameraSession(
                name, pipeline, stream_cfg(tmp_path / mode, enabled=False, regions={"enabled": mode == "regions"})
            )
            for mode in ("full", "regions")
        }
        out = {mode: [s.process(f, now=i / 10) for i, f in enumerate(clip_frames)] for mode, s in sessions.items()}
        full, regions = sessions["full"].total, sessions["regions"].total
        assert full.full_detections == full.frames == len(clip_frames)
        # most frames in regions on the entrance clip; the real one is a close-up (a close face's region
        # grown by the margin covers `max_share` of the frame on most frames: a full pass is cheaper
        # there), so only its alerts and faces are compared, with regions searched where they pay
        if name == "entrance":
            assert regions.full_detections < 0.5 * regions.frames, f"{name}: {regions.full_detections} full passes"
        assert {o["detection"] for o in out["regions"]} == {"full", "regions"}
        changed = [
            (o["time"], t["id"], t["label"])
            for o in out["regions"]
            if o["detection"] == "regions"
            for t in o["tracks"]
            if t["since"] >= o["time"]
        ]
        assert not changed, f"{name}: region passes changed or started tracks: {changed}"
        alerts = {m: [(a["time"], a["class"]) for o in out[m] for a in o["alerts"]] for m in out}
        assert len(alerts["full"]) == len(alerts["regions"]) == 1, (name, alerts)
        (t_full, class_full), (t_regions, class_regions) = alerts["full"][0], alerts["regions"][0]
        assert class_regions == class_full and abs(t_regions - t_full) <= 0.1 + 1e-9, (name, alerts)  # a frame
        counts = {m: [len(o["tracks"]) for o in out[m]] for m in out}
        differ = sum(a != b for a, b in zip(counts["regions"], counts["full"], strict=True))
        print(name, "frames whose face count differs:", differ, "of", len(clip_frames), full.faces, regions.faces)
        assert differ <= 0.03 * len(clip_frames), (name, differ)
        compliance = {m: sessions[m].total.share(sessions[m].compliant) for m in out}
        assert abs(compliance["regions"] - compliance["full"]) <= 0.02, (name, compliance)


class Hook:
    """A real webhook receiver on a loopback port, started and stopped at will."""

    def __init__(self, port: int):
        self.port, self.received, self.server = port, [], None
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.handler = Handler

    def start(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_webhook_loses_no_event(pipeline, video, tmp_path):
    port = free_port()
    cfg = stream_cfg(tmp_path, webhook=f"http://127.0.0.1:{port}/hook")  # nothing listens there yet
    written = streamed_events(pipeline, video, cfg)
    pending = read_jsonl(cfg.sinks.jsonl.with_suffix(".pending.jsonl"))
    assert any(e["type"] == "alert" for e in written)
    assert pending == written  # every event is still waiting for the webhook, in order

    hook = Hook(port)
    hook.start()
    try:
        again = EventSinks(cfg.sinks)  # a restart delivers what was pending, streaming the file
        wait_for(lambda: len(hook.received) >= len(written))
        again.close()
    finally:
        hook.stop()
    assert hook.received == written
    assert not cfg.sinks.jsonl.with_suffix(".pending.jsonl").exists()


def test_webhook_down_then_up_delivers_every_event_exactly_once(tmp_path):
    """While running: the receiver is up, goes down for a while, comes back; every event arrives
    once, none twice, none lost; the bounded memory queue spilled to the pending file meanwhile."""
    port = free_port()
    cfg = stream_cfg(tmp_path, webhook=f"http://127.0.0.1:{port}/hook").sinks
    cfg = cfg.model_copy(update={"webhook": cfg.webhook.model_copy(update={"max_queue": 3})})
    hook = Hook(port)
    hook.start()
    sinks = EventSinks(cfg)
    for i in range(5):
        sinks.emit({"type": "test", "n": i})
    wait_for(lambda: len(hook.received) == 5)
    hook.stop()
    for i in range(5, 40):  # the receiver is down: retries fail, the queue fills and spills
        sinks.emit({"type": "test", "n": i})
    wait_for(lambda: cfg.jsonl.with_suffix(".pending.jsonl").exists())
    time.sleep(1.0)
    hook.start()
    for i in range(40, 45):
        sinks.emit({"type": "test", "n": i})
    wait_for(lambda: len(hook.received) >= 45)
    time.sleep(0.5)  # nothing more may arrive
    sinks.close()
    hook.stop()
    ids = [e["id"] for e in hook.received]
    assert len(ids) == len(set(ids)) == 45, "an event arrived twice"
    assert sorted(e["n"] for e in hook.received) == list(range(45))
    assert [e["id"] for e in read_jsonl(cfg.jsonl)] == [e["id"] for e in sorted(hook.received, key=lambda e: e["n"])]
    assert not cfg.jsonl.with_suffix(".pending.jsonl").exists()


def test_alerts_and_compliance_reach_a_real_mqtt_broker(pipeline, video, broker, tmp_path):
    """The entrance clip streamed with MQTT on: the alert arrives once on `facemask/entrance/events`
    (its id, class and camera as in the event file, the snapshot left out), every stats window on
    `.../compliance`, the last one retained for a subscriber that comes later, and availability
    `online` then `offline` (retained) when the sinks close."""
    subscriber = Subscriber(broker.url)
    cfg = stream_cfg(tmp_path, mqtt=broker.url)
    written = streamed_events(pipeline, video, cfg)
    alerts = [e for e in written if e["type"] == "alert"]
    stats = [e for e in written if e["type"] == "stats"]
    assert len(alerts) == 1 and len(stats) >= 4
    wait_for(lambda: subscriber.on("facemask/availability")[-1:] == ["offline"])
    subscriber.close()
    (event,) = subscriber.on("facemask/entrance/events")
    assert (event["id"], event["class"], event["camera"]) == (alerts[0]["id"], alerts[0]["class"], "entrance")
    assert event["snapshot"] is True and "snapshot_jpeg_b64" not in event
    compliance = subscriber.on("facemask/entrance/compliance")
    assert [c["id"] for c in compliance] == [e["id"] for e in stats]
    last = stats[-1]
    faces = {lb: last[f"faces_{lb}"] for lb in pipeline.labels}
    assert compliance[-1]["faces"] == faces and compliance[-1]["frames"] == last["frames"]
    assert compliance[-1]["compliance"] == round(faces["mask"] / sum(faces.values()), 4)
    assert subscriber.on("facemask/availability") == ["online", "offline"]

    later = Subscriber(broker.url, name="later")
    wait_for(lambda: len(later.messages) >= 2)
    retained = {topic: (payload, kept) for topic, payload, kept in later.messages}
    later.close()
    assert retained["facemask/entrance/compliance"] == (compliance[-1], True)
    assert retained["facemask/availability"] == ("offline", True)
    assert "facemask/entrance/events" not in retained  # alerts are events, never retained


def test_mqtt_broker_down_mid_stream_loses_no_event(pipeline, video, broker, tmp_path):
    """The broker stops 2 s into the clip, before the alert, and comes back after the clip: the frame
    loop never waits for it, and once it is back every event of the outage arrives, in order."""
    subscriber = Subscriber(broker.url)
    cfg = stream_cfg(tmp_path, mqtt=broker.url)
    sinks = EventSinks(cfg.sinks)
    session = CameraSession("entrance", pipeline, cfg, sinks)
    clip = list(frames(video))
    for t, frame in clip[:25]:
        session.process(frame, now=1000.0 + t)
    wait_for(lambda: len(subscriber.on("facemask/entrance/compliance")) == 1)
    broker.stop()
    slowest = 0.0
    for t, frame in clip[25:]:
        start = time.perf_counter()
        session.process(frame, now=1000.0 + t)
        slowest = max(slowest, time.perf_counter() - start)
    session.close(now=1008.0)
    assert slowest < 1.0, f"a frame waited {slowest:.1f} s for the broker"
    written = read_jsonl(cfg.sinks.jsonl)
    assert len([e for e in written if e["type"] == "alert" and e["time"] > 1002.5]) == 1
    broker.start()
    wanted = [e["id"] for e in written]
    wait_for(lambda: {m["id"] for _, m, _ in subscriber.messages if isinstance(m, dict)} >= set(wanted), 60)
    sinks.close()
    subscriber.close()
    got = [m["id"] for _, m, _ in subscriber.messages if isinstance(m, dict)]
    assert sorted(set(got), key=got.index) == wanted, "events arrived out of order"
    assert len(subscriber.on("facemask/entrance/events")) == 1


def test_event_log_rotates_by_size_without_losing_a_line(tmp_path):
    """Four threads write 400 events into a log that rotates every ~2 kB: every event is in exactly
    one file, each file holds whole lines, the compliance report reads them all; rotated files past
    the retention are deleted."""
    from facemask.stream.sinks import EventLog, event_files, read_events

    log = EventLog(tmp_path / "events.jsonl", rotate_bytes=2000, retention_days=1)

    def write(t: int) -> None:
        for i in range(100):
            log.append({"type": "stats", "camera": f"c{t}", "time": 3600.0 * 10 + i, "frames": 1, "compliant": "mask",
                        "faces_mask": 1, "faces_no_mask": 0, "faces_incorrect": 0, "id": f"{t}-{i}"})  # fmt: skip

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    files = event_files(log.path)
    assert len(files) > 10
    assert all(f.stat().st_size <= 2000 for f in files)
    ids = [e["id"] for e in read_events(log.path)]
    assert len(ids) == len(set(ids)) == 400

    from facemask.stream.compliance import main

    assert main([str(log.path), "--out", str(tmp_path / "out")]) == 0
    import pandas as pd

    assert pd.read_csv(tmp_path / "out/compliance.csv")["frames"].sum() == 400

    old = files[0]
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    for i in range(100):  # over rotate_bytes: the next rotation deletes what is past the retention
        log.append({"type": "test", "n": i})
    assert not old.exists() and files[1].exists()


def test_snapshots_can_be_blurred_or_not_stored(pipeline, video, tmp_path):
    """Alert snapshots are personal data: `blur` keeps a face crop nobody can recognise, `off` none."""
    sharpness = {}
    for mode in ("store", "blur", "off"):
        cfg = stream_cfg(tmp_path / mode, snapshots=mode)
        sinks = EventSinks(cfg.sinks)
        run(CameraSession("entrance", pipeline, cfg, sinks), video)
        sinks.close()
        alerts = [e for e in read_jsonl(cfg.sinks.jsonl) if e["type"] == "alert"]
        assert len(alerts) == 1
        if mode == "off":
            assert "snapshot_jpeg_b64" not in alerts[0]
            continue
        jpeg = np.frombuffer(base64.b64decode(alerts[0]["snapshot_jpeg_b64"]), np.uint8)
        grey = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
        sharpness[mode] = cv2.Laplacian(grey, cv2.CV_64F).var()
    assert sharpness["blur"] < 0.05 * sharpness["store"], sharpness


def test_cameras_are_bounded_and_idle_ones_expire_with_their_stats(pipeline, video, tmp_path):
    from facemask.config import Serving
    from facemask.serving.live import CameraLimitError, LiveStreams
    from facemask.serving.pool import PipelinePool

    params = load_params(REPO / "params.yaml")
    limits = params.serving.model_copy(update={"max_cameras": 2, "idle_expiry_s": 60.0})
    assert isinstance(limits, Serving)
    cfg = stream_cfg(tmp_path)
    live = LiveStreams(PipelinePool(lambda: pipeline, 1), cfg, limits)
    clips = [cv2.imencode(".jpg", f)[1].tobytes() for _, f in list(frames(video))[:5]]
    for camera in ("door", "ward"):
        live.open(camera)
        for jpeg in clips:
            assert "tracks" in live.handle(camera, jpeg)
    with pytest.raises(CameraLimitError, match="limit of 2 cameras"):
        live.open("lobby")
    assert "over the limit" in live.handle("door", b"x" * (limits.max_frame_bytes + 1))["error"]
    live.release("door")
    assert live.expire_idle(time.time() + 30) == []  # not idle long enough
    assert live.expire_idle(time.time() + 61) == ["door"]  # "ward" is still connected
    live.open("lobby")  # the freed place is taken
    stats = [e for e in read_jsonl(cfg.sinks.jsonl) if e["type"] == "stats"]
    assert [(e["camera"], e["frames"]) for e in stats] == [("door", 5)]
    live.close()  # shutdown: the rest flushed
    stats = [e for e in read_jsonl(cfg.sinks.jsonl) if e["type"] == "stats"]
    assert sorted((e["camera"], e["frames"]) for e in stats) == [("door", 5), ("ward", 5)]


def test_the_stream_survives_a_bad_frame(pipeline, video, tmp_path):
    session = CameraSession("entrance", pipeline, stream_cfg(tmp_path))
    clips = list(frames(video))
    session.process(clips[0][1], now=1000.0)
    for bad in (np.zeros((0, 0, 3), np.uint8), np.zeros((480, 640), np.uint8), None):
        with pytest.raises(ValueError, match="non-empty HxWx3"):
            session.process(bad, now=1000.1)
    out = session.process(clips[1][1], now=1000.2)
    assert len(out["tracks"]) == 1 and out["tracks"][0]["id"] == 1


def test_compliance_per_camera_and_hour(tmp_path):
    """Hand-made events across two hours and two cameras give the expected hourly table. The masked class
    is the one each stats event names (`compliant`); events without it need --compliant."""
    from facemask.stream.compliance import main

    events = tmp_path / "events.jsonl"
    rows = [
        {
            "type": "stats",
            "camera": "door",
            "compliant": "mask",
            "time": 3600 * 10 + 60,
            "frames": 10,
            "faces_mask": 8,
            "faces_no_mask": 2,
            "faces_incorrect": 0,
        },
        {
            "type": "stats",
            "camera": "door",
            "compliant": "mask",
            "time": 3600 * 10 + 120,
            "frames": 10,
            "faces_mask": 2,
            "faces_no_mask": 8,
            "faces_incorrect": 0,
        },
        {
            "type": "stats",
            "camera": "door",
            "compliant": "mask",
            "time": 3600 * 11 + 5,
            "frames": 10,
            "faces_mask": 4,
            "faces_no_mask": 0,
            "faces_incorrect": 0,
        },
        {
            "type": "stats",
            "camera": "ward",
            "time": 3600 * 10 + 30,
            "frames": 5,
            "faces_mask": 0,
            "faces_no_mask": 0,
            "faces_incorrect": 0,
        },
        {"type": "alert", "camera": "door", "time": 3600 * 10 + 90, "track": 3, "class": "no_mask"},
    ]
    events.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    assert main([str(events), "--out", str(tmp_path / "out")]) == 2  # the ward's events name no class
    assert not (tmp_path / "out").exists()
    assert main([str(events), "--out", str(tmp_path / "out"), "--compliant", "mask"]) == 0
    import pandas as pd

    table = pd.read_csv(tmp_path / "out/compliance.csv")
    door = table[table["camera"] == "door"].reset_index(drop=True)
    assert door["faces"].tolist() == [20, 4]
    assert door["masked_share"].tolist() == [0.5, 1.0]
    assert door["alerts"].tolist() == [1, 0]
    assert table[table["camera"] == "ward"]["masked_share"].isna().all()  # no faces: no figure, not 0
    assert (tmp_path / "out/compliance.png").stat().st_size > 1000
    assert main([str(tmp_path / "absent.jsonl")]) == 2


def test_client_reconnects_when_the_service_restarts(video, tmp_path):
    """A real WebSocket server that goes away after 5 frames and comes back a second later: the
    client reconnects, loses no frame and writes the whole annotated video."""
    import subprocess
    import sys
    import time

    from websockets.sync.server import serve

    port = free_port()
    served: list[int] = []

    def handler(ws):
        for message in ws:
            served.append(len(message))
            ws.send(
                json.dumps(
                    {
                        "camera": "door",
                        "tracks": [{"id": 1, "box": [10, 10, 60, 60], "label": "mask", "confidence": 0.9}],
                        "alerts": [],
                        "compliance": 1.0,
                    }
                )
            )
            if len(served) == 5:
                ws.close()
                threading.Thread(target=server.shutdown).start()
                return

    server = serve(handler, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "annotated.mp4"
    client = subprocess.Popen(
        [sys.executable, "-m", "facemask.stream.client", str(video), "--url", f"ws://127.0.0.1:{port}/live/ws/door",
         "--out", str(out), "--max-wait", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    while len(served) < 5:
        time.sleep(0.05)
    time.sleep(1.0)  # the service is down
    server = serve(handler, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stdout, stderr = client.communicate(timeout=120)
    server.shutdown()
    assert client.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["frames"] == 80 and summary["reconnects"] >= 1
    assert 80 <= len(served) <= 81  # a frame in flight when the service went away may be sent twice
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 80


def test_client_refuses_a_missing_source(tmp_path):
    from facemask.stream.client import main

    assert main([str(tmp_path / "absent.mp4")]) == 2


def test_real_clip_mask_put_on(pipeline, shared, tmp_path):
    """The real camera clip (30 fps, 8.9 s): a woman holds a mask up in front of her face, nose out
    (not worn: `incorrect` or `no_mask`), lowers it (unmasked, 1.8-4.4 s), the shot cuts to the mask
    alone, then she wears it. One alert for that unbroken non-compliant stretch (at least `after_s`
    into it, before the cut), none for the masked end, and the smoothed class ends as `mask`."""
    session = CameraSession("clip", pipeline, stream_cfg(tmp_path))
    cap = cv2.VideoCapture(str(shared / "videos/mask-on-1280x720.mp4"))
    fps = cap.get(cv2.CAP_PROP_FPS)
    out, i = [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(session.process(frame, now=i / fps))
        i += 1
    assert i == 268
    # her face is the track the detector is surest of (a hand or a giant box can score 0.3-0.56)
    main = [max(o["tracks"], key=lambda t: t["score"]) if o["tracks"] else None for o in out]
    labels = [t["label"] if t else None for t in main]
    assert "no_mask" in labels[60:120]  # unmasked, mask in hand (2-4 s)
    assert all(lb == "mask" for lb in labels[-45:] if lb), labels[-45:]  # wearing it (last 1.5 s)
    assert sum(lb is not None for lb in labels[-45:]) >= 40
    alerts = [a for o in out for a in o["alerts"]]
    assert len(alerts) == 1 and alerts[0]["class"] in ("no_mask", "incorrect"), alerts
    assert 2.0 <= alerts[0]["time"] <= 4.4 and alerts[0]["time"] - alerts[0]["start"] >= 2.0


def test_an_unbroken_stretch_of_alert_classes_alerts_once(pipeline, tmp_path):
    """A person whose smoothed class goes no_mask -> incorrect -> no_mask (mask pulled up under the
    nose, then down) is one non-compliant stretch: one alert `after_s` after it began; a person
    going no_mask -> mask -> no_mask starts again after the mask. Real frames of the entrance clip;
    the faces' classes are set, so the rule is what is judged."""
    from facemask.detection import Face
    from facemask.pipeline import FaceResult
    from facemask.stream.session import Pending

    cfg = stream_cfg(tmp_path, snapshots="off")
    frame = np.full((480, 640, 3), 120, np.uint8)
    box = (300.0, 100.0, 400.0, 220.0)

    def face(label: str) -> FaceResult:
        probs = {lb: (0.9 if lb == label else 0.1 / (len(pipeline.labels) - 1)) for lb in pipeline.labels}
        detection = Face(np.array(box, np.float32), 0.95, np.zeros((5, 2), np.float32))
        return FaceResult(box, 0.95, label, 0.9, probs, detection)

    def alerts(plan: list[tuple[float, str]]) -> list[dict]:
        session = CameraSession("door", pipeline, cfg)
        out, t = [], 1000.0
        for seconds, label in plan:
            for _ in range(int(seconds * 10)):
                out += session.finish(Pending(frame, t, [], [], "full"), [face(label)])["alerts"]
                t += 0.1
        return out

    flicker = alerts([(1.2, "no_mask"), (1.0, "incorrect"), (1.0, "no_mask")])
    assert len(flicker) == 1 and flicker[0]["class"] in ("no_mask", "incorrect"), flicker
    assert 2.0 <= flicker[0]["duration_s"] <= 2.6  # from the stretch's start, smoothing's lag included
    assert alerts([(1.2, "no_mask"), (1.0, "mask"), (1.2, "no_mask")]) == []  # no stretch of 2 s
