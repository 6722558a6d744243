"""Detection profiles (`conf/profiles`): named ways of finding faces, one classifier for all.

What is proven here, on the pipeline's own classifier and detector (the ones dvc.lock records), real
dev scenes and the entrance clip: each profile runs its own detector at its own input size and shares
the one classifier in memory; cameras on different profiles are batched together and answer as each
does alone; a profile's region search setting reaches its cameras; bad profile names and references
are refused with the known names, and nothing is opened. The served APIs are in test_service and
test_cameras. No figure of a trained model is asserted: only which detector saw which input.
"""

from __future__ import annotations

import pytest

from facemask.config import ConfigError, UnknownProfile, compose, load_params
from facemask.imageio import read_image
from facemask.pipeline import MaskPipeline
from facemask.stream.session import CameraSession

from .conftest import REPO, dev_scene_stems, entrance_frames, pipeline_output
from .test_batching import push_at_once, streams, summary


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["profiles.default=lobby"], "default profile 'lobby' is not one of ['crowd', 'door', 'hall']"),
        (["profiles.profiles.door.detector=nosuch"], "profiles.profiles.door.detector"),
        (["+profiles.profiles.Door={detect_long_side: 320}"], "lower-case letters"),
        (["cameras.sources=[{name: gate, source: /x.mp4, profile: lobby}]"], "camera 'gate': unknown profile 'lobby'"),
        (["detector=yunet", "+profiles.profiles.fine={detector: retinaface_ft, detect_long_side: 640}"],
         "the fine-tuned detector ships only as `detector`"),
    ],
)  # fmt: skip
def test_bad_profiles_are_refused_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert fragment in str(err.value)


@pytest.fixture(scope="module")
def profiled(shared, monkeypatch_module) -> MaskPipeline:
    """The pipeline fixture's models under the configured profiles (CenterFace for `hall`)."""
    monkeypatch_module.setenv("FACEMASK_MIRROR", str(shared))
    return MaskPipeline.from_params(load_params(REPO / "params.yaml"), pipeline_output("models/classifier.pt"),
                                    profiles=True)  # fmt: skip


class Seen:
    """Wraps a detector's `detect` to record the image sizes it is given."""

    def __init__(self, detector):
        self.detector, self.sizes, self._detect = detector, [], detector.detect

    def __enter__(self):
        def detect(image):
            self.sizes.append(max(image.shape[:2]))
            return self._detect(image)

        self.detector.detect = detect
        return self

    def __exit__(self, *exc):
        del self.detector.detect


@pytest.mark.slow
def test_each_profile_runs_its_detector_at_its_size_with_one_classifier(profiled, shared):
    params = load_params(REPO / "params.yaml")
    scene = read_image(shared / f"datasets/face-mask-scenes-dev/images/{dev_scene_stems(1)[0]}.jpg", 10**8)
    assert max(scene.shape[:2]) * params.pipeline.max_upscale >= 640  # every profile's size is reachable
    found = {}
    for name, profile in params.profiles.profiles.items():
        pipe = profiled.profile(name)
        assert pipe.profile_name == name and pipe.classifier is profiled.classifier  # one network in memory
        assert pipe.detector.name == (profile.detector or params.detector.name)
        with Seen(pipe.detector) as seen:
            found[name] = pipe(scene)
        assert seen.sizes[0] == profile.detect_long_side, name  # the full pass at the profile's size
        assert found[name] and {f.label for f in found[name]} <= set(profiled.labels)
    assert profiled.profile(None) is profiled.profile(params.profiles.default)
    assert profiled.profile("door").detector is profiled.profile("crowd").detector  # one detector, two sizes
    with pytest.raises(UnknownProfile, match="unknown detection profile 'lobby': one of crowd, door, hall"):
        profiled.profile("lobby")


@pytest.mark.slow
def test_cameras_on_different_profiles_batch_together_and_answer_as_each_alone(profiled, shared, tmp_path):
    """A door camera and a crowd camera through one batcher: each answers frame for frame what its
    profile answers alone; the door profile's `regions: false` turns its region search off."""
    clip = list(entrance_frames(shared))[::2][:30]
    live = streams([profiled], tmp_path, window_ms=50)
    expected = {}
    for camera, profile in (("gate", "door"), ("queue", "crowd")):
        cfg = live.cfg.switched(regions=profiled.profile(profile).region_search)
        alone = CameraSession(camera, profiled, cfg, profile=profile)
        expected[camera] = [alone.process(frame, now=1000.0 + i / 5) for i, frame in enumerate(clip)]
    assert live.open("gate", profile="door").cfg.regions.enabled is False
    assert live.open("queue").cfg.regions.enabled is live.cfg.regions.enabled  # the default: as configured
    with pytest.raises(UnknownProfile, match="one of crowd, door, hall"):
        live.open("lobby", profile="lobby")
    assert "lobby" not in live.sessions
    answers = push_at_once(live, ["gate", "queue"], clip)
    assert max(live.batcher.sizes) == 2, live.batcher.sizes  # the two profiles' frames shared batches
    assert {a["profile"] for a in answers["gate"]} == {"door"} and {a["profile"] for a in answers["queue"]} == {"crowd"}
    assert "regions" not in {a["detection"] for a in answers["gate"]}
    for camera, got in answers.items():
        want = expected[camera]
        assert any(summary(e) for e in want), camera  # the clip's faces were found
        assert [summary(a) for a in got] == [summary(e) for e in want], camera
        for a, e in zip(got, want, strict=True):
            for ta, te in zip(a["tracks"], e["tracks"], strict=True):
                assert ta["box"] == pytest.approx(te["box"], abs=0.2)
                assert ta["confidence"] == pytest.approx(te["confidence"], abs=2e-3)
