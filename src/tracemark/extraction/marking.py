"""Response marking (DAWN, Szyller et al. 2021): a keyed, input-determined wrong answer for a few queries.

For every client the server derives a secret from one master secret,
``HMAC-SHA256(master, "tracemark/response-marking/v1/" + client_id)``, so nothing per client is kept.
Each input is canonicalised (values quantised to a grid of ``step``, default 1/255, plus its shape)
and hashed with the client's secret. The first 8 bytes of that HMAC select the input with probability
``rate`` — the same for every input, or, with a marking profile (:mod:`~tracemark.extraction.profile`),
higher for inputs unlike the model's own data and lower for typical ones, averaging ``rate`` on those; the
next 8 bytes pick an offset ``o`` in ``[0, K-2]`` and the answer becomes ``(model_label + 1 + o) mod K`` —
never the model's own label, uniform over the others. The probability row is permuted (the model's top
entry swapped with the served label's) so the served label is its argmax. The same input from the same client always gets the same answer, so asking again reveals nothing.

**Region marks** (a profile with ``region_marks``, the default of new calibrations). A clone trained on labels alone
answers a marked input the way it answers the input's neighbours, so a lone wrong label on an out-of-domain input is
rarely reproduced (measured on MNIST: 18 of 69). With region marks, an *unusual* input is marked when its **region** —
its cell (:func:`cells`: which of the 4×4 blocks of the input are brighter than its mean, a public function of the
canonical input) and the model's label — is drawn at the unusual rate, and every unusual input of a drawn region gets
the same keyed wrong label (:func:`decide_region`). Neighbours then agree on the mark and the clone learns it.
Typical inputs keep per-input marks. The check groups marks into these units
(:mod:`~tracemark.extraction.clones`), so its null stays exact.

Why quantise: with the exact float bytes (as DAWN hashes), a client could add noise below the image's
8-bit resolution, ask several times and take a majority vote to undo the mark. On the grid, such copies
hash the same and get the same answer; noise at or above one grid step makes a genuinely different
input, which is marked (or not) afresh.

Only the marked inputs and their served answers are kept (:class:`~tracemark.extraction.store.ResponseStore`):
they are the evidence that a clone learned from this client's answers.

**Budget.** The keyed draw is a Bernoulli trial per input, so a client's drawn marks can exceed ``rate`` of its
answers by chance. A per-client ``cap`` (default :data:`~tracemark.extraction.settings.DEFAULT_CAP`) bounds the
realised marks: a *typical* input (every input without a profile; with one, those at the typical rate) whose draw
says "mark" is marked only while the client's marks, this one included, stay within ``cap ×`` the inputs answered
to it; otherwise it is *spared* — answered honestly, its key recorded, and answered honestly on every repeat.
Inputs the profile calls unusual are marked whenever drawn (and count towards the total), so out-of-domain
thieves keep their high marked share. The order for a drawn input is: key already marked → marked; key spared →
honest; else the budget decides, and the decision is recorded in the same write transaction
(:meth:`~tracemark.extraction.store.ResponseStore.settle`). Marking thus depends on the client's history, but
the answer to a repeated input never changes.

Each marker (one per server worker) counts the inputs it answered per client in memory and adds them to the
store's per-client counter only inside that transaction, i.e. only when a drawn mark needs a decision; requests
without one do not touch SQLite. Another worker's unadded answers make the counter lag, which only makes the
budget stricter. :meth:`ResponseMarker.close` adds what is left.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracemark._util.files import atomic_write_text
from tracemark.errors import TracemarkError
from tracemark.extraction.errors import MarkingSecretError, MarkingWriteError
from tracemark.extraction.profile import MarkingProfile
from tracemark.extraction.settings import CELL_GRID, DEFAULT_CAP, DEFAULT_RATE
from tracemark.extraction.store import Candidate, MarkedResponse, ResponseStore, check_rate
from tracemark.serve.clients import Client, utc_now
from tracemark.targets.base import Answers

DEFAULT_STEP = 1.0 / 255.0
"""Default canonicalisation grid: the resolution of an 8-bit image scaled to [0, 1]."""
ENV_SECRET = "TRACEMARK_MARKING_SECRET"
"""Environment variable that may hold the master secret (64 hex digits) instead of a file."""
SECRET_HEADER = "tracemark-marking-secret v1"
_CLIENT_CONTEXT = b"tracemark/response-marking/v1/"
_RATE_CACHE_S = 5.0


class MarkingSecret:
    """The server's response-marking master secret (32 random bytes); per-client secrets derive from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise MarkingSecretError(f"a marking secret is 32 bytes, not {len(secret)}")
        self._secret = bytes(secret)

    @classmethod
    def generate(cls) -> "MarkingSecret":
        """A fresh random secret."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_hex(cls, text: str) -> "MarkingSecret":
        try:
            return cls(bytes.fromhex(text.strip()))
        except ValueError as exc:
            raise MarkingSecretError("a marking secret is 64 hex digits") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the secret to ``path`` (owner-only, 0600, atomically)."""
        return atomic_write_text(path, f"{SECRET_HEADER}\n{self._secret.hex()}\n", mode=0o600)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "MarkingSecret":
        """Read a secret file; refuses one that group or others may read (like ssh does)."""
        file = Path(path)
        try:
            mode = file.stat().st_mode
            lines = file.read_text().split("\n")
        except OSError as exc:
            raise MarkingSecretError(f"cannot read marking secret {file}: {exc.strerror}; create one with "
                                     "`tracemark responses secret --out FILE`") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MarkingSecretError(f"{file} is readable by others (mode {stat.S_IMODE(mode):o}); run `chmod 600 {file}`")
        if len(lines) < 2 or lines[0] != SECRET_HEADER or any(line.strip() for line in lines[2:]):
            raise MarkingSecretError(f"{file} is not a tracemark marking secret file")
        return cls.from_hex(lines[1])

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None) -> "MarkingSecret":
        """The secret from ``path``, else from ``$TRACEMARK_MARKING_SECRET`` (hex)."""
        if path:
            return cls.load(path)
        text = os.environ.get(ENV_SECRET)
        if not text:
            raise MarkingSecretError(f"response marking needs a master secret: a file (--marking-secret FILE) or ${ENV_SECRET}")
        return cls.from_hex(text)

    def client_key(self, client_id: str) -> bytes:
        """The secret of one client, derived (never stored)."""
        return hmac.new(self._secret, _CLIENT_CONTEXT + client_id.encode("utf-8"), hashlib.sha256).digest()

    @property
    def fingerprint(self) -> str:
        """A public identifier of the secret (16 hex digits of a hash of it), safe to log and record."""
        return hashlib.sha256(b"tracemark-marking-secret-id\0" + self._secret).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"MarkingSecret({self.fingerprint})"


def canonical_bytes(x: np.ndarray, step: float = DEFAULT_STEP) -> bytes:
    """One input's canonical form: its shape, then its values rounded to multiples of ``step`` (int32, little-endian)."""
    grid = np.rint(np.asarray(x, dtype=np.float64) / step).astype("<i4")
    return ",".join(str(d) for d in grid.shape).encode() + b";" + grid.tobytes()


def input_key(x: np.ndarray, step: float = DEFAULT_STEP) -> str:
    """Hex SHA-256 of an input's canonical form: how the evidence store names an input (not secret)."""
    return hashlib.sha256(canonical_bytes(x, step)).hexdigest()


@dataclass(frozen=True)
class Decision:
    """What the marking rule says for one input: whether it is marked and the label offset it would get."""

    marked: bool
    offset: int


def decide(client_key: bytes, x: np.ndarray, rate: float, num_classes: int, step: float = DEFAULT_STEP) -> Decision:
    """The keyed marking decision for one input (see the module docstring)."""
    digest = hmac.new(client_key, canonical_bytes(x, step), hashlib.sha256).digest()
    draw = int.from_bytes(digest[:8], "big") / 2.0**64
    return Decision(draw < rate, int.from_bytes(digest[8:16], "big") % (num_classes - 1))


def cells(x: np.ndarray, step: float = DEFAULT_STEP, grid: int = CELL_GRID) -> np.ndarray:
    """Each input's cell, a public function of its canonical form: bit ``j`` says whether block ``j`` of a ``grid × grid``
    split of its last two axes (leading axes summed; inputs with fewer than ``grid`` rows, 1-D ones included, are split
    into ``grid²`` column bands) sums above its share of the input's total. Exact integer arithmetic on the grid. An
    input of fewer than ``grid²`` values has no coarse cell: its cell is 62 bits of its :func:`input_key` (its own)."""
    q = np.rint(np.asarray(x, dtype=np.float64) / step).astype(np.int64)
    n = len(q)
    if n and q[0].size < grid * grid:
        return np.array([int(input_key(row, step)[:16], 16) >> 2 for row in np.asarray(x)], dtype=np.int64)
    flat = q.reshape(n, 1, -1) if q.ndim == 2 else q.reshape(n, -1, q.shape[-2], q.shape[-1]).sum(axis=1)
    h, w = flat.shape[1:]
    row_bands, col_bands = (grid, grid) if h >= grid else (1, grid * grid)
    rows = [(i * h) // row_bands for i in range(row_bands + 1)]
    cols = [(j * w) // col_bands for j in range(col_bands + 1)]
    total = flat.reshape(n, -1).sum(axis=1)
    bits = np.zeros(n, dtype=np.int64)
    for i in range(row_bands):
        for j in range(col_bands):
            block = flat[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            above = block.reshape(n, -1).sum(axis=1) * (h * w) > total * block.shape[1] * block.shape[2]
            bits |= above.astype(np.int64) << (i * col_bands + j)
    return bits


def decide_region(client_key: bytes, cell: int, label: int, rate: float, num_classes: int) -> Decision:
    """The keyed marking decision for a region (cell, model label): every input of a drawn region gets the same offset."""
    digest = hmac.new(client_key, f"region;{int(cell)};{int(label)}".encode(), hashlib.sha256).digest()
    draw = int.from_bytes(digest[:8], "big") / 2.0**64
    return Decision(draw < rate, int.from_bytes(digest[8:16], "big") % (num_classes - 1))


def marked_answer(label: int, probabilities: np.ndarray, offset: int) -> tuple[int, np.ndarray]:
    """The wrong label for ``offset`` and the probability row with the model's and that label's entries swapped."""
    k = len(probabilities)
    wrong = (int(label) + 1 + offset) % k
    row = np.array(probabilities, dtype=np.float64, copy=True)
    row[[label, wrong]] = row[[wrong, label]]
    return wrong, row


class ResponseMarker:
    """An :class:`~tracemark.serve.hooks.AnswerHook` that marks answers per client and keeps the evidence.

    ``rate`` is the default marked fraction; a client's own rate (``ResponseStore.set_rate``) overrides
    it and is re-read every few seconds, so running servers pick up changes. With a ``profile`` the rate is
    split between unusual and typical inputs (its average over in-distribution inputs stays ``rate``).
    ``cap`` is the per-client budget on realised marks (see the module docstring); ``None``: no budget.
    """

    def __init__(self, secret: MarkingSecret, store: ResponseStore, rate: float = DEFAULT_RATE, step: float = DEFAULT_STEP,
                 profile: MarkingProfile | None = None, cap: float | None = DEFAULT_CAP) -> None:
        self.secret, self.store, self.rate, self.step = secret, store, check_rate(rate), float(step)
        self.profile = profile
        self.cap = None if cap is None else check_rate(cap)
        self._keys: dict[str, bytes] = {}
        self._rates: dict[str, tuple[float, float]] = {}
        self._pending: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def client_rate(self, client: Client) -> float:
        """The marked fraction for this client (its own, else the default)."""
        now = time.monotonic()
        with self._lock:
            cached = self._rates.get(client.id)
        if cached is not None and now - cached[1] < _RATE_CACHE_S:
            return cached[0]
        own = self.store.rate(client.id)
        rate = self.rate if own is None else own
        with self._lock:
            self._rates[client.id] = (rate, now)
        return rate

    def _key(self, client: Client) -> bytes:
        key = self._keys.get(client.id)
        if key is None:
            key = self._keys[client.id] = self.secret.client_key(client.id)
        return key

    def _count(self, client: Client, n: int) -> None:
        """Count ``n`` answered inputs locally (added to the store with the next budget decision or on close)."""
        self._add_pending({client.id: (client.name, n)})

    def _add_pending(self, counts: dict[str, tuple[str, int]]) -> None:
        with self._lock:
            for cid, (name, n) in counts.items():
                self._pending[cid] = (name, self._pending.get(cid, ("", 0))[1] + n)

    def __call__(self, client: Client, inputs: np.ndarray, answers: Answers) -> Answers:
        rate = self.client_rate(client)
        if rate <= 0.0 or answers.probabilities is None:
            self._count(client, len(inputs))
            return answers
        probs = np.asarray(answers.probabilities, dtype=np.float64)
        labels = np.asarray(answers.labels, dtype=np.int64)
        key, k = self._key(client), probs.shape[1]
        if self.profile is not None:
            rates, typical = self.profile.rates(inputs, rate, self.step), self.profile.typical_rate(rate)
        else:
            rates, typical = np.full(len(inputs), rate), rate
        regions = cells(inputs, self.step) if self.profile is not None and self.profile.region_marks else None
        drawn: list[tuple[int, Candidate]] = []
        for i, x in enumerate(inputs):
            if regions is not None and rates[i] > typical:
                decision = decide_region(key, int(regions[i]), int(labels[i]), float(rates[i]), k)
            else:
                decision = decide(key, x, float(rates[i]), k, self.step)
            if not decision.marked:
                continue
            model_label = int(labels[i])
            wrong, row = marked_answer(model_label, probs[i], decision.offset)
            response = MarkedResponse(input_key(x, self.step), np.asarray(x, dtype=np.float32), model_label, wrong, row)
            drawn.append((i, Candidate(response, bool(rates[i] > typical), len(inputs) - 1 - i)))
        if not drawn:
            self._count(client, len(inputs))
            return answers
        with self._lock:
            earlier = self._pending.pop(client.id, ("", 0))[1]
        try:
            served = self.store.settle(client, earlier + len(inputs), [c for _, c in drawn], self.cap, utc_now())
        except (sqlite3.Error, OSError, TracemarkError) as exc:  # the answer must not go out without its evidence
            self._count(client, earlier)  # this request is refused: only the earlier answers stay counted
            raise MarkingWriteError(f"the marked-response store cannot record this answer ({exc}); it was not answered") from exc
        marked = [(i, c.response) for (i, c), mark in zip(drawn, served) if mark]
        if not marked:
            return answers
        labels, probs = labels.copy(), probs.copy()
        for i, response in marked:
            labels[i], probs[i] = response.served_label, response.probabilities
        return Answers(labels, probs)

    def flush(self) -> None:
        """Add the locally counted answered inputs of every client to the store (one transaction)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            self.store.add_answered(pending)
        except BaseException:
            self._add_pending(pending)  # counted again with the next flush
            raise

    def close(self) -> None:
        """Flush the answered counts (call when the server worker stops)."""
        self.flush()


__all__ = [
    "DEFAULT_STEP",
    "ENV_SECRET",
    "Decision",
    "MarkingSecret",
    "ResponseMarker",
    "canonical_bytes",
    "cells",
    "decide",
    "decide_region",
    "input_key",
    "marked_answer",
]
