"""Training augmentation: an albumentations pipeline built from config and saved with albumentations'
own serialisation, so training (and anyone inspecting a run) loads exactly what was versioned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np

from facemask.config import ConfigError


def build_augmentation(transforms: list[dict[str, Any]], seed: int | None = None) -> A.Compose:
    """Compose albumentations transforms from `[{name: Class, **kwargs}, ...]`."""
    steps = []
    for i, spec in enumerate(transforms):
        spec = dict(spec)
        name = spec.pop("name")
        try:
            steps.append(getattr(A, name)(**spec))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"augment.transforms[{i}] ({name}): {err}") from None
    return A.Compose(steps, seed=seed)


def reseed(pipeline: A.BaseCompose, seed: int) -> None:
    """Seed the pipeline and each of its transforms from independent streams of `seed`.

    albumentations' own `set_random_seed` gives every transform the same seed, so their first
    draws (whether each applies) would move together on every reseeded sample."""
    pipeline.set_random_seed(seed)
    streams = np.random.SeedSequence(seed).generate_state(len(pipeline.transforms))
    for transform, stream in zip(pipeline.transforms, streams, strict=True):
        if isinstance(transform, A.BaseCompose):
            reseed(transform, int(stream))
        else:
            transform.set_random_seed(int(stream))


def save_augmentation(pipeline: A.Compose, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    A.save(pipeline, str(path), data_format="json")


def load_augmentation(path: Path) -> A.Compose:
    if not Path(path).is_file():
        raise FileNotFoundError(f"augmentation pipeline {path} not found: run the augment stage")
    return A.load(str(path), data_format="json")


def preview_grid(pipeline: A.Compose, images: list[np.ndarray], columns: int = 8) -> np.ndarray:
    """Each source image followed by augmented versions, tiled into one RGB grid."""
    tiles = [pipeline(image=img)["image"] for img in images]
    side = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (side + 2), columns * (side + 2), 3), 255, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * (side + 2) : r * (side + 2) + tile.shape[0], c * (side + 2) : c * (side + 2) + tile.shape[1]] = tile
    return grid
