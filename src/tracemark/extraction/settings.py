"""Settings of the stealing monitor and marking defaults, importable without numpy or scipy (the server config and CLI use them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tracemark.extraction.errors import MonitorConfigError

DEFAULT_RATE = 0.005
"""Default fraction of a client's distinct inputs answered with a keyed wrong label (with a marking profile: the
average over in-distribution inputs). DAWN keeps it under 0.5%. At 0.5% a client's *drawn* marks are a Bernoulli
count that would often exceed 0.5% of its answers by chance; the per-client budget (:data:`DEFAULT_CAP`) withholds
marks from typical inputs so an honest in-distribution client's realised share stays at or under the cap, while an
in-domain thief at 5,000 answers still draws about 20 marks (about 15 at the earlier 0.3% without a budget)."""
DEFAULT_CAP = 0.005
"""Default per-client budget on realised marks: a client's marked inputs may not exceed ``cap × (inputs answered to
it)``. Only typical inputs are held back; inputs a marking profile calls unusual are marked whenever drawn and count
towards the total. The first ``1 / cap`` answers of a client (200 at the default) therefore get no typical marks."""


MAX_RATE = 0.5
"""Highest marking rate of any input."""
DEFAULT_UNUSUAL_SHARE = 0.02
"""Share of in-distribution inputs a marking profile's calibration calls unusual."""
DEFAULT_BOOST = 30.0
"""With a marking profile, unusual inputs are marked this many times as often as typical ones."""
DEFAULT_COMPONENTS = 50
"""Principal components of a marking profile's model of in-distribution inputs."""
DEFAULT_REGION_MARKS = True
"""With a marking profile (calibrated from now on), unusual inputs are marked by *region* — every unusual input of a marked
region (cell, model label) gets the same keyed wrong label — so a clone trained on labels alone learns the marks (see
:mod:`~tracemark.extraction.marking`). Measured on MNIST with 5,000 Fashion-MNIST queries (``bench/extraction.py --label-only``):
the label-only clone was named from its labels (p 3e-7), where per-input marks left it unnamed, at the same honest cost."""
CELL_GRID = 4
"""A region's cell: which of the ``CELL_GRID × CELL_GRID`` blocks of an input are brighter than the input's mean (2^16 cells;
a 3×3 grid gave fewer, larger regions and so fewer independent draws for the check)."""


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds of the stealing monitor (see the module docstring); ``None`` switches a signal off."""

    prada_delta: float | None = 0.90
    prada_min_queries: int = 200
    prada_window: int = 5000
    test_every: int = 100
    max_history: int = 2000
    volume: int | None = 10_000
    volume_window_s: float = 86_400.0
    coverage_tv: float | None = 0.5
    coverage_min_queries: int = 500
    prior: tuple[float, ...] | None = None
    throttle_rate: float | None = None
    throttle_burst: float = 100.0
    coalition_window_s: float | None = 600.0
    coalition_tv: float = 0.2
    coalition_ratio: float = 4.0
    coalition_min_queries: int = 200
    coalition_volume: int | None = 10_000

    def __post_init__(self) -> None:
        if self.prada_delta is not None and not 0.0 < self.prada_delta < 1.0:
            raise MonitorConfigError(f"prada_delta is a Shapiro-Wilk W threshold in (0, 1), not {self.prada_delta}")
        if min(self.prada_min_queries, self.test_every, self.max_history, self.coverage_min_queries) < 1:
            raise MonitorConfigError("query counts (min queries, test interval, history) must be >= 1")
        if not 3 <= self.prada_window <= 5000:
            raise MonitorConfigError("prada_window must be 3..5000 (Shapiro-Wilk's range)")
        if self.volume is not None and self.volume < 1 or self.volume_window_s <= 0:
            raise MonitorConfigError("volume must be >= 1 and volume_window_s > 0")
        if self.coverage_tv is not None and not 0.0 < self.coverage_tv < 1.0:
            raise MonitorConfigError(f"coverage_tv is a total-variation distance in (0, 1), not {self.coverage_tv}")
        if self.prior is not None and (min(self.prior) < 0 or abs(sum(self.prior) - 1.0) > 1e-6):
            raise MonitorConfigError("prior must be non-negative class frequencies summing to 1")
        if self.coalition_window_s is not None and self.coalition_window_s < 0 or not 0.0 < self.coalition_tv <= 1.0:
            raise MonitorConfigError("coalition_window_s must be >= 0 and coalition_tv a total-variation distance in (0, 1]")
        if self.coalition_min_queries < 1 or self.coalition_volume is not None and self.coalition_volume < 1 or self.coalition_ratio < 1:
            raise MonitorConfigError("coalition_min_queries, coalition_volume and coalition_ratio must be >= 1")
        if self.throttle_rate is not None and (self.throttle_rate <= 0 or self.throttle_burst < 1):
            raise MonitorConfigError("throttle_rate must be > 0 and throttle_burst >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MonitorSettings":
        prior = raw.get("prior")
        return cls(**{**raw, "prior": tuple(prior) if prior is not None else None})


__all__ = ["MonitorSettings", "DEFAULT_RATE", "DEFAULT_CAP", "MAX_RATE", "DEFAULT_BOOST", "DEFAULT_COMPONENTS", "DEFAULT_UNUSUAL_SHARE",
           "DEFAULT_REGION_MARKS", "CELL_GRID"]
