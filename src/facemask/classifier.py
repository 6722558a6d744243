"""The mask classifier artefact: a timm network plus everything needed to feed it.

`models/classifier.pt` holds the state dict with its backbone name, labels and preprocessing, so the
evaluation stage, the service and any client rebuild exactly the trained model. It also holds the
network's ONNX graph, checked against PyTorch when it was saved (and the int8 graph, when calibrated):
a process that runs the classifier in ONNX Runtime loads it without timm and without an export.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facemask.config import ClassifierRuntime as Runtime
from facemask.config import ConfigError
from facemask.config import Model as ModelConfig
from facemask.data.fetch import resolve_weights
from facemask.onnx_sessions import ort_session
from facemask.preprocess import Preprocessor


def create_network(cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    """The timm network with a `num_classes` head: from scratch, from timm's hub weights, or from a
    weights file (mirror or download) loaded strictly with its own head, which is then replaced."""
    import timm  # here, not at the top: a process serving the stored ONNX graph never builds the network

    if cfg.pretrained == "none":
        return timm.create_model(cfg.backbone, num_classes=num_classes, drop_rate=cfg.drop_rate)
    if cfg.pretrained == "timm":
        return timm.create_model(cfg.backbone, pretrained=True, num_classes=num_classes, drop_rate=cfg.drop_rate)
    path = resolve_weights(cfg.pretrained, key="model.pretrained")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: name it
        raise ConfigError(f"model.pretrained: {path} is not a PyTorch state dict ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained: {path} is not a state dict of tensors")
    state = {k: v.float() for k, v in state.items()}  # the file may be float16
    head_name = getattr(timm.get_pretrained_cfg(cfg.backbone), "classifier", None) or "classifier"
    head = state.get(f"{head_name}.weight")
    network = timm.create_model(cfg.backbone, num_classes=len(head) if head is not None else 0, drop_rate=cfg.drop_rate)
    try:
        network.load_state_dict(state, strict=True)  # every key, head included, nothing else
    except RuntimeError as err:
        raise ConfigError(f"model.pretrained: {path} does not fit timm's {cfg.backbone}: {err}") from err
    network.reset_classifier(num_classes)
    return network


def onnx_graph(network: torch.nn.Module, input_size: int) -> bytes:
    """`network` exported to ONNX in memory (any batch size; input `input`, output `logits`)."""
    example = torch.rand(4, 3, input_size, input_size) * 4 - 2
    graph = io.BytesIO()
    torch.onnx.export(
        network.eval(), (example,), graph, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return graph.getvalue()


def checked_onnx_graph(network: torch.nn.Module, input_size: int, tolerance: float = 1e-3) -> bytes:
    """`network`'s ONNX export, checked against PyTorch on a batch: class probabilities further apart
    than `tolerance` are refused."""
    graph = onnx_graph(network, input_size)
    example = torch.rand(4, 3, input_size, input_size) * 4 - 2
    with torch.inference_mode():
        expected = torch.softmax(network.eval()(example), dim=1)
    got = torch.softmax(torch.from_numpy(ort_session(graph).run(None, {"input": example.numpy()})[0]), dim=1)
    gap = float((expected - got).abs().max())
    if gap > tolerance:
        raise RuntimeError(f"the ONNX export disagrees with PyTorch (probabilities {gap:.2g} apart)")
    return graph


class MaskClassifier:
    """Batched inference over face crops; returns class probabilities in `labels` order.

    `runtime`: `torch` runs the network eagerly; `onnxruntime` runs its ONNX export (`fp32_graph`, the
    one stored in the artefact; else exported here, once, and checked against PyTorch): the same
    probabilities, measured 4x faster for MobileNetV2 on 2 cores; `onnxruntime_int8` runs the int8 graph
    the train stage calibrated and stored in the artefact (`int8_graph`; its agreement with fp32 on the
    val crops is in `meta["int8"]`). `network` may be a function that builds it: it is then built on
    first use (`.network`), never where a stored graph answers."""

    def __init__(
        self,
        network: torch.nn.Module | Callable[[], torch.nn.Module],
        labels: Sequence[str],
        preprocessor: Preprocessor,
        meta: dict,
        runtime: Runtime = "torch",
        int8_graph: bytes | None = None,
        fp32_graph: bytes | None = None,
    ):
        self._network = network.eval() if isinstance(network, torch.nn.Module) else None
        self._build = network
        self.labels = list(labels)
        self.preprocessor = preprocessor
        self.meta = meta
        self.runtime = runtime
        self.int8_graph = int8_graph
        self._session = None
        if runtime == "onnxruntime":
            if fp32_graph is None:
                fp32_graph = checked_onnx_graph(self.network, preprocessor.input_size)
            self._session = ort_session(fp32_graph)
        elif runtime == "onnxruntime_int8":
            if int8_graph is None:
                raise ConfigError(
                    "pipeline.classifier_runtime=onnxruntime_int8, but this classifier artefact holds no int8 "
                    "graph: retrain it (dvc repro train, model.int8_calibration > 0) or serve it in onnxruntime"
                )
            self._session = ort_session(int8_graph)

    @property
    def network(self) -> torch.nn.Module:
        """The PyTorch network (built from the artefact on first use when it was loaded lazily)."""
        if self._network is None:
            self._network = self._build().eval()
        return self._network

    @torch.inference_mode()
    def predict_proba(self, crops: Sequence[np.ndarray], bgr: bool = False, batch_size: int = 64) -> np.ndarray:
        """Probabilities (N x classes) for RGB (or BGR with `bgr`) uint8 crops, in batches."""
        if len(crops) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = []
        for start in range(0, len(crops), batch_size):
            x = self.preprocessor.batch(crops[start : start + batch_size], bgr=bgr)
            if self._session is None:
                logits = self.network(x)
            else:
                logits = torch.from_numpy(self._session.run(None, {"input": x.numpy()})[0])
            out.append(torch.softmax(logits, dim=1).numpy())
        return np.concatenate(out)

    @classmethod
    def load(cls, path: Path | str, runtime: Runtime = "torch") -> MaskClassifier:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classifier {path} not found: run the train stage (dvc repro train)")
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)  # no code from the file
        # the trained weights follow; the backbone was checked against timm when it was trained
        cfg = ModelConfig.model_validate({**blob["model"], "pretrained": "none"}, context={"trained": True})

        def network() -> torch.nn.Module:
            built = create_network(cfg, len(blob["labels"]))
            built.load_state_dict(blob["state_dict"])
            return built

        meta = {**blob.get("meta", {}), "backbone": cfg.backbone, "input_size": cfg.input_size}
        int8_graph, fp32_graph = (_graph(blob, key) for key in ("onnx_int8", "onnx_fp32"))  # fp32: older have none
        return cls(network, blob["labels"], Preprocessor.from_config(cfg), meta, runtime, int8_graph, fp32_graph)


def _graph(blob: dict[str, Any], key: str) -> bytes | None:
    """An ONNX graph stored in the artefact as a uint8 tensor, as bytes."""
    graph = blob.get(key)
    return graph.numpy().tobytes() if graph is not None else None


def save_classifier(
    network: torch.nn.Module,
    cfg: ModelConfig,
    labels: Sequence[str],
    path: Path,
    meta: dict | None = None,
    int8_graph: bytes | None = None,
    fp32_graph: bytes | None = None,
) -> None:
    """The artefact: weights, backbone, labels, preprocessing, metadata, the ONNX graph (`fp32_graph`,
    else exported and checked here) and, when given, the int8 graph (graphs as uint8 tensors: the file
    loads with `weights_only`, no code)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "model": cfg.model_dump(mode="json"),
        "labels": list(labels),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "meta": meta or {},
    }
    blob["onnx_fp32"] = torch.frombuffer(bytearray(fp32_graph or checked_onnx_graph(network, cfg.input_size)),
                                         dtype=torch.uint8)  # fmt: skip
    if int8_graph is not None:
        blob["onnx_int8"] = torch.frombuffer(bytearray(int8_graph), dtype=torch.uint8)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
