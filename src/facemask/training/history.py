"""A Lightning callback that keeps each epoch's metrics as a table row (DVC plots, MLflow figures)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class History(Callback):
    """One row per epoch: its seconds and every metric logged for it (training and validation).

    A row is written once the epoch's metrics are final: when the next epoch starts, or the fit
    ends (at `on_validation_epoch_end` the module's own epoch-end metrics are not logged yet)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._start = 0.0
        self._pending: tuple[int, float] | None = None

    def _flush(self, trainer: pl.Trainer) -> None:
        if self._pending is None:
            return
        epoch, seconds = self._pending
        row = {"epoch": epoch, "seconds": round(seconds, 2)}
        row.update({k.replace("/", "_"): round(float(v), 5) for k, v in trainer.callback_metrics.items()})
        self.rows.append(row)
        self._pending = None

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._flush(trainer)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._pending = (trainer.current_epoch, time.perf_counter() - self._start)

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._flush(trainer)
