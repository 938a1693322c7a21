"""Canonicalise a suspect's hidden units against the base before the weight test.

A thief holding a customer's copy can change its weights without changing what it computes:
permute a layer's units (and the next layer's inputs), scale a unit feeding a ReLU by ``a > 0``
(and its outgoing weights by ``1/a``), or add units that feed nothing. Each leaves the function
intact and, unaligned, scrambles ``suspect - base`` beyond any sign test. :func:`align_to_base`
undoes them for feed-forward ``nn.Sequential`` chains of ``Conv2d`` / ``Linear`` layers with
``BatchNorm``, ReLU, pooling, dropout and flatten between them (``small_cnn``, ``lenet``, ``mlp``):

1. hidden layers in order (the last ``Linear``, the head, keeps its rows: classes are fixed);
2. each unit's *effective* incoming row (batch norm folded in, on copies) is compared, after
   the previous layer's alignment has been applied to its columns, with every base unit's: the
   cosine similarity on the suspect row's non-zero entries (so pruning does not read as a change
   of direction or of scale);
3. suspect units are matched to base units by a Hungarian assignment on those similarities
   (``scipy.optimize.linear_sum_assignment``; ties go to the identity); a wider
   suspect keeps its best-matched base-width subset, so dead or added units are left out;
4. the suspect's rows are permuted into the base's order and divided by their positive scale
   ratio to the base (``|suspect row| / |base row|`` on the suspect row's support), and the next
   layer's columns are permuted and multiplied by it, so the aligned suspect computes what it
   computed before;
5. two refining sweeps set each unit's scale from its incoming rows *and* its outgoing columns
   (a rescaling moves them in opposite directions, drift usually does not), each side weighted by
   how little it drifted from the base (``1 - cos²``) and how much of it is left after pruning; the
   last hidden layer keeps the estimate from its rows (its columns are the head, which a thief re-trains).
   A unit's overall scale is a free parameter of the function, so the part of
   the code along each row's own direction is not recoverable: a row pruned down to one entry
   (or its bias alone) is normalised to the base's and carries no code.

The result is in the *original* parametrisation (conv / linear weights and biases, batch-norm
weights, biases and running statistics), so the weight code's coded entries are compared at the
positions and in the units :func:`~tracemark.fingerprint.weights.add_weight_code` wrote them.
With batch norm, a unit's scale may sit in the conv row (which batch norm divides out) or in
the batch-norm affine (which the next layer compensates): the conv row is divided by its own
norm ratio, the batch-norm weight and bias by the folded row's.

Why the weight test's null stays exact: the alignment reads the base and the suspect only, never
a customer's signs. For a suspect not derived from customer ``c``'s copy, the aligned
``suspect - base`` (and which entries are compared) is a function of models independent of
``c``'s SHAKE-256 sign stream, so each compared sign agrees with ``c``'s bit with probability
exactly 1/2, independently: still ``Binomial(n, 1/2)``. That the assignment pulls the suspect
towards the base changes ``suspect - base``, not its independence from the signs
(tests/fingerprint/test_align.py measures the false-positive rate).

What it cannot undo: residual networks (``resnet18``; units in the residual stream would need one
permutation shared across blocks — :class:`NotAlignable` says so and the weight test compares
unaligned), other orthogonal mixing of units than permutations, and models with no weight
correspondence at all (a distilled or re-trained model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from tracemark.fingerprint.errors import FingerprintError

WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# per-unit (per-channel) maps that commute with unit permutations and positive per-unit scaling
PASSIVE = (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
           nn.Flatten, nn.Dropout, nn.Identity)
TIE_BREAK = 1e-9  # similarity bonus of the identity, so equal rows keep their place
REFINE_SWEEPS = 2  # passes that set each unit's scale from its incoming and its outgoing weights together
WEAK = 0.5  # a matched pair less similar than this shares little with the base (a unit re-learned or added)


class NotAlignable(FingerprintError):
    """The suspect or the base is not a chain alignment understands (or not the same chain as the other)."""


@dataclass(frozen=True)
class UnitLayer:
    """A weighted layer of a chain: its name, the name of the batch norm that follows it (if any)."""

    name: str
    norm: str | None
    module: nn.Module
    norm_module: nn.Module | None


@dataclass(frozen=True)
class LayerAlignment:
    """How one hidden layer was aligned: ``moved`` of ``units`` base units got a suspect unit from elsewhere.

    ``similarity`` is the mean cosine similarity of the matched rows; ``weak`` counts matches
    below :data:`WEAK` (units the suspect re-learned: any match of theirs carries little code).
    """

    layer: str
    units: int
    suspect_units: int
    moved: int
    dropped: int
    weak: int
    similarity: float
    scale_min: float
    scale_max: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AlignmentReport:
    """What alignment did before the weight test (``method`` ``"none"`` with a ``note`` when it did not apply)."""

    method: str
    layers: list[LayerAlignment]
    note: str = ""

    @property
    def moved(self) -> int:
        return sum(x.moved for x in self.layers)

    def to_dict(self) -> dict:
        return {**asdict(self), "moved": self.moved}

    def line(self) -> str:
        """One summary line."""
        if self.method == "none":
            return f"alignment: none ({self.note})"
        per = ", ".join(f"{x.layer}: {x.moved}/{x.units}" + (f" (+{x.dropped} left out)" if x.dropped else "")
                        + (f" ({x.weak} weak)" if x.weak else "") for x in self.layers)
        return f"alignment: {self.method}; units moved per hidden layer {per}"


def unit_layers(model: nn.Module) -> list[UnitLayer]:
    """The weighted layers of a feed-forward chain, in order; raises :class:`NotAlignable` for anything else."""
    if not isinstance(model, nn.Sequential):
        raise NotAlignable(f"alignment needs an nn.Sequential chain, not {type(model).__name__}")
    layers: list[UnitLayer] = []
    previous: nn.Module | None = None
    for name, module in model.named_children():
        if isinstance(module, WEIGHTED):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise NotAlignable(f"layer {name}: grouped convolutions are not aligned")
            layers.append(UnitLayer(name, None, module, None))
        elif isinstance(module, NORMS):
            if not isinstance(previous, WEIGHTED) or not module.track_running_stats or not module.affine:
                raise NotAlignable(f"layer {name}: batch norm is aligned only right after a conv / linear layer, "
                                   "with running statistics and an affine part")
            last = layers[-1]
            layers[-1] = UnitLayer(last.name, name, last.module, module)
        elif not isinstance(module, PASSIVE):
            kind = type(module).__name__
            why = " (a residual block: units in the residual stream would need one permutation shared across blocks)" \
                if any(isinstance(m, nn.Conv2d) for m in module.modules()) else ""
            raise NotAlignable(f"layer {name} is a {kind}, which alignment does not handle{why}")
        previous = module
    if len(layers) < 2 or not isinstance(layers[-1].module, nn.Linear):
        raise NotAlignable("alignment needs at least one hidden layer before a final nn.Linear")
    return layers


def _check_same_chain(suspect: nn.Sequential, base: nn.Sequential, s_layers: Sequence[UnitLayer],
                      b_layers: Sequence[UnitLayer]) -> None:
    s_kinds = [(n, type(m).__name__) for n, m in suspect.named_children()]
    b_kinds = [(n, type(m).__name__) for n, m in base.named_children()]
    if s_kinds != b_kinds:
        raise NotAlignable("the suspect's layers are not the base's (another architecture)")
    for s, b in zip(s_layers, b_layers):
        if isinstance(b.module, nn.Conv2d) and (s.module.kernel_size, s.module.stride, s.module.padding) != (
                b.module.kernel_size, b.module.stride, b.module.padding):
            raise NotAlignable(f"layer {b.name}: another kernel, stride or padding than the base's")
        if _width(s) < _width(b):
            raise NotAlignable(f"layer {b.name} has {_width(s)} units in the suspect, fewer than the base's {_width(b)}")
    if _width(s_layers[-1]) != _width(b_layers[-1]):
        raise NotAlignable("the suspect has another number of classes than the base")


def _width(layer: UnitLayer) -> int:
    w = layer.module.weight
    return int(w.shape[0])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def _rows(state: dict[str, torch.Tensor], layer: UnitLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's own rows (weight and bias) and its effective rows (batch norm folded in, on copies)."""
    w = state[f"{layer.name}.weight"]
    own = w.reshape(w.shape[0], -1)
    bias = state.get(f"{layer.name}.bias")
    if bias is not None:
        own = torch.cat([own, bias[:, None]], dim=1)
    if layer.norm is None:
        return own, own
    n = layer.norm
    gain = state[f"{n}.weight"] / torch.sqrt(state[f"{n}.running_var"] + layer.norm_module.eps)
    shift = (torch.zeros_like(gain) if bias is None else bias) - state[f"{n}.running_mean"]
    effective = torch.cat([w.reshape(w.shape[0], -1) * gain[:, None], (shift * gain + state[f"{n}.bias"])[:, None]], dim=1)
    return own, effective


def _ratio(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row positive scale of ``s`` relative to ``b`` on ``s``'s support (pruned entries left out; 1 where undefined)."""
    ns, nb = s.norm(dim=1), (b * (s != 0)).norm(dim=1)
    ok = (ns > 0) & (nb > 0)
    return torch.where(ok, ns / torch.where(ok, nb, 1.0), torch.ones_like(ns))


def _similarity(b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every base row with every suspect row, on the suspect row's support (base × suspect)."""
    dots = b @ s.T
    b_norms = torch.sqrt((b * b) @ (s != 0).double().T)
    norms = b_norms * s.norm(dim=1)[None, :]
    return torch.where(norms > 0, dots / torch.where(norms > 0, norms, 1.0), torch.zeros_like(dots))


def _trust(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How far each row's scale ratio can be trusted: its non-zero fraction over its drift (1 - cos², on its support)."""
    bb = b * (s != 0)
    norms = s.norm(dim=1) * bb.norm(dim=1)
    cos = torch.where(norms > 0, (s * bb).sum(dim=1) / torch.where(norms > 0, norms, 1.0), torch.zeros_like(norms))
    return (s != 0).double().mean(dim=1) / (1 - cos**2).clamp_min(1e-6)


def _gauge(s_rows: torch.Tensor, b_rows: torch.Tensor, s_cols: torch.Tensor, b_cols: torch.Tensor) -> torch.Tensor:
    """Each unit's residual scale from both sides: rows grow by it, outgoing columns shrink by it.

    A weighted geometric mean of the row ratio and the inverse column ratio, each side weighted
    by :func:`_trust` (the side a fine-tune or pruning changed less decides). Drift that grows or
    shrinks both sides together (not a rescaling) leaves it near 1.
    """
    w_r, w_c = _trust(s_rows, b_rows), _trust(s_cols, b_cols)
    log_g = w_r * _ratio(s_rows, b_rows).log() - w_c * _ratio(s_cols, b_cols).log()
    total = w_r + w_c
    return torch.exp(torch.where(total > 0, log_g / torch.where(total > 0, total, 1.0), torch.zeros_like(log_g)))


def _columns(weight: torch.Tensor, units: int) -> torch.Tensor:
    """A next layer's weights as one row per input unit (units × everything it feeds)."""
    return weight.reshape(weight.shape[0], units, -1).transpose(0, 1).reshape(units, -1)


def _permute(S: dict[str, torch.Tensor], layer: UnitLayer, nxt: str, idx: torch.Tensor) -> None:
    """Put suspect unit ``idx[i]`` of ``layer`` in place ``i`` (rows, batch norm, the next layer's columns); others dropped."""
    names = [f"{layer.name}.weight", f"{layer.name}.bias"]
    if layer.norm is not None:
        names += [f"{layer.norm}.{part}" for part in ("weight", "bias", "running_mean", "running_var")]
    units = S[names[0]].shape[0]
    for name in names:
        if name in S:
            S[name] = S[name][idx]
    out = S[nxt].shape[0]
    S[nxt] = S[nxt].reshape(out, units, -1)[:, idx, :].reshape(out, -1, *S[nxt].shape[2:])


def _rescale(S: dict[str, torch.Tensor], layer: UnitLayer, nxt: str, scale: torch.Tensor, own: torch.Tensor) -> None:
    """Divide each unit by its positive ``scale`` (the layer's own rows by ``own``, batch norm's affine by ``scale``)
    and multiply the next layer's columns by ``scale``: the function is unchanged."""
    w = f"{layer.name}.weight"
    S[w] = S[w] / own.reshape(-1, *[1] * (S[w].dim() - 1))
    if f"{layer.name}.bias" in S:
        S[f"{layer.name}.bias"] = S[f"{layer.name}.bias"] / own
    if layer.norm is not None:
        n = layer.norm
        S[f"{n}.weight"] = S[f"{n}.weight"] / scale
        S[f"{n}.bias"] = S[f"{n}.bias"] / scale
        S[f"{n}.running_mean"] = S[f"{n}.running_mean"] / own
        S[f"{n}.running_var"] = S[f"{n}.running_var"] / own**2
    out, units = S[nxt].shape[0], len(scale)
    S[nxt] = (S[nxt].reshape(out, units, -1) * scale[None, :, None]).reshape(S[nxt].shape)


def align_to_base(suspect: nn.Module, base: nn.Module) -> tuple[dict[str, torch.Tensor], AlignmentReport]:
    """The suspect's floating-point state aligned unit by unit to ``base`` (base shapes, original parametrisation).

    Returns the aligned state (float64 tensors keyed like ``base.state_dict()``) and what was done.
    Raises :class:`NotAlignable` when either model is not a chain of the kind described in the
    module docstring, or the suspect's chain is not the base's (it may be wider).
    """
    b_layers = unit_layers(base)
    s_layers = unit_layers(suspect)
    _check_same_chain(suspect, base, s_layers, b_layers)  # type: ignore[arg-type]
    S, B = _state(suspect), _state(base)
    bad = next((name for name, t in S.items() if not torch.isfinite(t).all()), None)
    if bad is not None:
        raise NotAlignable(f"the suspect's {bad!r} holds non-finite values")
    report: list[LayerAlignment] = []
    scales: list[torch.Tensor] = []
    for k, (sl, bl) in enumerate(zip(s_layers[:-1], b_layers[:-1])):
        _, s_eff = _rows(S, sl)
        _, b_eff = _rows(B, bl)
        if s_eff.shape[1] != b_eff.shape[1]:
            raise NotAlignable(f"layer {bl.name}: {s_eff.shape[1]} inputs per unit in the suspect, {b_eff.shape[1]} in the base")
        similarity = _similarity(b_eff, s_eff)  # base units × suspect units
        nb, ns = similarity.shape
        similarity[torch.arange(nb), torch.arange(nb)] += TIE_BREAK
        _, chosen = linear_sum_assignment(similarity.numpy(), maximize=True)
        idx = torch.from_numpy(chosen.astype(np.int64))
        nxt = f"{s_layers[k + 1].name}.weight"
        if S[nxt].reshape(S[nxt].shape[0], -1).shape[1] % ns:
            raise NotAlignable(f"layer {s_layers[k + 1].name}: its inputs do not split into {ns} units")
        _permute(S, bl, nxt, idx)
        own, eff = _rows(S, bl)
        b_own, _ = _rows(B, bl)
        scale = _ratio(eff, b_eff)  # effective unit scale: what the next layer compensates
        _rescale(S, bl, nxt, scale, scale if bl.norm is None else _ratio(own, b_own))
        scales.append(scale)
        matched = similarity[torch.arange(nb), idx] - (idx == torch.arange(nb)) * TIE_BREAK
        report.append(LayerAlignment(bl.name, nb, ns, int((idx != torch.arange(nb)).sum()), ns - nb,
                                     int((matched < WEAK).sum()), float(matched.mean()), 0.0, 0.0))
    for _ in range(REFINE_SWEEPS):
        for k, bl in enumerate(b_layers[:-2]):  # the last hidden layer's columns are the head, which a thief re-trains
            nxt = f"{b_layers[k + 1].name}.weight"
            gauge = _gauge(_rows(S, bl)[1], _rows(B, bl)[1], _columns(S[nxt], len(scales[k])), _columns(B[nxt], len(scales[k])))
            _rescale(S, bl, nxt, gauge, gauge if bl.norm is None else torch.ones_like(gauge))
            scales[k] = scales[k] * gauge
    report = [LayerAlignment(**{**x.__dict__, "scale_min": float(sc.min()), "scale_max": float(sc.max())})
              for x, sc in zip(report, scales)]
    for name, tensor in B.items():
        if name in S and S[name].shape != tensor.shape:
            raise NotAlignable(f"{name!r} has shape {tuple(S[name].shape)} after alignment, {tuple(tensor.shape)} in the base")
    return S, AlignmentReport("weights", report)
