"""The lineage fingerprint: behaviour that models derived from ours inherit and independent models do not.

Conferrable adversarial examples (Lukas, Zhang, Kerschbaum, ICLR 2021) generated against a cached pool of
surrogates and independent references (:mod:`~tracemark.lineage.pool`), calibrated on held-out independent
references (:mod:`~tracemark.lineage.calibrate`), written as a committed file
(:mod:`~tracemark.lineage.fileformat`), recorded in the ledger (:mod:`~tracemark.lineage.commit`) and tested
as one kind of evidence (:class:`~tracemark.lineage.evidence.LineageEvidence`). See docs/guide/lineage.md.
"""

from tracemark.lineage.build import LineageBuild, create_lineage
from tracemark.lineage.calibrate import Calibration, calibrate
from tracemark.lineage.commit import committed, record
from tracemark.lineage.errors import LineageError, LineageFileError, PoolError
from tracemark.lineage.evidence import LineageEvidence
from tracemark.lineage.fileformat import Lineage, read_lineage
from tracemark.lineage.generate import GenerationSettings, Generated, generate
from tracemark.lineage.pool import MemberSpec, Pool, PoolPlan, build_pool, default_plan

__all__ = [
    "Calibration",
    "GenerationSettings",
    "Generated",
    "Lineage",
    "LineageBuild",
    "LineageError",
    "LineageEvidence",
    "LineageFileError",
    "MemberSpec",
    "Pool",
    "PoolError",
    "PoolPlan",
    "build_pool",
    "calibrate",
    "committed",
    "create_lineage",
    "default_plan",
    "generate",
    "read_lineage",
    "record",
]
