"""Deterministic, platform-independent randomness derived from a secret seed.

Trigger sets must be byte-identical in any process, on any machine and numpy version, so
instead of numpy's distribution code (which may change between releases) every random
stream here is SHAKE-256 of the seed and a purpose label, turned into numbers with plain
arithmetic.
"""

from __future__ import annotations

import hashlib

import numpy as np


def random_bytes(seed: bytes, purpose: str, n: int) -> bytes:
    """``n`` pseudo-random bytes determined by ``seed`` and ``purpose``."""
    return hashlib.shake_256(seed + b"\x00" + purpose.encode("utf-8")).digest(n)


def uniform(seed: bytes, purpose: str, size: int) -> np.ndarray:
    """``size`` floats in [0, 1), float64, from 53 random bits each."""
    raw = np.frombuffer(random_bytes(seed, purpose, 8 * size), dtype="<u8")
    return (raw >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def integers(seed: bytes, purpose: str, size: int, high: int) -> np.ndarray:
    """``size`` integers in [0, high), int64 (bias below 2**-40 for high < 2**24)."""
    return np.floor(uniform(seed, purpose, size) * high).astype(np.int64)


def normal(seed: bytes, purpose: str, size: int) -> np.ndarray:
    """``size`` standard normal floats (Box-Muller), float64."""
    half = (size + 1) // 2
    u = uniform(seed, purpose, 2 * half)
    u1 = 1.0 - u[:half]  # (0, 1]: log is finite
    u2 = u[half:]
    radius = np.sqrt(-2.0 * np.log(u1))
    out = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return out[:size]


def permutation(seed: bytes, purpose: str, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` (sort by random keys; ties are vanishingly unlikely)."""
    return np.argsort(uniform(seed, purpose, n), kind="stable")
