"""Training data: augmentation is reproducible across runs and differs between loader workers."""

from __future__ import annotations

import functools

import pytest
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
                     build_augmentation(params.augment.transforms), params.data.max_image_pixels)  # fmt: skip
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


def test_epoch_draw_follows_the_scene_share_and_epoch_size(tmp_path, shared):
    """An epoch draws `epoch_samples` crops, `scene_share` of them from scenes, and the class
    weights follow the drawn mix (not the raw counts)."""
    import pandas as pd

    from facemask.training.datamodule import CropDataModule

    photo = real_images(shared, "face-mask-2class/with_mask", 1)[0]
    rows = [{"crop": photo.name, "split": "train", "kind": "photo", "label": "mask"}] * 90
    rows += [{"crop": photo.name, "split": "train", "kind": "scene", "label": "no_mask"}] * 10
    rows += [{"crop": photo.name, "split": "val", "kind": "photo", "label": "mask"}] * 4
    pd.DataFrame(rows).to_csv(tmp_path / "crops.csv", index=False)
    params = validate(compose())
    dm = CropDataModule(
        tmp_path / "crops.csv", photo.parent, ["mask", "no_mask"], Preprocessor.from_config(params.model), None,
        batch_size=50, num_workers=0, seed=1, epoch_samples=2000, scene_share=0.5,
    )  # fmt: skip
    weights = dm.sample_weights()
    assert weights[90:].sum() == pytest.approx(0.5) and weights[:90].sum() == pytest.approx(0.5)
    assert dm.drawn_class_counts().round().tolist() == [1000, 1000]  # ten scene crops weigh as much as 90 photos
    assert torch.allclose(dm.class_weights(), torch.ones(2))
    drawn = list(dm.train_dataloader().sampler)
    assert len(drawn) == 2000 and 900 < sum(i >= 90 for i in drawn) < 1100
    natural = CropDataModule(
        tmp_path / "crops.csv", photo.parent, ["mask", "no_mask"], Preprocessor.from_config(params.model), None,
        batch_size=50, num_workers=0,
    )  # fmt: skip
    assert natural.drawn_class_counts().round().tolist() == [90, 10]
    assert natural.class_weights()[1] > 8 * natural.class_weights()[0]
    absent = CropDataModule(  # a class with no training crop (a tiny slice) gets weight 0, not a huge one
        tmp_path / "crops.csv", photo.parent, ["mask", "no_mask", "background"], Preprocessor.from_config(params.model),
        None, batch_size=50, num_workers=0,
    )  # fmt: skip
    assert absent.class_weights().tolist() == pytest.approx([100 / 180, 100 / 20, 0.0])
