"""Function-preserving weight attacks: the symmetries of a ReLU network a thief gets for free.

Each returns a new model (the victim is never modified) that computes what the victim computes
(up to float rounding) with different weights: :func:`permute_units` applies a derangement to the
units of every hidden layer (no unit keeps its place; batch norm and the next layer's inputs follow),
:func:`rescale_units` scales every hidden unit by a positive factor and its outgoing weights by the
inverse, :func:`add_dead_units` widens every hidden layer with units that feed nothing.
They apply to the chains :func:`tracemark.fingerprint.align.unit_layers` reads (``small_cnn``,
``lenet``, ``mlp`` and other ``nn.Sequential`` chains of conv / linear layers, batch norm, ReLU, pooling).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from tracemark.attacks.base import AttackError, seeded_generator
from tracemark.fingerprint.align import NotAlignable, UnitLayer, unit_layers


def _hidden(model: nn.Module) -> list[UnitLayer]:
    try:
        return unit_layers(model)
    except NotAlignable as exc:
        raise AttackError(f"this symmetry attack needs a feed-forward chain: {exc}") from exc


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of ``range(n)`` with no fixed point (``n >= 2``): a random ``n``-cycle."""
    if n < 2:
        raise AttackError("a layer with fewer than 2 units has no derangement")
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)
    return perm


def _map_units(model: nn.Module, per_layer: list[tuple[torch.Tensor, torch.Tensor]]) -> nn.Module:
    """A copy of ``model`` whose hidden layer k takes its unit ``i`` from unit ``perm[i]``, scaled by ``scale[i]``."""
    layers = _hidden(model)
    out = copy.deepcopy(model)
    state = out.state_dict()
    with torch.no_grad():
        for k, (perm, scale) in enumerate(per_layer):
            layer = layers[k]
            w = state[f"{layer.name}.weight"]
            own = scale if layer.norm is None else torch.ones_like(scale)
            post = scale if layer.norm is not None else torch.ones_like(scale)
            w.copy_(w[perm] * own.reshape(-1, *[1] * (w.dim() - 1)).to(w.dtype))
            if f"{layer.name}.bias" in state:
                b = state[f"{layer.name}.bias"]
                b.copy_(b[perm] * own.to(b.dtype))
            if layer.norm is not None:
                for part in ("weight", "bias", "running_mean", "running_var"):
                    t = state[f"{layer.norm}.{part}"]
                    t.copy_(t[perm] * (post.to(t.dtype) if part in ("weight", "bias") else 1))
            nxt = state[f"{layers[k + 1].name}.weight"]
            cols = nxt.reshape(nxt.shape[0], len(perm), -1)
            nxt.copy_((cols[:, perm, :] / scale[None, :, None].to(nxt.dtype)).reshape(nxt.shape))
    return out


def permute_units(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with a seeded derangement of every hidden layer's units (the function is unchanged)."""
    g = seeded_generator(seed)
    plan = [(derangement(int(layer.module.weight.shape[0]), g), torch.ones(int(layer.module.weight.shape[0])))
            for layer in _hidden(model)[:-1]]
    return _map_units(model, plan)


def rescale_units(model: nn.Module, seed: int, low: float = 0.25, high: float = 4.0) -> nn.Module:
    """A copy of ``model`` with every hidden unit scaled by a seeded factor in ``[low, high]`` (log-uniform), its outgoing weights by the inverse."""
    if not 0 < low <= high:
        raise AttackError("rescaling needs 0 < low <= high")
    g = seeded_generator(seed)
    plan = []
    for layer in _hidden(model)[:-1]:
        n = int(layer.module.weight.shape[0])
        u = torch.rand(n, generator=g, dtype=torch.float64)
        plan.append((torch.arange(n), torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))))
    return _map_units(model, plan)


def add_dead_units(model: nn.Module, seed: int, extra: int = 8) -> nn.Module:
    """A copy of ``model`` with ``extra`` more units in every hidden layer: random incoming weights, zero outgoing ones."""
    if extra < 1:
        raise AttackError("add at least one unit")
    layers = _hidden(model)
    g = seeded_generator(seed)
    modules = dict(copy.deepcopy(model).named_children())
    for k, layer in enumerate(layers[:-1]):
        old, nxt_old = modules[layer.name], modules[layers[k + 1].name]
        n = int(old.weight.shape[0])
        grown = _resized(old, out_extra=extra)
        scale = old.weight.detach().std()
        with torch.no_grad():
            grown.weight[:n].copy_(old.weight)
            grown.weight[n:].copy_(torch.randn(grown.weight[n:].shape, generator=g) * scale)
            if old.bias is not None:
                grown.bias[:n].copy_(old.bias)
                grown.bias[n:].zero_()
        modules[layer.name] = grown
        if layer.norm is not None:
            bn_old = modules[layer.norm]
            bn = type(bn_old)(n + extra, eps=bn_old.eps, momentum=bn_old.momentum)
            with torch.no_grad():
                for part in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, part)[:n].copy_(getattr(bn_old, part))
            modules[layer.norm] = bn
        per_unit = int(nxt_old.weight.shape[1] // n) if isinstance(nxt_old, nn.Linear) else 1  # flattened positions
        nxt = _resized(nxt_old, in_extra=extra * per_unit)
        with torch.no_grad():
            nxt.weight.zero_()
            nxt.weight[:, : nxt_old.weight.shape[1]].copy_(nxt_old.weight)
            if nxt_old.bias is not None:
                nxt.bias.copy_(nxt_old.bias)
        modules[layers[k + 1].name] = nxt
    out = nn.Sequential(*modules.values())
    if hasattr(model, "tracemark_spec"):
        out.tracemark_spec = model.tracemark_spec  # type: ignore[assignment]
    return out.train(model.training)


def _resized(module: nn.Module, out_extra: int = 0, in_extra: int = 0) -> nn.Module:
    """A fresh module like ``module`` with more outputs or inputs (weights to be filled in)."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Linear(module.in_features + in_extra, module.out_features + out_extra, bias=bias)
    return nn.Conv2d(module.in_channels + in_extra, module.out_channels + out_extra, module.kernel_size,
                     stride=module.stride, padding=module.padding, dilation=module.dilation, bias=bias)
