"""BatchNorm statistics over the global batch under DDP on any backend (gloo on CPUs included).

torch's SyncBatchNorm runs on GPUs only; without it each DDP process normalises by the statistics
of its own share of the batch, and the model trains differently from one process on the whole
batch. `GlobalBatchNorm` (a Lightning `LayerSync` plugin, `conf/trainer/ddp.yaml`) swaps every
BatchNorm layer for one that sums its per-channel sums over the processes (a differentiable
all-reduce, so gradients flow through the shared statistics as they do in one process) and swaps
them back when training ends: the saved model holds plain BatchNorm layers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.plugins import LayerSync
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the DDP processes; its gradient is summed likewise (every process's
    loss depends on the shared sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class AllReduceBatchNorm(_BatchNorm):
    """A BatchNorm layer (torch's or timm's BatchNormAct2d) whose training statistics are those of
    every process's batch together; out of DDP training it is its original class."""

    original: type[_BatchNorm]

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.original.forward(self, x)
        channels, dims = x.size(1), [d for d in range(x.dim()) if d != 1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        stats = _SumOverProcesses.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * n / (n - 1), momentum)  # unbiased, as BatchNorm keeps it
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        # timm's BatchNormAct2d (the timm backbones' norm layer) follows with its dropout and activation
        if hasattr(self, "drop"):
            y = self.drop(y)
        if hasattr(self, "act"):
            y = self.act(y)
        return y


def _swap(module: torch.nn.Module, to_global: bool) -> torch.nn.Module:
    """The same layer (parameters and buffers shared, not copied) as the other class."""
    if to_global and isinstance(module, _BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        original = type(module)
        module.__class__ = AllReduceBatchNorm
        module.original = original
    elif not to_global and isinstance(module, AllReduceBatchNorm):
        module.__class__ = module.original
        del module.original
    for child in module.children():
        _swap(child, to_global)
    return module


class GlobalBatchNorm(LayerSync):
    """Lightning plugin: BatchNorm statistics over all DDP processes while fitting."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        return _swap(model, to_global=True)

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        return _swap(model, to_global=False)
