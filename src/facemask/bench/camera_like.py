"""Validation that looks like the cameras: the val-split scenes as they are and shrunk so their faces
span 8-64 px, the range of the dev scenes, side by side for each detection profile.

    python -m facemask.bench.camera_like                      # every profile (crowd, door, hall)
    python -m facemask.bench.camera_like --profiles crowd hall --scenes 60

The training scenes are photographs with faces of 20-200 px; a hall camera sees 8-30 px. A threshold
or a detector chosen on the val split as it is undervalues small faces (1.7 % of its faces are under
16 px, 21 % of the dev scenes'). Each val scene is shrunk (INTER_AREA, as the pipeline shrinks) by its
own factor: its median face height is brought to a size drawn log-uniformly from `--faces` (default
8-64 px) by a generator seeded from the image's name, so the same scene is shrunk alike in every run;
a scene whose faces are already that small is left as it is, none is enlarged. Each profile's
pipeline (the served classifier, its rejection threshold) answers both views, and the dev scenes
for reference; the dev scenes only measure, nothing here is chosen on them. Prints one table (mAP,
recall on faces under 16 px, frame median) and writes `reports/bench/camera_like.{csv,json}`.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask import machine
from facemask.bench.front import measure
from facemask.bench.peers import write_table
from facemask.config import Params, compose, validate
from facemask.data.manifest import split_scenes
from facemask.data.voc import Scene, evaluation_folder, load_scenes
from facemask.errors import FacemaskError
from facemask.imageio import read_image
from facemask.pipeline import MaskPipeline
from facemask.scenes.evaluate import to_prediction

FACES = (8.0, 64.0)  # px; the dev scenes: 5th percentile 9 px, median 26, 75th 44 (867 faces, by height)


def shrink_factor(scene: Scene, faces: tuple[float, float] = FACES) -> float:
    """The factor (<= 1) that brings the scene's median face height to a log-uniform draw from
    `faces`, seeded from the image's name (the same in every run)."""
    heights = scene.boxes[:, 3] - scene.boxes[:, 1]
    if len(heights) == 0:
        return 1.0
    seed = int.from_bytes(hashlib.sha256(scene.image.name.encode()).digest()[:8], "little")
    lo, hi = faces
    target = math.exp(np.random.default_rng(seed).uniform(math.log(lo), math.log(hi)))
    return min(1.0, target / float(np.median(heights)))


def shrunk(scene: Scene, image: np.ndarray, faces: tuple[float, float] = FACES) -> tuple[Scene, np.ndarray]:
    """The scene and its image shrunk by `shrink_factor`: boxes scaled with the pixels."""
    factor = shrink_factor(scene, faces)
    if factor >= 1.0:
        return scene, image
    h, w = image.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    scale = np.array([size[0] / w, size[1] / h, size[0] / w, size[1] / h], dtype=np.float32)
    return Scene(scene.image, scene.boxes * scale, list(scene.labels), list(scene.ignored), size), small


def score(pipeline: MaskPipeline, scenes: list[Scene], frames: list[np.ndarray], params: Params) -> dict:
    """The pipeline over `frames` as `bench.front` measures it: mAP, recall on faces under the first
    size bin, frame median ms."""
    answer = lambda frame: to_prediction(pipeline(frame), pipeline.labels)  # noqa: E731
    result, ms = measure(answer, frames, scenes, params, pipeline.labels)
    return {"map": result["map"], "recall_small": result["recall_by_size"]["all"]["small"]["recall"],
            "ms": float(np.median(ms))}  # fmt: skip


def camera_like(params: Params, profiles: list[str], limit: int | None, faces: tuple[float, float]) -> pd.DataFrame:
    max_pixels = params.data.max_image_pixels
    val = split_scenes(params.paths.manifest, params.paths.raw, "val")[:limit]
    val_frames = [read_image(s.image, max_pixels) for s in tqdm(val, desc="val scenes", unit="scene")]
    small = [shrunk(s, f, faces) for s, f in zip(val, val_frames, strict=True)]
    small_scenes, small_frames = [s for s, _ in small], [f for _, f in small]
    dev = load_scenes(evaluation_folder(params.scenes), params.scenes.source.label_map)[:limit]
    dev_frames = [read_image(s.image, max_pixels) for s in dev]
    heights = {
        name: np.concatenate([s.boxes[:, 3] - s.boxes[:, 1] for s in scenes])
        for name, scenes in (("val", val), ("camera_like", small_scenes), ("dev", dev))
    }
    served = MaskPipeline.from_params(params, params.paths.classifier, profiles=True)
    rows = []
    for name in tqdm(profiles, desc="profiles", unit="profile"):
        pipeline = served.profile(name)
        views = {
            "val": score(pipeline, val, val_frames, params),
            "camera_like": score(pipeline, small_scenes, small_frames, params),
            "dev": score(pipeline, dev, dev_frames, params),
        }
        row = {"profile": name, "detector": pipeline.detector.name,
               "detect_long_side": pipeline.settings.detect_long_side}  # fmt: skip
        for view, result in views.items():
            row |= {f"{view}_{key}": value for key, value in result.items()}
        rows.append(row)
    table = pd.DataFrame(rows)
    for view, h in heights.items():  # the faces each view shows
        table[f"{view}_face_px_median"] = float(np.median(h))
        table[f"{view}_under_16px"] = float(np.mean(h < 16))
    return table.assign(val_scenes=len(val), dev_scenes=len(dev), faces=f"{faces[0]:g}-{faces[1]:g}",
                        machine=machine.label())  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="+", default=None, help="detection profiles (default: all)")
    parser.add_argument("--scenes", type=int, default=None, help="the first N val and dev scenes (default: all)")
    parser.add_argument("--faces", type=float, nargs=2, default=list(FACES), metavar=("MIN", "MAX"),
                        help="the face heights (px) the val scenes are shrunk to")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="folder (default reports/bench)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides")
    args = parser.parse_args(argv)
    try:
        lo, hi = args.faces
        if not 0 < lo <= hi:
            raise ValueError(f"--faces {lo:g} {hi:g}: two sizes with 0 < MIN <= MAX")
        params = validate(compose(args.overrides))
        profiles = args.profiles or list(params.profiles.profiles)
        for name in profiles:
            params.profiles.check(name)
        table = camera_like(params, profiles, args.scenes, (lo, hi))
    except (FacemaskError, ValueError, FileNotFoundError) as err:
        print(f"camera_like: {err}", file=sys.stderr)
        return 2
    out = args.out or params.paths.reports / "bench"
    write_table(table, out, "camera_like")
    shown = ["profile", "detector", "detect_long_side", "val_map", "camera_like_map", "dev_map",
             "val_recall_small", "camera_like_recall_small", "dev_recall_small", "camera_like_ms"]  # fmt: skip
    print(table[shown].round(3).to_markdown(index=False))
    faces = ", ".join(
        f"{v} median {table[f'{v}_face_px_median'].iloc[0]:.0f} px, {table[f'{v}_under_16px'].iloc[0]:.0%} under 16"
        for v in ("val", "camera_like", "dev")
    )
    print(f"\nfaces: {faces}\n{machine.label()}\n-> {out / 'camera_like.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
