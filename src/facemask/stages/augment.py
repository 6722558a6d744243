"""Stage 3, augment: serialise the configured albumentations pipeline and draw a preview grid."""

from __future__ import annotations

import logging
import sys

import cv2
import pandas as pd

from facemask.augment import build_augmentation, preview_grid, save_augmentation
from facemask.cli import run_stage
from facemask.config import Params
from facemask.imageio import read_image

log = logging.getLogger("facemask.augment")


def augment(params: Params) -> None:
    pipeline = build_augmentation(params.augment.transforms, seed=params.train_seed)
    out = params.paths.augmentation
    save_augmentation(pipeline, out)
    crops = pd.read_csv(params.paths.crop_table).dropna(subset=["crop"])
    train = crops[crops["split"] == "train"]
    per_label = max(1, params.augment.preview_count // (2 * train["label"].nunique()))
    sample = train.sample(frac=1.0, random_state=params.train_seed).groupby("label").head(per_label)
    images = []
    for name in sample["crop"]:
        rgb = cv2.cvtColor(read_image(params.paths.crops / name, params.data.max_image_pixels), cv2.COLOR_BGR2RGB)
        images += [rgb, rgb]  # each crop twice: two draws of the pipeline side by side
    grid = preview_grid(pipeline, images, columns=8)
    preview = params.paths.augment_preview
    preview.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(preview), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    log.info("augmentation pipeline (%d transforms) -> %s; preview -> %s", len(pipeline.transforms), out, preview)


def main(argv: list[str] | None = None) -> int:
    return run_stage("augment", augment, argv)


if __name__ == "__main__":
    sys.exit(main())
