"""Cameras the service pulls itself: zones, the cameras config, a reader per camera (sampling, newest
frame only, reconnect with back-off), many cameras analysed at once, and the served Bento's
/cameras/status. Real sources: the shared real clips served over RTSP by a real GStreamer RTSP server
(`make rtsp-server`), real video files, and a port that accepts connections but never answers.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from facemask.bench.rtsp import CLIPS, RtspServer
from facemask.config import Camera, Cameras, ConfigError, Zone, load_params
from facemask.pipeline import MaskPipeline
from facemask.serving.cameras import PulledCameras
from facemask.serving.live import LiveStreams
from facemask.serving.packaging import load_cameras_config
from facemask.serving.pool import PipelinePool
from facemask.stream.capture import CameraReader, public_source
from facemask.stream.delivery import read_jsonl
from facemask.stream.session import CameraSession
from facemask.stream.zones import ZoneFilter
from facemask.subprocesses import stop

from .conftest import API_KEY, REPO, chromium_binary, entrance_video, pipeline_output, screenshot, start_bento
from .test_stream import frames, stream_cfg

CLIP, STREET = CLIPS  # 30 fps each: a woman unmasked at 2-4 s, then masked (8.9 s); a street, small faces (31 s)


def until(condition, timeout: float, what: str, step: float = 0.1):
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, f"not within {timeout} s: {what}"
        time.sleep(step)
    return value


def cameras_cfg(sources: list[Camera], **reconnect) -> Cameras:
    return Cameras(
        open_timeout_s=2.0,
        read_timeout_s=2.0,
        reconnect={"initial_s": 0.2, "max_s": 1.0, "fail_after": 3, **reconnect},
        sources=sources,
    )


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never says a word (a camera that hangs)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_zones_keep_faces_by_their_anchor_point():
    shape = (100, 200, 3)  # h, w: frame-relative x 0.5 is pixel 100
    door = Zone(name="door", points=[(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)])
    poster = Zone(name="poster", kind="ignore", points=[(0.6, 0.0), (0.8, 0.0), (0.8, 0.3), (0.6, 0.3)])
    zones = ZoneFilter([door, poster])
    assert zones.keeps([120, 40, 160, 80], shape)  # centre (140, 60): in the door, not on the poster
    assert not zones.keeps([20, 40, 60, 80], shape)  # centre (40, 60): outside every count zone
    assert not zones.keeps([130, 5, 150, 25], shape)  # centre (140, 15): on the poster, inside the door
    only_ignore = ZoneFilter([poster])  # no count zone: the whole frame counts but the poster
    assert only_ignore.keeps([20, 40, 60, 80], shape) and not only_ignore.keeps([130, 5, 150, 25], shape)
    floor = Zone(name="floor", points=[(0.0, 0.5), (1.0, 0.5), (1.0, 1.0), (0.0, 1.0)])
    box = [80, 20, 120, 60]  # centre y 40 (upper half), bottom y 60 (lower half)
    assert ZoneFilter([floor], anchor="feet").keeps(box, shape)
    assert not ZoneFilter([floor], anchor="centre").keeps(box, shape)
    assert ZoneFilter([]).keeps([0, 0, 1, 1], shape) and not ZoneFilter([])


def test_a_bad_camera_entry_is_an_error_naming_the_camera_and_the_key(tmp_path):
    packaged = tmp_path / "detector"
    packaged.mkdir()
    (packaged / "cameras.json").write_text(load_params(REPO / "params.yaml").cameras.model_dump_json())
    assert load_cameras_config(packaged, {}).sources == []  # the packaged default pulls nothing
    file = tmp_path / "cameras.yaml"
    env = {"FACEMASK_CAMERAS_FILE": str(file)}
    file.write_text(
        "sources:\n"
        "  - {name: door, source: 'rtsp://cam/1', fps: 0}\n"
        "  - {name: hall, source: 2, zones: [{name: z, points: [[0, 0], [1, 0], [1.5, 1]]}]}\n"
        "  - {name: ward, source: a.mp4, colour: red}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_cameras_config(packaged, env)
    message = str(err.value)
    assert "camera 'door' (sources[0]) fps" in message
    assert "camera 'hall' (sources[1]) zones.0" in message and "frame-relative" in message
    assert "camera 'ward' (sources[2]) colour" in message
    for text, fragment in [
        ("sources: [{name: a, source: x}, {name: a, source: y}]", "unique: ['a']"),
        ("sources: [{name: 'a b', source: x}]", "camera 'a b' (sources[0]) name"),
        ("- just a list", "expected a mapping"),
        ("sources: [{name: a, source: x", "cannot read"),
    ]:
        file.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_cameras_config(packaged, env)
    with pytest.raises(ConfigError, match="cannot read"):
        load_cameras_config(packaged, {"FACEMASK_CAMERAS_FILE": str(tmp_path / "missing.yaml")})
    file.write_text(
        "sources: [{name: door, source: 'rtsp://admin:secret@cam/1'}]\n"
        "reconnect: {initial_s: 2, max_s: 9, fail_after: 2}\n"
    )
    cfg = load_cameras_config(packaged, env)
    assert [(c.name, c.fps, c.enabled) for c in cfg.sources] == [("door", 5.0, True)]
    assert cfg.reconnect.max_s == 9 and cfg.read_timeout_s == 10  # the rest stays as packaged
    assert public_source(cfg.sources[0].source) == "rtsp://***@cam/1"  # never shown with its password


def test_a_camera_that_never_answers_is_failed_with_its_error(silent_port):
    hangs = CameraReader(Camera(name="hangs", source=f"rtsp://127.0.0.1:{silent_port}/x"), cameras_cfg([])).start()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        refused = CameraReader(Camera(name="refused", source=f"rtsp://127.0.0.1:{closed.getsockname()[1]}/x"),
                               cameras_cfg([])).start()  # fmt: skip
        until(lambda: refused.state == "failed", 30, "the refused camera failed")
    until(lambda: hangs.state == "failed", 30, "the silent camera failed")  # 3 attempts of a 2 s open timeout
    for reader in (hangs, refused):
        assert "cannot open rtsp://127.0.0.1:" in reader.last_error and reader.frames_read == 0
        assert reader.connections == 0 and reader.take() is None
        started = time.time()
        reader.stop()
        assert reader.state == "stopped" and time.time() - started < 5  # the back-off wait is cut short


def test_rtsp_camera_samples_the_newest_frame_and_reconnects_after_the_server_restarts(shared, tmp_path):
    server = RtspServer({"street": shared / STREET}, tmp_path / "rtsp.log")
    server.start()
    reader = CameraReader(Camera(name="street", source=server.url("street"), fps=5), cameras_cfg([])).start()
    try:
        until(lambda: reader.frames_sampled >= 6, 20, "six samples from the RTSP stream")
        assert reader.state == "connected" and reader.connections == 1
        sample = reader.take()
        assert sample.frame.shape == (640, 360, 3) and sample.seq == reader.frames_sampled
        assert reader.take() is None  # handed over once
        # 30 fps read, 5 sampled: never more than the newest one waits, the others are dropped
        assert reader.frames_read >= 4 * reader.frames_sampled
        assert reader.frames_dropped >= reader.frames_sampled - 2
        server.stop()
        until(lambda: reader.state in ("reconnecting", "failed"), 15, "the camera noticed the drop")
        assert reader.last_error
        read = reader.frames_read
        server.start()
        until(lambda: reader.connections == 2 and reader.state == "connected", 30, "reconnected")
        until(lambda: reader.frames_read > read + 30, 15, "frames again after the restart")
        assert reader.last_error is None
    finally:
        reader.stop()
        server.stop()


def test_a_corrupt_file_is_read_up_to_its_damage_and_noise_is_refused(shared, tmp_path):
    """A real clip with two stretches of random bytes: its frames are read up to the damage, counted
    as bad there and read again from the start (never a crash, never stuck); a file of noise never
    opens: `failed`, with the error."""
    data = bytearray((shared / STREET).read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    for start in (len(data) // 4, len(data) // 2):
        data[start : start + len(noise)] = noise
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    (tmp_path / "noise.mp4").write_bytes(noise)
    corrupt = CameraReader(Camera(name="corrupt", source=str(tmp_path / "corrupt.mp4")), cameras_cfg([])).start()
    garbage = CameraReader(Camera(name="noise", source=str(tmp_path / "noise.mp4")), cameras_cfg([])).start()
    try:
        # its good part (24 frames) read, the damage counted, and again from the start
        until(lambda: corrupt.frames_bad >= 2 and corrupt.frames_read >= 40, 30, "read to the damage twice")
        assert "unreadable after frame 24 of 928" in corrupt.last_drop and corrupt.frames_sampled >= 2
        until(lambda: garbage.state == "failed", 30, "the noise file failed")
        assert "cannot open" in garbage.last_error and garbage.frames_read == 0
    finally:
        corrupt.stop()
        garbage.stop()


@pytest.fixture(scope="module")
def classifier() -> Path:
    params = load_params(REPO / "params.yaml")
    if params.detector.weights.path:
        pipeline_output(params.detector.weights.path)  # the detector dvc.lock records
    return pipeline_output("models/classifier.pt")


@pytest.mark.slow
def test_a_zone_leaves_the_unmasked_person_out(classifier, shared, tmp_path, monkeypatch):
    """The entrance clip: a masked person stays on the left, an unmasked one passes on the right. With a
    count zone over the left half (or the right half ignored) the masked one is still tracked and no
    alert fires; without zones, or with a count zone over the right half, the unmasked one raises it."""
    monkeypatch.setenv("FACEMASK_MIRROR", str(shared))
    pipeline = MaskPipeline.from_params(load_params(REPO / "params.yaml"), classifier)
    video = entrance_video(shared, tmp_path / "entrance.mp4")
    left = Zone(name="left", points=[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)])
    right = Zone(name="right", kind="ignore", points=[(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)])
    include = Zone(name="right", points=[(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)])
    cases = [("none", []), ("count-right", [include]), ("count-left", [left]), ("ignore-right", [right])]
    for name, zones in cases:
        session = CameraSession(name, pipeline, stream_cfg(tmp_path / name), zones=ZoneFilter(zones))
        out = [session.process(frame, now=1000.0 + t) for t, frame in frames(video)]
        alerts = [a["class"] for o in out for a in o["alerts"]]
        labels = {t["label"] for o in out for t in o["tracks"]}
        right_side = [t for o in out for t in o["tracks"] if (t["box"][0] + t["box"][2]) / 2 > 320]
        if name in ("count-left", "ignore-right"):
            assert alerts == [] and right_side == [] and labels == {"mask"}, (name, alerts, labels)
        else:
            assert alerts == ["no_mask"] and right_side, (name, alerts, labels)


@pytest.mark.slow
def test_rtsp_and_file_cameras_at_once_through_one_pool(classifier, shared, tmp_path, monkeypatch, silent_port):
    """Four cameras over RTSP from a real server (the two real clips and the entrance clip), four video
    files and one camera that never answers, analysed by a pool of two pipelines, in batches. Every live
    camera is analysed; the unmasked person of the entrance clip raises an alert over RTSP and from the
    file; the silent camera is `failed` and the others do not wait for it. The RTSP server is killed:
    the file cameras go on, the four RTSP cameras reconnect when it comes back, in the same sessions
    (counts and compliance carry on), and the entrance clip, played again, alerts again."""
    monkeypatch.setenv("FACEMASK_MIRROR", str(shared))
    params = load_params(REPO / "params.yaml")
    entrance = entrance_video(shared, tmp_path / "entrance.mp4")
    server = RtspServer({"entrance": entrance, "clip": shared / CLIP, "street-a": shared / STREET,
                         "street-b": shared / STREET}, tmp_path / "rtsp.log")  # fmt: skip
    server.start()
    sources = [
        Camera(name="rtsp-entrance", source=server.url("entrance"), fps=10),
        Camera(name="rtsp-clip", source=server.url("clip")),
        Camera(name="rtsp-street-a", source=server.url("street-a")),
        Camera(name="rtsp-street-b", source=server.url("street-b")),
        Camera(name="file-entrance", source=str(entrance), fps=10),
        Camera(name="file-clip", source=str(shared / CLIP)),
        Camera(name="file-street", source=str(shared / STREET)),
        Camera(name="file-entrance-2", source=str(entrance), fps=2),
        Camera(name="silent", source=f"rtsp://127.0.0.1:{silent_port}/x"),
        Camera(name="off", source="never-opened.mp4", enabled=False),
    ]
    # under `make test` the other test process may train at the same time: a camera then gets 1-2
    # frames/s, and the person in view for 4.5 s must still alert (3 of 4 frames, 1.5 s)
    stream = stream_cfg(tmp_path)
    stream = stream.model_copy(update={"smoothing": stream.smoothing.model_copy(update={"window": 4, "k": 3}),
                                       "alerts": stream.alerts.model_copy(update={"after_s": 1.5})})  # fmt: skip
    pool = PipelinePool(lambda: MaskPipeline.from_params(params, classifier), 2)
    live = LiveStreams(pool, stream, params.serving)
    cameras = PulledCameras(live, cameras_cfg(sources)).start()
    rtsp = [c.name for c in sources if c.name.startswith("rtsp")]

    def by_name() -> dict[str, dict]:
        return {c["name"]: c for c in cameras.health()}

    def alerts(camera: str) -> list[dict]:
        return [e for e in read_jsonl(stream.sinks.jsonl) if e["type"] == "alert" and e["camera"] == camera]

    try:
        assert "off" not in cameras.readers
        until(lambda: alerts("rtsp-entrance"), 60, "the unmasked person alerted over RTSP")
        until(lambda: all(c["frames_analysed"] > 0 for n, c in by_name().items() if n != "silent"), 20, "all analysed")
        until(lambda: by_name()["silent"]["state"] == "failed", 20, "the silent camera failed")
        health = by_name()
        assert "cannot open" in health["silent"]["last_error"] and health["silent"]["frames_analysed"] == 0
        until(lambda: alerts("file-entrance"), 30, "the unmasked person alerted from the file")
        assert alerts("file-entrance")[0]["class"] == alerts("rtsp-entrance")[0]["class"] == "no_mask"
        assert all(health[n]["latency_ms"] is not None and health[n]["connections"] >= 1 for n in rtsp)
        before = {n: live.sessions[n].total.frames for n in rtsp}

        server.stop()
        until(lambda: all(by_name()[n]["state"] != "connected" for n in rtsp), 15, "the RTSP cameras saw the drop")
        files = {n: c["frames_analysed"] for n, c in by_name().items() if n.startswith("file")}
        until(lambda: all(by_name()[n]["frames_analysed"] > files[n] + 2 for n in ("file-entrance", "file-street")),
              10, "file cameras analysed on while RTSP was down")  # fmt: skip
        connections = {n: c["connections"] for n, c in by_name().items()}
        restarted = time.time()
        server.start()
        until(lambda: all(by_name()[n]["connections"] > connections[n] and by_name()[n]["state"] == "connected"
                          for n in rtsp), 30, "every RTSP camera reconnected")  # fmt: skip
        until(lambda: all(live.sessions[n].total.frames > before[n] + 5 for n in rtsp), 30, "analysed again")
        again = lambda: [a for a in alerts("rtsp-entrance") if a["time"] > restarted]  # noqa: E731
        until(again, 45, "the entrance clip alerted again")
        assert live.sessions["rtsp-entrance"].total.share("mask") is not None
        assert max(live.batcher.sizes) > 1, live.batcher.sizes  # the cameras' frames went through in batches
    finally:
        cameras.close()
        live.close()
        server.stop()
    assert all(r.state == "stopped" for r in cameras.readers.values())


@pytest.mark.slow
def test_the_served_bento_pulls_its_cameras_and_shows_them_on_the_grid_page(bento, bento_env, shared, tmp_path,
                                                                            silent_port):  # fmt: skip
    """`FACEMASK_CAMERAS_FILE` names three cameras: the entrance clip as a file and over RTSP, and one
    that never answers. /cameras/status (behind the key) and Prometheus show them; the grid page in
    Chromium shows the three tiles updating, the alert in the timeline (a click opens its camera) and
    among the recorded events (its snapshot shown, its clip played), the silent camera failed, and the
    RTSP camera reconnecting while its server is down, then back."""
    from playwright.sync_api import sync_playwright

    video = entrance_video(shared, tmp_path / "entrance.mp4")
    server = RtspServer({"entrance": video}, tmp_path / "rtsp.log")
    server.start()
    file = tmp_path / "cameras.yaml"
    file.write_text(
        "reconnect: {initial_s: 0.2, max_s: 1, fail_after: 2}\nopen_timeout_s: 2\nread_timeout_s: 2\nsources:\n"
        f"  - {{name: entrance, source: '{video}', fps: 5,\n"
        "     zones: [{name: door, points: [[0, 0], [1, 0], [1, 1], [0, 1]]}]}\n"
        f"  - {{name: silent, source: 'rtsp://admin:pw@127.0.0.1:{silent_port}/x'}}\n"
        f"  - {{name: rtsp-entrance, source: '{server.url('entrance')}', fps: 5, profile: door}}\n"
    )
    env = {**bento_env, "FACEMASK_CAMERAS_FILE": str(file), "FACEMASK_EVENTS": str(tmp_path / "events.jsonl")}
    proc, url = start_bento(bento, env, tmp_path / "serve.log")
    key = {"X-API-Key": API_KEY}
    try:
        assert requests.get(f"{url}/cameras/status", timeout=10).status_code == 401

        def ready() -> dict[str, dict] | None:
            s = {c["name"]: c for c in requests.get(f"{url}/cameras/status", headers=key, timeout=10).json()}
            up = s["entrance"]["frames_analysed"] > 0 and s["rtsp-entrance"]["frames_analysed"] > 0
            return s if up and s["silent"]["state"] == "failed" else None

        status = until(ready, 60, "both entrance cameras analysed, the silent one failed")
        assert list(status) == ["entrance", "silent", "rtsp-entrance"]  # as configured
        assert [s["profile"] for s in status.values()] == ["crowd", "crowd", "door"]  # unnamed: the default
        entrance, silent = status["entrance"], status["silent"]
        assert entrance["state"] == "connected" and entrance["latency_ms"] > 0 and entrance["compliance"] is not None
        # each camera has its drift watch, against the served classifier's val-scene reference
        assert set(entrance["drift"]) == {"score", "psi", "faces"} and set(silent["drift"]) == {"score", "psi", "faces"}
        assert silent["source"] == f"rtsp://***@127.0.0.1:{silent_port}/x" and "cannot open" in silent["last_error"]
        metrics = requests.get(f"{url}/metrics", headers=key, timeout=10).text

        def series(name: str, value: str = r"\S+", **labels: str) -> list[str]:
            """The metric's lines with these labels (multiprocess mode may add a pid label)."""
            match = "".join(rf'(?=[^}}]*\b{k}="{re.escape(v)}")' for k, v in labels.items())
            return re.findall(rf"^{name}\{{{match}[^}}]*\}} {value}$", metrics, re.M)

        assert series("facemask_camera_state", "1.0", camera="entrance", state="connected")
        assert series("facemask_camera_state", "1.0", camera="silent", state="failed")
        assert series("facemask_camera_state", "0.0", camera="silent", state="connected")
        assert series("facemask_camera_latency_seconds_count", camera="entrance")
        assert series("facemask_camera_frames_total", camera="entrance", kind="read")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_binary(), headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"{url}/cameras/#key={API_KEY}")  # the page sends the key as a WebSocket subprotocol
            page.wait_for_function("window.grid && Object.keys(window.grid.frames).length === 2", timeout=30_000)
            assert page.locator(".tile").count() == 3
            seen = page.evaluate("({...window.grid.frames})")
            page.wait_for_function(
                f"['entrance', 'rtsp-entrance'].every(n => window.grid.frames[n] > {json.dumps(seen)}[n] + 2)",
                timeout=20_000,
            )  # both tiles keep updating
            assert "failed" in page.inner_text('.tile[data-camera="silent"] .state')
            assert "cannot open" in page.inner_text('.tile[data-camera="silent"] .error')
            page.wait_for_selector("#timeline li.alert", timeout=90_000)
            screenshot(page, "cameras-grid.png")
            alert = page.locator("#timeline li.alert").first
            assert "person #" in alert.inner_text() and "no mask" in alert.inner_text()
            camera = alert.get_attribute("data-camera")
            alert.click()
            assert "open" in page.get_attribute(f'.tile[data-camera="{camera}"]', "class")
            # the recorded events (GET /events/ with the key): with feedback on (bento_env), the face the
            # alert is about (its region, sharp) to review; a click plays the clip
            page.wait_for_selector("#events li.has-clip", timeout=60_000)
            page.wait_for_function("(i => i.alt === 'the face reviewed' && i.naturalWidth > 0)"
                                   "(document.querySelector('#events li.has-clip img'))", timeout=20_000)  # fmt: skip
            item = page.locator("#events li.has-clip").first
            item.click()
            page.wait_for_function("(v => v.readyState >= 2 && v.duration > 5)(document.getElementById('player'))",
                                   timeout=20_000)  # fmt: skip
            screenshot(page, "event-review.png")  # the alert in the timeline, its event and clip opened
            # review and correct on the page: a wrong class, then the verdict replaced by `right`
            event_id = item.get_attribute("data-event")
            served = page.evaluate(f"window.grid.events.find(e => e.id === '{event_id}').class")
            other = "incorrect" if served != "incorrect" else "mask"
            page.fill("#reviewer", "Ana")
            page.dispatch_event("#reviewer", "change")
            page.locator("#events li.has-clip select.wrong-class").first.select_option(other)
            page.wait_for_function("document.querySelector('#events li .verdict').textContent.includes('corrected')",
                                   timeout=10_000)  # fmt: skip
            screenshot(page, "event-correction.png")
            annotation = tmp_path / "feedback/annotations" / f"{event_id}.xml"
            assert f"<name>{other}</name>" in annotation.read_text() and "<by>Ana</by>" in annotation.read_text()
            page.locator("#events li.has-clip button.right").first.click()
            page.wait_for_function("document.querySelector('#events li .verdict').textContent.includes('right')",
                                   timeout=10_000)  # fmt: skip
            assert f"<name>{served}</name>" in annotation.read_text()  # the served class, confirmed
            server.stop()
            page.wait_for_function("['reconnecting', 'failed'].includes(window.grid.states['rtsp-entrance'])",
                                   timeout=20_000)  # fmt: skip
            server.start()
            page.wait_for_function("window.grid.states['rtsp-entrance'] === 'connected'", timeout=30_000)
            back = page.evaluate("window.grid.frames['rtsp-entrance']")
            page.wait_for_function(f"window.grid.frames['rtsp-entrance'] > {back} + 2", timeout=20_000)
            browser.close()
        assert "pw@" not in (tmp_path / "serve.log").read_text()  # the camera's password is never logged
    finally:
        stop(proc)
        server.stop()
    stats = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["type"] == "stats"]
    assert {"entrance", "rtsp-entrance"} <= {e["camera"] for e in stats if e["frames"] > 0}, json.dumps(stats)[:500]
