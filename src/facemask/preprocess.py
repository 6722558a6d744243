"""The classifier's input preprocessing: the one definition used in training, evaluation and serving."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from facemask.config import Model as ModelConfig


class Preprocessor:
    """RGB uint8 face crop(s) -> normalised float32 CHW tensor(s) of side `input_size`."""

    def __init__(self, input_size: int, mean: Sequence[float], std: Sequence[float]):
        self.input_size = int(input_size)
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, dtype=np.float32) * 255.0)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Preprocessor:
        return cls(cfg.input_size, cfg.mean, cfg.std)

    def to_array(self, rgb: np.ndarray) -> np.ndarray:
        """One HxWx3 uint8 RGB image -> 3xSxS float32."""
        if rgb.shape[:2] != (self.input_size, self.input_size):
            rgb = cv2.resize(rgb, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
        out = (rgb.astype(np.float32) - self.mean) * self.inv_std
        return np.ascontiguousarray(out.transpose(2, 0, 1))

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.to_array(rgb))

    def batch(self, images: Sequence[np.ndarray], bgr: bool = False) -> torch.Tensor:
        """Stack several crops into one Nx3xSxS tensor (`bgr` converts from OpenCV's channel order)."""
        out = np.empty((len(images), 3, self.input_size, self.input_size), dtype=np.float32)
        for i, img in enumerate(images):
            out[i] = self.to_array(img[..., ::-1] if bgr else img)
        return torch.from_numpy(out)
