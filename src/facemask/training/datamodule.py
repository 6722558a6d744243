"""LightningDataModule over the face crops written by the crop stage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facemask.augment import reseed
from facemask.data.feedback import KIND as REGION
from facemask.imageio import read_image
from facemask.preprocess import Preprocessor


class EpochDraw(Sampler[tuple[int, int]]):
    """Each epoch `size` train crops, drawn by `weights` with replacement (None: a shuffle of all),
    each with its own augmentation seed, so a sample looks the same whichever loader worker or DDP
    process prepares it. Seeded once: every DDP process draws the same list and Lightning's
    distributed wrapper deals it out (process r takes positions r, r + world, ...), so each step's
    global batch is the one a single process would take."""

    def __init__(self, weights: np.ndarray | None, size: int, seed: int):
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.weights is None:
            index = torch.randperm(self.size, generator=self.generator)
        else:
            index = torch.multinomial(self.weights, self.size, replacement=True, generator=self.generator)
        seeds = torch.randint(0, 2**31 - 1, (self.size,), generator=self.generator)
        return zip(index.tolist(), seeds.tolist(), strict=True)


class CropDataset(Dataset):
    """Face crops with integer labels; `augment` (albumentations, RGB) applies before preprocessing,
    seeded by the key's draw seed (`EpochDraw` yields (index, seed) keys)."""

    def __init__(
        self,
        files: list[Path],
        targets: list[int],
        preprocessor: Preprocessor,
        augment: A.Compose | None,
        max_pixels: int,
    ):
        self.files, self.targets, self.max_pixels = files, targets, max_pixels
        self.preprocessor, self.augment = preprocessor, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        rgb = cv2.cvtColor(read_image(self.files[i], self.max_pixels), cv2.COLOR_BGR2RGB)
        if self.augment is not None:
            if seed is not None:
                reseed(self.augment, seed)
            rgb = self.augment(image=rgb)["image"]
        return self.preprocessor(rgb), self.targets[i]


class CropDataModule(pl.LightningDataModule):
    def __init__(
        self,
        crops_csv: Path,
        crops_dir: Path,
        labels: list[str],
        preprocessor: Preprocessor,
        augment: A.Compose | None,
        batch_size: int,
        num_workers: int,
        balance: str = "class_weights",
        seed: int = 0,
        epoch_samples: int | None = None,
        scene_share: float | None = None,
        max_pixels: int = 1 << 20,  # crops are small; anything larger is not one of ours
    ):
        """`epoch_samples` crops are drawn per epoch (default: the train split's size), a share
        `scene_share` of them from annotated scenes (default: their natural share); `balance`
        'sampler' also evens the classes out in the draw, 'class_weights' in the loss."""
        super().__init__()
        self.crops_csv, self.crops_dir, self.labels = Path(crops_csv), Path(crops_dir), list(labels)
        self.preprocessor, self.augment = preprocessor, augment
        self.batch_size, self.num_workers, self.balance, self.seed = batch_size, num_workers, balance, seed
        self.epoch_samples, self.scene_share, self.max_pixels = epoch_samples, scene_share, max_pixels
        self.frames: dict[str, pd.DataFrame] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.frames:
            return
        table = pd.read_csv(self.crops_csv, keep_default_na=False)
        table = table[table["crop"] != ""]
        for split in ("train", "val", "test"):
            self.frames[split] = table[table["split"] == split].reset_index(drop=True)
        if self.frames["train"].empty or self.frames["val"].empty:
            raise ValueError(f"{self.crops_csv} has no train or no val crops; check the crop stage report")

    def class_counts(self) -> np.ndarray:
        """Train crops per class."""
        self.setup()
        idx = self.frames["train"]["label"].map(self.labels.index)
        return np.bincount(idx, minlength=len(self.labels))

    def sample_weights(self) -> np.ndarray:
        """Each train crop's chance to be drawn: scene crops (reviewed alerts' among them) share
        `scene_share` of the draw, and with `balance: sampler` every class gets the same share."""
        self.setup()
        frame = self.frames["train"]
        weights = np.ones(len(frame))
        if self.scene_share is not None and "kind" in frame:
            scene = frame["kind"].isin(["scene", REGION]).to_numpy()  # camera faces: scenes and reviewed alerts
            if scene.any() and (~scene).any():
                weights = np.where(scene, self.scene_share / scene.sum(), (1 - self.scene_share) / (~scene).sum())
        if self.balance == "sampler":
            idx = frame["label"].map(self.labels.index).to_numpy()
            mass = np.bincount(idx, weights=weights, minlength=len(self.labels))
            weights = weights / np.maximum(mass[idx], 1e-12)
        return weights / weights.sum()

    def drawn_class_counts(self) -> np.ndarray:
        """Expected crops per class in one epoch's draw."""
        weights = self.sample_weights()
        idx = self.frames["train"]["label"].map(self.labels.index).to_numpy()
        n = self.epoch_samples or len(weights)
        return np.bincount(idx, weights=weights, minlength=len(self.labels)) * n

    def class_weights(self) -> torch.Tensor:
        """Inverse-frequency weights of the drawn classes, normalised so a balanced draw gets all ones.
        A class never drawn gets 0: it cannot be learnt, and with label smoothing an unbounded weight
        on it would pull every sample towards it."""
        counts = self.drawn_class_counts()
        present = counts > 0
        weights = np.zeros(len(counts))
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
        return torch.tensor(weights, dtype=torch.float32)

    def dataset(self, split: str, augment: bool = False) -> CropDataset:
        self.setup()
        frame = self.frames[split]
        files = [self.crops_dir / name for name in frame["crop"]]
        targets = [self.labels.index(lb) for lb in frame["label"]]
        return CropDataset(files, targets, self.preprocessor, self.augment if augment else None, self.max_pixels)

    def sample_batches(self, n: int) -> Iterator[torch.Tensor]:
        """`n` train crops (at most the split), drawn as an epoch draws them (seeded, with
        `scene_share`), without augmentation, in batches: inputs for re-estimating statistics."""
        ds = self.dataset("train")
        rng = np.random.default_rng(self.seed)
        index = rng.choice(len(ds), size=min(n, len(ds)), replace=False, p=self.sample_weights())
        for start in range(0, len(index), self.batch_size):
            yield torch.stack([ds[int(i)][0] for i in index[start : start + self.batch_size]])

    def per_process_batch(self) -> int:
        """`batch_size` is the global batch: under DDP each of the processes takes an equal share,
        so a step sees as many crops, and an epoch takes as many steps, as in one process."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(f"trainer.batch_size {self.batch_size} does not divide among {world} DDP processes")
        return self.batch_size // world

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split, augment=train)
        batch_size = self.per_process_batch()
        sampler = None
        if train:
            draw = self.balance == "sampler" or self.epoch_samples or self.scene_share is not None
            weights = self.sample_weights() if draw else None
            sampler = EpochDraw(weights, (self.epoch_samples or len(ds)) if draw else len(ds), self.seed)
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=train and len(sampler) > batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
