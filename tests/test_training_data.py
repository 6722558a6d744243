"""Training data: augmentation is reproducible across runs and differs between loader workers."""

from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader

from facemask.augment import build_augmentation
from facemask.config import compose, validate
from facemask.preprocess import Preprocessor
from facemask.training.datamodule import CropDataset, seed_augmentation

from .conftest import real_images


def _batches(files, seed: int) -> list[torch.Tensor]:
    params = validate(compose())
    ds = CropDataset(files, [0] * len(files), Preprocessor.from_config(params.model),
                     build_augmentation(params.augment.transforms))  # fmt: skip
    loader = DataLoader(ds, batch_size=2, num_workers=2,
                        worker_init_fn=functools.partial(seed_augmentation, base_seed=seed))  # fmt: skip
    return [x for x, _ in loader]


def test_augmented_batches_are_reproducible_and_differ_per_worker(shared):
    # the same image eight times: any difference between samples is the augmentation's doing
    files = real_images(shared, "face-mask-2class/without_mask", 1) * 8
    first, again, other = _batches(files, 7), _batches(files, 7), _batches(files, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # batches 0 and 1 come from workers 0 and 1: their augmentations must not repeat each other
    assert not torch.equal(first[0], first[1])
