"""Preparing pretrained weights for fine-tuning: BatchNorm statistics re-estimated on our crops.

Weights converted from a TFLite graph (the mirror's ImageNet MobileNetV2) carry BatchNorm folded into
the convolutions: every BatchNorm layer is an identity (running mean 0, variance 1, gamma 1) whose
beta is the folded bias. In eval mode that computes the pretrained function exactly, but in training
mode BatchNorm normalises by the batch statistics, which are nothing like (0, 1): fine-tuning would
start from a different, broken network. `refold_batchnorm` measures each layer's input mean and
variance over real crops with the network in eval mode, then sets running stats to them and
gamma = sqrt(var + eps), beta = mean + beta0: the eval output is unchanged, and training-mode output
(batch statistics close to the running ones) stays close to the pretrained function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


@torch.no_grad()
def refold_batchnorm(network: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm2d of `network` (timm's BatchNormAct2d included) on `batches` of
    preprocessed inputs as described above; returns the number of layers changed."""
    layers = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for name, m in network.named_modules():
        if not isinstance(m, torch.nn.BatchNorm2d):
            continue
        if not ((m.running_mean == 0).all() and (m.running_var == 1).all() and (m.weight == 1).all()):
            raise ValueError(f"BatchNorm {name} is not a folded identity (statistics already set or trained)")
    sums: dict[torch.nn.Module, list[torch.Tensor | int]] = {m: [0, 0, 0] for m in layers}

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].double().transpose(0, 1).flatten(1)  # channels x values
        acc = sums[module]
        acc[0] = acc[0] + x.sum(1)
        acc[1] = acc[1] + (x * x).sum(1)
        acc[2] += x.shape[1]

    was_training = network.training
    network.eval()
    hooks = [m.register_forward_pre_hook(record) for m in layers]
    try:
        seen = 0
        for x in batches:
            network(x)
            seen += len(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError("no crops to re-estimate BatchNorm statistics on")
    for m in layers:
        total, squares, n = sums[m]
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0)
        beta0 = m.bias.double()  # the folded bias (the layer is an identity otherwise)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.weight.copy_((var + m.eps).sqrt())
        m.bias.copy_(mean + beta0)
    network.train(was_training)
    return len(layers)


def _frozen(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(network: torch.nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training the parameters under the named modules (`conv_stem`, `blocks.0`); returns how many."""
    params = [p for name, p in network.named_parameters() if _frozen(name, prefixes)]
    for p in params:
        p.requires_grad_(False)
    return len(params)


def keep_frozen_in_eval(network: torch.nn.Module, prefixes: Sequence[str], all_batchnorm: bool = False) -> None:
    """Put the frozen modules (and, with `all_batchnorm`, every BatchNorm) in eval mode: call after
    Lightning's `train()` at each epoch start, so their BatchNorm statistics stay as they are."""
    for name, module in network.named_modules():
        if (all_batchnorm and isinstance(module, torch.nn.BatchNorm2d)) or (name and _frozen(name, prefixes)):
            module.eval()
