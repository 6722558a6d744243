"""The mask classifier artefact: a timm network plus everything needed to feed it.

`models/classifier.pt` holds the state dict with its backbone name, labels and preprocessing, so the
evaluation stage, the service and any client rebuild exactly the trained model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from facemask.config import Model as ModelConfig
from facemask.preprocess import Preprocessor


def create_network(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    return timm.create_model(cfg.backbone, pretrained=cfg.pretrained, num_classes=num_classes, drop_rate=cfg.drop_rate)


class MaskClassifier:
    """Batched inference over face crops; returns class probabilities in `labels` order."""

    def __init__(self, network: torch.nn.Module, labels: Sequence[str], preprocessor: Preprocessor, meta: dict):
        self.network = network.eval()
        self.labels = list(labels)
        self.preprocessor = preprocessor
        self.meta = meta

    @torch.inference_mode()
    def predict_proba(self, crops: Sequence[np.ndarray], bgr: bool = False, batch_size: int = 64) -> np.ndarray:
        """Probabilities (N x classes) for RGB (or BGR with `bgr`) uint8 crops, in batches."""
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = []
        for start in range(0, len(crops), batch_size):
            x = self.preprocessor.batch(crops[start : start + batch_size], bgr=bgr)
            out.append(torch.softmax(self.network(x), dim=1).numpy())
        return np.concatenate(out)

    @classmethod
    def load(cls, path: Path | str) -> MaskClassifier:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classifier {path} not found: run the train stage (dvc repro train)")
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)  # no code from the file
        cfg = ModelConfig.model_validate({**blob["model"], "pretrained": False})
        network = create_network(cfg, len(blob["labels"]))
        network.load_state_dict(blob["state_dict"])
        meta = {**blob.get("meta", {}), "backbone": cfg.backbone, "input_size": cfg.input_size}
        return cls(network, blob["labels"], Preprocessor.from_config(cfg), meta)


def save_classifier(
    network: torch.nn.Module, cfg: ModelConfig, labels: Sequence[str], path: Path, meta: dict | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "model": cfg.model_dump(mode="json"),
        "labels": list(labels),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "meta": meta or {},
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
