"""The white-box customer code: a keyed sign pattern added to a copy's weights, read back from a leaked model file.

Each customer's copy gets ``strength * rms(t) * s_c`` added to every coded parameter tensor
``t`` (every parameter except the final ``nn.Linear``'s, which the re-training attacks
re-initialise), where ``s_c`` in {-1, +1} is a stream of SHAKE-256 bits of the customer's
code secret: the master key regenerates it, nothing new is stored.

Tracing a suspect file against the base model's weights: ``d = suspect - base`` on the coded
entries, entries with ``d == 0`` or a zero (pruned) suspect weight dropped, and ``k`` = the number of the remaining ``n`` entries
where ``sign(d)`` agrees with ``s_c``. For a suspect not derived from customer ``c``'s copy,
``s_c`` is independent of it, so ``k ~ Binomial(n, 1/2)`` exactly; the p-value is that tail,
and Bonferroni over the customers bounds the chance of accusing any innocent one.

By default the suspect is first aligned to the base (:mod:`tracemark.fingerprint.align`: its
hidden units permuted back into the base's order, positive per-unit rescaling undone, added
units left out), which reads only the two models, so the null above stays exact.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy import special, stats
from torch import nn

from tracemark._util import rng
from tracemark.fingerprint.align import AlignmentReport, NotAlignable, align_to_base
from tracemark.fingerprint.codes import FingerprintScheme
from tracemark.fingerprint.errors import FingerprintError

SIGN_PURPOSE = "fingerprint/weight-signs/v1"
DEFAULT_STRENGTH = 0.02
CHUNK = 64  # customers whose signs are held at once while scoring


def coded_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters that carry the weight code: all of an ``nn.Sequential``'s except its final ``nn.Linear``'s."""
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise FingerprintError("the weight code needs an nn.Sequential model ending in an nn.Linear "
                               "(as every tracemark.build_model architecture is)")
    last = {id(p) for p in model[-1].parameters()}
    return [(name, p) for name, p in model.named_parameters() if id(p) not in last]


def _entries(model: nn.Module) -> int:
    return sum(p.numel() for _, p in coded_parameters(model))


def _sign_bytes(scheme: FingerprintScheme, customer_id: str, n: int) -> np.ndarray:
    """The customer's first ``n`` code bits, packed (big-endian bit order, as ``np.packbits``): SHAKE-256 of its code secret."""
    return np.frombuffer(rng.random_bytes(scheme.customer_secret(customer_id), SIGN_PURPOSE, -(-n // 8)), dtype=np.uint8)


def sign_bits(scheme: FingerprintScheme, customer_id: str, n: int) -> np.ndarray:
    """The customer's ``n`` code bits (True = +1), the same in any process."""
    return np.unpackbits(_sign_bytes(scheme, customer_id, n), count=n).astype(bool)


@torch.no_grad()
def add_weight_code(model: nn.Module, scheme: FingerprintScheme, customer_id: str,
                    strength: float = DEFAULT_STRENGTH) -> None:
    """Add ``strength * rms(t) * s_c`` to every coded tensor ``t`` of ``model`` (in place; ``rms`` of ``t`` as it is)."""
    if not strength > 0:
        raise ValueError("strength must be positive")
    params = coded_parameters(model)
    bits = torch.from_numpy(sign_bits(scheme, customer_id, sum(p.numel() for _, p in params)))
    start = 0
    for _, p in params:
        signs = bits[start : start + p.numel()].reshape(p.shape).to(p.dtype) * 2 - 1
        p.add_(strength * p.pow(2).mean().sqrt() * signs)
        start += p.numel()


def weight_coded_copy(base: nn.Module, scheme: FingerprintScheme, customer_id: str,
                      strength: float = DEFAULT_STRENGTH) -> nn.Module:
    """A copy of ``base`` carrying ``customer_id``'s weight code and nothing else (no training: seconds; ``base`` unchanged)."""
    model = copy.deepcopy(base)
    add_weight_code(model, scheme, customer_id, strength)
    return model.eval()


@dataclass(frozen=True)
class WeightScore:
    """One customer's weight-code score: ``agreements`` of ``compared`` signs; ``log10_p`` of the exact binomial tail."""

    customer: str
    agreements: int
    compared: int
    log10_p: float
    log10_p_adjusted: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WeightTrace:
    """The weight test's outcome; ``applies`` is False (with a ``note``) when the suspect's weights cannot be compared."""

    applies: bool
    accused: list[str]
    best: WeightScore | None
    runner_up: WeightScore | None
    top: list[WeightScore]
    alpha: float
    n_customers: int
    entries: int
    compared: int
    seconds: float = 0.0
    note: str = ""
    alignment: AlignmentReport | None = None

    @property
    def customer(self) -> str | None:
        return self.accused[0] if self.accused else None

    @property
    def margin_log10(self) -> float | None:
        if self.best is None or self.runner_up is None:
            return None
        return self.runner_up.log10_p - self.best.log10_p

    def to_dict(self) -> dict:
        return {**asdict(self), "customer": self.customer, "margin_log10": self.margin_log10,
                "alignment": None if self.alignment is None else self.alignment.to_dict()}

    def lines(self) -> list[str]:
        """Human-readable summary lines (for :class:`~tracemark.fingerprint.trace.TraceResult`)."""
        if not self.applies:
            return [f"  weight test: does not apply ({self.note})"]
        head = f"CUSTOMER {self.customer}" if self.accused else "no customer matches"
        out = [f"  weight test: {head}; {self.compared} of {self.entries} coded weights changed from the base; "
               f"alpha {self.alpha:.0e} over {self.n_customers} customers"]
        if len(self.accused) > 1:
            out.append(f"    accused: {', '.join(self.accused)}")
        for rank, s in enumerate(self.top, 1):
            out.append(f"    {rank}. {s.customer}: {s.agreements} of {s.compared} signs agree, log10 p = {s.log10_p:.1f}, "
                       f"adjusted {s.log10_p_adjusted:.1f}")
        if self.margin_log10 is not None:
            out.append(f"    margin to runner-up: {self.margin_log10:.1f} orders of magnitude")
        if self.alignment is not None:
            out.append(f"    {self.alignment.line()}")
        if self.note:
            out.append(f"    note: {self.note}")
        return out


def log10_half_tail(k: np.ndarray, n: int) -> np.ndarray:
    """log10 P(Binomial(n, 1/2) >= k), exact and finite far below 1e-308 (summed in log space where scipy underflows)."""
    k = np.asarray(k, dtype=np.int64)
    out = stats.binom.logsf(k - 1, n, 0.5)
    for i in np.flatnonzero(~np.isfinite(out)):
        j = np.arange(k[i], min(n, k[i] + 100_000) + 1)  # terms shrink geometrically this far above n/2
        logpmf = special.gammaln(n + 1) - special.gammaln(j + 1) - special.gammaln(n - j + 1) - n * math.log(2)
        out[i] = special.logsumexp(logpmf)
    return np.minimum(out, 0.0) / math.log(10)


def _mismatch(theirs: Mapping[str, torch.Tensor], base: nn.Module) -> str:
    """Why the suspect's parameters ``theirs`` cannot be compared with ``base``'s coded ones, or '' if they can."""
    for name, p in coded_parameters(base):
        if name not in theirs:
            return f"the suspect has no parameter {name!r} (another architecture than the base)"
        if tuple(theirs[name].shape) != tuple(p.shape):
            return (f"parameter {name!r} has shape {tuple(theirs[name].shape)} in the suspect and {tuple(p.shape)} "
                    "in the base (another architecture)")
    return ""


def _aligned(suspect: nn.Module, base: nn.Module) -> tuple[Mapping[str, torch.Tensor], AlignmentReport]:
    """The suspect's parameters aligned to the base, or as they are (``method`` ``none``) where alignment does not apply."""
    try:
        state, report = align_to_base(suspect, base)
    except NotAlignable as exc:
        return dict(suspect.named_parameters()), AlignmentReport("none", [], f"compared unaligned: {exc}")
    return state, report


def weight_trace(scheme: FingerprintScheme, customers: Sequence[str], suspect: nn.Module, base: nn.Module, *,
                 alpha: float, shown: int = 5, align: bool = True) -> WeightTrace:
    """Score every customer's weight code in ``suspect`` against ``base`` (the model the copies were made from).

    With ``align`` (the default) the suspect's hidden units are first aligned to the base's
    (:func:`~tracemark.fingerprint.align.align_to_base`); the result's ``alignment`` says what
    moved. ``align=False`` compares the suspect's parameters as they are.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not customers:
        raise ValueError("no customers to score")
    start = time.perf_counter()
    entries = _entries(base)
    if not isinstance(suspect, nn.Module):
        return WeightTrace(False, [], None, None, [], alpha, len(customers), entries, 0,
                           note="the suspect's weights are not available (not a torch model file)")
    theirs, alignment = _aligned(suspect, base) if align else (dict(suspect.named_parameters()), None)
    why = _mismatch(theirs, base)
    if why:
        return WeightTrace(False, [], None, None, [], alpha, len(customers), entries, 0, note=why, alignment=alignment)
    with torch.no_grad():
        suspect_w = torch.cat([theirs[name].detach().cpu().float().reshape(-1) for name, _ in coded_parameters(base)]).numpy()
        base_w = torch.cat([p.detach().cpu().float().reshape(-1) for _, p in coded_parameters(base)]).numpy()
    d = suspect_w - base_w
    changed = (d != 0) & (suspect_w != 0)  # unchanged or pruned entries say nothing; the mask depends on the suspect alone
    compared = int(changed.sum())
    positive = np.packbits(d > 0)
    mask = np.packbits(changed)  # zero in the padding bits of the last byte
    agreements = np.zeros(len(customers), dtype=np.int64)
    for lo in range(0, len(customers), CHUNK):
        bits = np.stack([_sign_bytes(scheme, c, entries) for c in customers[lo : lo + CHUNK]])
        agreements[lo : lo + CHUNK] = np.bitwise_count(~(bits ^ positive) & mask).sum(axis=1, dtype=np.int64)
    log10_p = log10_half_tail(agreements, compared) if compared else np.zeros(len(customers))
    adjusted = np.minimum(log10_p + math.log10(len(customers)), 0.0) + 0.0  # + 0.0: no "-0.0"
    scores = [WeightScore(c, int(k), compared, float(p), float(a)) for c, k, p, a in zip(customers, agreements, log10_p, adjusted)]
    ranked = sorted(scores, key=lambda s: (s.log10_p, s.customer))
    accused = [s.customer for s in ranked if s.log10_p_adjusted <= math.log10(alpha)]
    note = "" if compared else "the suspect's coded weights equal the base's (or are zero)"
    return WeightTrace(True, accused, ranked[0] if ranked else None, ranked[1] if len(ranked) > 1 else None,
                       ranked[:shown], alpha, len(customers), entries, compared, time.perf_counter() - start, note,
                       alignment)
