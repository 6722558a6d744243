"""Training data: a sample's augmentation follows its draw (reproducible, the same in any loader
worker or DDP process), transforms draw independently, and an epoch's draw follows its config."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from facemask.augment import build_augmentation, reseed
from facemask.config import compose, validate
from facemask.preprocess import Preprocessor
from facemask.training.datamodule import CropDataset, EpochDraw

from .conftest import real_images


def _batches(files, keys: list[tuple[int, int]], workers: int) -> list[torch.Tensor]:
    params = validate(compose())
    ds = CropDataset(files, [0] * len(files), Preprocessor.from_config(params.model),
                     build_augmentation(params.augment.transforms), params.data.max_image_pixels)  # fmt: skip
    return [x for x, _ in DataLoader(ds, batch_size=2, sampler=keys, num_workers=workers)]


def test_a_samples_augmentation_follows_its_draw_in_any_worker(shared):
    # the same image eight times: any difference between samples is the augmentation's doing
    files = real_images(shared, "face-mask-2class/without_mask", 1) * 8
    keys = list(EpochDraw(None, 8, seed=7))
    first, in_workers = _batches(files, keys, 0), _batches(files, keys, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, in_workers, strict=True))
    other = _batches(files, list(EpochDraw(None, 8, seed=8)), 0)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    samples = torch.cat(first)
    assert len({tuple(x.flatten()[:64].tolist()) for x in samples}) == 8  # no two alike


def test_reseeded_transforms_draw_independently():
    """albumentations seeds every transform alike; `reseed` gives each its own stream, so two
    p=0.5 flips on a reseeded sample come out in all four combinations."""
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    flips = {(False, False): image, (True, False): image[:, ::-1], (False, True): image[::-1],
             (True, True): image[::-1, ::-1]}  # fmt: skip
    seen = set()
    for seed in range(64):
        reseed(pipeline, seed)
        out = pipeline(image=image)["image"]
        seen.add(next(k for k, flipped in flips.items() if np.array_equal(out, flipped)))
        reseed(pipeline, seed)
        assert np.array_equal(pipeline(image=image)["image"], out)  # a seed is one outcome
    assert len(seen) == 4, seen


def test_every_ddp_process_gets_its_share_of_one_draw():
    """Two processes' shares, dealt as Lightning's distributed wrapper deals them, make up one
    process's draw: each step's global batch is the one a single process would take."""
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper

    weights = np.linspace(1, 2, 50)
    one = list(EpochDraw(weights / weights.sum(), 40, seed=3))
    shares = [list(DistributedSamplerWrapper(EpochDraw(weights / weights.sum(), 40, seed=3), num_replicas=2,
                                             rank=r, shuffle=False)) for r in (0, 1)]  # fmt: skip
    assert shares[0] == one[0::2] and shares[1] == one[1::2]
    assert list(EpochDraw(weights / weights.sum(), 40, seed=3)) == one  # the same seed, the same draw


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
    drawn = [i for i, _ in dm.train_dataloader().sampler]
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


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_scales_by_the_miss():
    """trainer.focal_gamma: 0 is the weighted, smoothed cross-entropy; above, each sample's term is
    multiplied by (1 - p_true)^gamma (worked by hand: p_true 1/2 and 3/4 at gamma 2)."""
    import math

    from facemask.training.module import FocalLoss

    torch.manual_seed(0)
    logits, target, weight = torch.randn(64, 4), torch.randint(0, 4, (64,)), torch.tensor([1.0, 2.0, 3.0, 0.5])
    expected = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)(logits, target)
    assert torch.allclose(FocalLoss(0.0, weight, 0.05)(logits, target), expected, atol=1e-6)
    two = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])  # p_true 1/2 (class 0), then 3/4 (class 1)
    hand = (0.25 * math.log(2) * 1 + (1 / 16) * -math.log(0.75) * 3) / (1 + 3)
    loss = FocalLoss(2.0, torch.tensor([1.0, 3.0]))(two, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(hand, rel=1e-6)
