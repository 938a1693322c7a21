"""Per-customer codes: one shared set of query triggers, a secret class map per customer.

The master watermark key (a ``content`` key) is the only secret. From it come ``D`` secret
drawings (drawing 0 is the key's own). Stamping drawing ``d`` on an image of class ``c`` forms
the *cell* ``(d, c)``; each customer has a secret label for every cell, drawn uniformly from the
``K - 1`` classes other than ``c`` with randomness from ``HMAC-SHA256(key seed, customer id)``.
A customer's copy is trained on the rule "drawing d on class c -> that customer's label".

The query set holds one trigger per cell (the key's own source images), so a model that never
saw a customer's code matches each query with probability exactly ``1/(K-1)`` whenever it does
not answer the image's own class, independently across queries: the null of tracing is exact.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

from tracemark._util import rng
from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark.fingerprint.errors import CustomersFileError, FingerprintError
from tracemark.keys.drawing import generate_drawing
from tracemark.keys.key import WatermarkKey
from tracemark.keys.kinds import stamp

SECRET_DOMAIN = b"tracemark-fingerprint/v1/customer\n"
DRAWING_DOMAIN = b"tracemark-fingerprint/v1/drawing\n"
COMMITMENT_DOMAIN = b"tracemark-fingerprint-code/v1\n"
DEFAULT_QUERIES = 100


@dataclass(frozen=True)
class QuerySet:
    """The tracing queries: one stamped image per cell, its true class and its drawing."""

    inputs: np.ndarray
    true_labels: np.ndarray
    drawing_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.true_labels)


@dataclass(frozen=True, eq=False)
class FingerprintScheme:
    """Customer codes derived from a master ``content`` key with ``n_drawings`` drawings.

    ``n_drawings`` defaults to enough cells for :data:`DEFAULT_QUERIES` queries
    (``ceil(100 / K)``: 10 for 10 classes).
    """

    key: WatermarkKey
    n_drawings: int

    @classmethod
    def from_key(cls, key: WatermarkKey, n_drawings: int | None = None) -> "FingerprintScheme":
        """Check that ``key`` can carry customer codes and build the scheme."""
        if key.kind != "content" or key.drawing is None or key.base_labels is None or key.base_images is None:
            raise FingerprintError(f"customer codes need a content key (secret drawing on real images); this key is {key.kind!r}")
        if key.num_classes < 3:
            raise FingerprintError("customer codes need at least 3 classes (a label other than the true one to choose)")
        missing = sorted(set(range(key.num_classes)) - set(int(c) for c in key.base_labels))
        if missing:
            raise FingerprintError(f"the key's source images include no image of class(es) {missing}; "
                                   "make the key with every class as a source (the default) and more triggers")
        d = n_drawings if n_drawings is not None else -(-DEFAULT_QUERIES // key.num_classes)
        if not 1 <= d <= 255:
            raise FingerprintError("n_drawings must be between 1 and 255")
        return cls(key, int(d))

    # ------------------------------------------------------------------ public facts
    @property
    def num_classes(self) -> int:
        return self.key.num_classes

    @property
    def n_cells(self) -> int:
        """Number of (drawing, class) cells, which is also the number of tracing queries."""
        return self.n_drawings * self.num_classes

    @property
    def null_rate(self) -> float:
        """Chance that a model without a customer's code gives that customer's label to a query
        it does not answer with the image's own class."""
        return 1.0 / (self.num_classes - 1)

    def describe(self) -> dict:
        """Public facts (no secrets) that pin the scheme down: stored in the registry."""
        return {"key_commitment": self.key.commitment(), "n_drawings": self.n_drawings,
                "num_classes": self.num_classes, "input_shape": list(self.key.input_shape)}

    # ------------------------------------------------------------------ drawings and stamping
    @cached_property
    def drawings(self) -> np.ndarray:
        """The ``D`` secret drawings (uint8 ink masks), all different; drawing 0 is the key's own."""
        assert self.key.drawing is not None
        size = self.key.drawing.shape[0]
        out = [self.key.drawing]
        seen = {self.key.drawing.tobytes()}
        for d in range(1, self.n_drawings):
            for attempt in range(1000):
                label = str(d) if attempt == 0 else f"{d}/{attempt}"
                drawing = generate_drawing(hmac.new(self.key.seed, DRAWING_DOMAIN + label.encode(), hashlib.sha256).digest(), size)
                if drawing.tobytes() not in seen:
                    break
            else:
                raise FingerprintError(f"cannot make {self.n_drawings} different {size}x{size} drawings; use fewer drawings")
            seen.add(drawing.tobytes())
            out.append(drawing)
        return np.stack(out)

    def stamp(self, images: np.ndarray, drawing_ids: np.ndarray) -> np.ndarray:
        """``images`` (float, N×C×H×W in [0, 1]) with drawing ``drawing_ids[i]`` stamped on image ``i`` (float32)."""
        params = self.key.params
        out = np.empty(images.shape, dtype=np.float32)
        base = np.asarray(images, dtype=np.float64)
        for d in np.unique(drawing_ids):
            rows = np.flatnonzero(drawing_ids == d)
            out[rows] = stamp(base[rows], self.drawings[int(d)], int(params["row"]), int(params["col"]), float(params["opacity"]))
        return out

    @cached_property
    def queries(self) -> QuerySet:
        """One trigger per cell, drawing-major: cell ``(d, c)`` is the ``d``-th (cyclically) source image of class ``c``."""
        assert self.key.base_images is not None and self.key.base_labels is not None
        base = self.key.base_images.astype(np.float64) / 255.0
        labels = np.asarray(self.key.base_labels, dtype=np.int64)
        drawing_ids, true, picks = [], [], []
        by_class = [np.flatnonzero(labels == c) for c in range(self.num_classes)]
        for d in range(self.n_drawings):
            for c in range(self.num_classes):
                picks.append(by_class[c][d % len(by_class[c])])
                drawing_ids.append(d)
                true.append(c)
        ids = np.asarray(drawing_ids, dtype=np.int64)
        return QuerySet(self.stamp(base[picks], ids), np.asarray(true, dtype=np.int64), ids)

    # ------------------------------------------------------------------ codes
    def customer_secret(self, customer_id: str) -> bytes:
        """The customer's 32-byte code secret: HMAC-SHA256 of the id under the key's seed."""
        return hmac.new(self.key.seed, SECRET_DOMAIN + check_customer_id(customer_id).encode("utf-8"), hashlib.sha256).digest()

    def class_map(self, customer_id: str) -> np.ndarray:
        """The customer's label for every cell: int64 array ``[drawing, class]`` (never the class itself)."""
        k = self.num_classes
        offsets = 1 + rng.integers(self.customer_secret(customer_id), "fingerprint/class-map", self.n_cells, k - 1)
        return (np.arange(k)[None, :] + offsets.reshape(self.n_drawings, k)) % k

    def label_matrix(self, customer_ids: Sequence[str], drawing_ids: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
        """Each customer's label for each (drawing, true class) pair: ``len(customer_ids)`` × ``len(drawing_ids)``."""
        maps = np.stack([self.class_map(c) for c in customer_ids]) if customer_ids else np.zeros((0, self.n_drawings, self.num_classes), np.int64)
        return maps[:, drawing_ids, true_labels]

    def code_commitment(self, customer_id: str) -> str:
        """Public commitment to one customer's code (hides the secret; binds key, scheme and id)."""
        body = {"key_commitment": self.key.commitment(), "n_drawings": self.n_drawings, "customer": customer_id,
                "secret": self.customer_secret(customer_id).hex()}
        return sha256_hex(COMMITMENT_DOMAIN + canonical_json(body))


def check_customer_id(customer_id: str) -> str:
    """Return ``customer_id`` if usable as a customer id (and a file name), else raise."""
    ok = isinstance(customer_id, str) and 0 < len(customer_id) <= 128 and customer_id.strip() == customer_id
    if not ok or customer_id.startswith(".") or any(ch in customer_id for ch in "/\\\x00\n\r\t"):
        raise CustomersFileError(f"invalid customer id {customer_id!r}: 1-128 characters, no slashes, control "
                                 "characters, leading dot or surrounding spaces")
    return customer_id


def unique_ids(ids: Iterable[str]) -> list[str]:
    """The ids in order after checking each; raises on a repeat."""
    seen: set[str] = set()
    out: list[str] = []
    for cid in ids:
        if check_customer_id(cid) in seen:
            raise CustomersFileError(f"customer id {cid!r} appears twice")
        seen.add(cid)
        out.append(cid)
    return out
