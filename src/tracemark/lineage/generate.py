"""Conferrable adversarial examples (Lukas, Zhang, Kerschbaum, ICLR 2021), targeted.

From owner images the source labels correctly, each with a seeded target label other than its own, a
bounded (L∞ ``epsilon``) sign-gradient descent for a fixed number of steps minimises

    −log conf_t(x') + CE(source(x'), t),    conf_t(x') = mean_S p_S(t | x') · (1 − max_R p_R(t | x'))

over the surrogates S (models derived from the source) and references R (independent ones): the paper's
conferrability, pushing the source and its surrogates to ``t`` while no reference goes there. As in the
paper's ensemble method, each step keeps every surrogate and reference with probability ``keep`` (at least
one of each; seeded), so no single model dominates. Inputs are rounded to the 1/255 grid, then scored with
every model. An input is eligible when the source labels it ``t``, at least ``min_surrogates`` of the surrogates
do too, and at most ``max_references`` of the generation references do (defaults: a third each, loose enough
for a small pool on small data; on MNIST 0.5 and 0 keep inputs held-out references agree with less); the
eligible ones are ranked by conferrability and the best ``n`` kept. The filters use generation models only, so the held-out
calibration references stay untouched by selection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tracemark.data.devices import model_device, resolve_device
from tracemark.lineage.errors import LineageError

MIN_KEPT = 10
"""Fewer conferrable inputs than this cannot make a useful fingerprint: generation stops with an error."""


@dataclass(frozen=True)
class GenerationSettings:
    """The generation's parameters: ``n`` inputs kept of ``candidates`` start images, L∞ bound ``epsilon``,
    ``steps`` sign-gradient steps of ``step_size`` (default ``2.5·epsilon/steps``), model dropout ``keep``;
    selection keeps inputs that at least ``min_surrogates`` and at most ``max_references`` (fractions) of the
    generation surrogates and references label with the target."""

    n: int = 300
    candidates: int = 1000
    epsilon: float = 0.25
    steps: int = 40
    step_size: float | None = None
    keep: float = 0.7
    seed: int = 0
    batch_size: int = 128
    min_surrogates: float = 1 / 3
    max_references: float = 1 / 3

    def __post_init__(self) -> None:
        if self.n < 1 or self.candidates < self.n or self.steps < 1 or not 0 < self.epsilon <= 1 or not 0 < self.keep <= 1:
            raise LineageError("generation needs n >= 1, candidates >= n, steps >= 1, epsilon in (0, 1] and keep in (0, 1]")
        if not 0 <= self.min_surrogates <= 1 or not 0 <= self.max_references <= 1:
            raise LineageError("min_surrogates and max_references are fractions in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "candidates": self.candidates, "epsilon": self.epsilon, "steps": self.steps,
                "step_size": self.step(), "keep": self.keep, "seed": self.seed, "min_surrogates": self.min_surrogates,
                "max_references": self.max_references}

    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps


@dataclass
class Generated:
    """The kept inputs (uint8, N×C×H×W, value/255 is the image), their target labels, and how they scored:
    of ``tried`` candidates, ``adversarial`` the source labels with the target, ``eligible`` also pass the
    surrogate and reference filters."""

    inputs: np.ndarray
    labels: np.ndarray
    conferrability: np.ndarray
    surrogate_agreement: float
    reference_agreement: float
    tried: int
    adversarial: int
    eligible: int
    cpu_seconds: float
    settings: GenerationSettings

    def to_dict(self) -> dict[str, Any]:
        return {"kept": int(len(self.labels)), "tried": self.tried, "adversarial": self.adversarial,
                "eligible": self.eligible,
                "mean_conferrability": float(self.conferrability.mean()) if len(self.labels) else 0.0,
                "surrogate_agreement": self.surrogate_agreement, "reference_agreement": self.reference_agreement,
                "cpu_seconds": self.cpu_seconds, "settings": self.settings.to_dict()}


def _probs(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Softmax outputs stacked as (models, batch, classes)."""
    return torch.stack([F.softmax(m(x), dim=1) for m in models])


def _mask(generator: torch.Generator, count: int, keep: float) -> list[int]:
    chosen = (torch.rand(count, generator=generator) < keep).nonzero().flatten().tolist()
    return chosen or [int(torch.randint(count, (1,), generator=generator))]


def conferrability(surrogates: torch.Tensor, references: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_S p_S(t) · (1 − max_R p_R(t))`` from stacked probabilities (models, batch, classes)."""
    index = target.view(1, -1, 1)
    p_s = surrogates.gather(2, index.expand(surrogates.shape[0], -1, 1)).squeeze(2).mean(0)
    p_r = references.gather(2, index.expand(references.shape[0], -1, 1)).squeeze(2).amax(0)
    return p_s * (1 - p_r)


@torch.no_grad()
def _target_labels(source: nn.Module, surrogates: Sequence[nn.Module], references: Sequence[nn.Module], x: torch.Tensor,
                   y: torch.Tensor) -> torch.Tensor:
    """Per start image, the label other than its own that the source and surrogates already lean to most
    relative to the references: argmax of log p_source(t) + log mean_S p_S(t) − log max_R p_R(t)."""
    log = lambda p: torch.log(p + 1e-12)  # noqa: E731
    score = (log(F.softmax(source(x), dim=1)) + log(_probs(surrogates, x).mean(0)) - log(_probs(references, x).amax(0)))
    score[torch.arange(len(y)), y] = -float("inf")
    return score.argmax(1)


def generate(source: nn.Module, surrogates: Sequence[nn.Module], references: Sequence[nn.Module], x: np.ndarray,
             y: np.ndarray, settings: GenerationSettings = GenerationSettings(), *,
             device: str | torch.device | None = None) -> Generated:
    """Conferrable examples for ``source`` from start images ``x`` (float32 N×C×H×W in [0, 1]) with labels ``y``.

    Runs on ``device`` (default: the best one here); every model is moved there and back. Deterministic for
    a seed on one device. Raises :class:`LineageError` if fewer than :data:`MIN_KEPT` inputs become conferrable.
    """
    if not surrogates or not references:
        raise LineageError("generation needs at least one surrogate and one reference model")
    dev = resolve_device(device)
    models = [source, *surrogates, *references]
    homes = [model_device(m) for m in models]
    cpu_start = time.process_time()
    generator = torch.Generator().manual_seed(settings.seed)
    try:
        for m in models:
            m.to(dev).eval()
        x_all = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y_all = torch.from_numpy(np.asarray(y, dtype=np.int64))
        with torch.no_grad():
            pred = torch.cat([source(x_all[i : i + 512].to(dev)).argmax(1).cpu() for i in range(0, len(x_all), 512)])
        right = (pred == y_all).nonzero().flatten()[: settings.candidates]
        x0, y0 = x_all[right], y_all[right]
        targets = torch.cat([_target_labels(source, surrogates, references, x0[i : i + 512].to(dev), y0[i : i + 512].to(dev))
                             for i in range(0, len(x0), 512)]).cpu() if len(x0) else y0
        step = settings.step()
        outs, scores, s_agree, r_agree, adversarial, valid = [], [], [], [], [], []
        for lo in range(0, len(x0), settings.batch_size):
            xb0, tb = x0[lo : lo + settings.batch_size].to(dev), targets[lo : lo + settings.batch_size].to(dev)
            xb = xb0.clone()
            for _ in range(settings.steps):
                kept_s = [surrogates[i] for i in _mask(generator, len(surrogates), settings.keep)]
                kept_r = [references[i] for i in _mask(generator, len(references), settings.keep)]
                xb.requires_grad_(True)
                conf = conferrability(_probs(kept_s, xb), _probs(kept_r, xb), tb)
                loss = -torch.log(conf + 1e-12).sum() + F.cross_entropy(source(xb), tb, reduction="sum")
                (grad,) = torch.autograd.grad(loss, [xb])
                with torch.no_grad():
                    xb = xb - step * grad.sign()
                    xb = torch.minimum(torch.maximum(xb, xb0 - settings.epsilon), xb0 + settings.epsilon).clamp(0, 1)
            with torch.no_grad():
                xq = torch.round(xb * 255) / 255
                p_s, p_r = _probs(surrogates, xq), _probs(references, xq)
                scores.append(conferrability(p_s, p_r, tb).cpu())
                s_hit, r_hit = (p_s.argmax(2) == tb).float().mean(0), (p_r.argmax(2) == tb).float().mean(0)
                hit = source(xq).argmax(1) == tb
                adversarial.append(hit.cpu())
                valid.append((hit & (s_hit >= settings.min_surrogates - 1e-6) & (r_hit <= settings.max_references + 1e-6)).cpu())
                s_agree.append(s_hit.cpu())
                r_agree.append(r_hit.cpu())
                outs.append(torch.round(xb * 255).to(torch.uint8).cpu())
    finally:
        for m, home in zip(models, homes):
            m.to(home)
    if not outs:
        raise LineageError("the source labels none of the start images correctly; check the model and the data")
    score, ok = torch.cat(scores), torch.cat(valid)
    order = sorted((i for i in range(len(score)) if ok[i]), key=lambda i: (-float(score[i]), i))[: settings.n]
    if len(order) < MIN_KEPT:
        raise LineageError(f"only {len(order)} of {len(score)} inputs became conferrable (the source and at least "
                           f"{settings.min_surrogates:.0%} of the surrogates give the target label, at most "
                           f"{settings.max_references:.0%} of the references; epsilon {settings.epsilon}, {settings.steps} "
                           "steps); raise epsilon, steps or candidates")
    chosen = torch.tensor(order, dtype=torch.long)
    return Generated(
        inputs=torch.cat(outs)[chosen].numpy(), labels=targets[chosen].numpy().astype(np.int64),
        conferrability=score[chosen].numpy().astype(np.float64),
        surrogate_agreement=float(torch.cat(s_agree)[chosen].mean()), reference_agreement=float(torch.cat(r_agree)[chosen].mean()),
        tried=int(len(score)), adversarial=int(torch.cat(adversarial).sum()), eligible=int(ok.sum()),
        cpu_seconds=time.process_time() - cpu_start, settings=settings,
    )
