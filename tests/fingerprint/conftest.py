"""Fixtures: a fingerprint scheme over the session's digits key, and three customer copies of the session's base."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from torch import nn

from tracemark.fingerprint import FingerprintScheme, TrainSettings, feature_cache, mark_customer

CUSTOMERS = ["acme", "globex", "initech", "umbrella", "hooli"]
MARKED = CUSTOMERS[:3]
# the 8×8 digits model's body tells 3×3 drawings apart poorly: its head learns about half of
# the cells, which is still ample evidence (about 50 matches where chance gives 6)
DIGITS_SETTINGS = TrainSettings(lr=3e-3, max_steps=3000, target_code_accuracy=0.45, max_clean_drop=0.02)


@dataclass
class Fingerprinted:
    scheme: FingerprintScheme
    base: nn.Module
    copies: dict[str, nn.Module]


@pytest.fixture(scope="session")
def fingerprinted(models) -> Fingerprinted:
    scheme = FingerprintScheme.from_key(models.key)
    cache = feature_cache(models.base, scheme, models.data, DIGITS_SETTINGS)
    copies = {c: mark_customer(models.base, scheme, c, models.data, settings=DIGITS_SETTINGS, cache=cache)[0]
              for c in MARKED}
    return Fingerprinted(scheme, models.base, copies)
