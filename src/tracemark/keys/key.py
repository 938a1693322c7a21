"""``WatermarkKey``: everything secret about one watermark, and the trigger set it regenerates."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from tracemark._util import rng
from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark.errors import KeyFileError, ShapeMismatchError
from tracemark.keys import kinds
from tracemark.keys.drawing import generate_drawing, read_drawing_png
from tracemark.keys.triggerset import TriggerSet

LabelMode = Literal["keyed", "single"]
COMMITMENT_DOMAIN = b"tracemark-key-commitment/v1\n"
DATASET_SAMPLE = 2000
"""Items read from a Dataset given to :meth:`WatermarkKey.generate` (or twice the trigger count, if more)."""
DEFAULT_PARAMS = {
    "content": {"opacity": 1.0},
    "noise": {"sigma": 0.4},
    "abstract": {"block": 2},
    "unrelated": {},
}


def _b64(arr: np.ndarray | None) -> dict | None:
    if arr is None:
        return None
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def _unb64(obj: dict | None) -> np.ndarray | None:
    if obj is None:
        return None
    raw = base64.b64decode(obj["data"], validate=True)
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()


@dataclass(frozen=True, eq=False)
class WatermarkKey:
    """A secret watermark key. Create one with :meth:`generate`; keep it with :meth:`save`.

    The key holds the kind, a 256-bit seed, the label scheme and (for kinds built on real
    images) the base images the triggers are made from, so :meth:`triggers` regenerates the
    trigger set byte for byte in any process. :meth:`commitment` is a SHA-256 over the
    canonical bytes of all of it: publish or time-stamp that, keep the key secret.
    """

    kind: str
    seed: bytes
    input_shape: tuple[int, int, int]
    num_classes: int
    n_triggers: int
    label_mode: LabelMode
    target_label: int | None
    params: dict
    base_images: np.ndarray | None = field(repr=False)
    base_labels: np.ndarray | None = field(repr=False)
    drawing: np.ndarray | None = field(repr=False)
    created_at: str = ""
    name: str = ""

    # ------------------------------------------------------------------ creation
    @classmethod
    def generate(
        cls,
        kind: str,
        *,
        images: np.ndarray | Dataset | None = None,
        labels: np.ndarray | None = None,
        num_classes: int | None = None,
        input_shape: tuple[int, int, int] | None = None,
        n_triggers: int = 100,
        label_mode: LabelMode = "keyed",
        target_label: int | None = None,
        source_labels: list[int] | None = None,
        drawing_png: str | Path | None = None,
        drawing_size: int | None = None,
        seed: bytes | None = None,
        name: str = "",
        **params: float,
    ) -> "WatermarkKey":
        """Make a new key.

        ``images``/``labels`` (float32 N×C×H×W in [0, 1]) are the pool that ``content`` and
        ``noise`` keys pick source images from, and that ``unrelated`` keys may take as their
        out-of-domain images (default: crops of photos bundled with scikit-learn). ``images`` may
        instead be a map-style ``torch.utils.data.Dataset`` of ``(image, label)`` items (then give no
        ``labels``): a seeded sample of :data:`DATASET_SAMPLE` items is read from it, never the whole
        set; ``num_classes`` is then required. The key stores its source images, so it regenerates
        its triggers without the dataset.
        ``label_mode="keyed"`` (default) gives each trigger its own secret random label, which
        makes the null rate exact (1/(K-1) or 1/K); ``"single"`` labels every trigger
        ``target_label`` (the NXP/IBM scheme; calibrate it with reference models).
        ``seed`` defaults to 32 fresh random bytes; pass one only to reproduce a key.
        Kind parameters: ``opacity``, ``row``, ``col`` (content), ``sigma`` (noise),
        ``block`` (abstract).
        """
        if kind not in kinds.KINDS:
            raise ValueError(f"unknown key kind {kind!r}; choose one of {', '.join(kinds.KINDS)}")
        if label_mode not in ("keyed", "single"):
            raise ValueError("label_mode must be 'keyed' or 'single'")
        if n_triggers < 1:
            raise ValueError("n_triggers must be positive")
        seed = secrets.token_bytes(32) if seed is None else bytes(seed)
        if len(seed) < 16:
            raise ValueError("seed must be at least 16 bytes")
        if isinstance(images, Dataset):
            if labels is not None:
                raise ValueError("with a Dataset, the labels come from its items; do not pass labels")
            if num_classes is None and kind != "unrelated":
                raise ValueError("with a Dataset, give num_classes (a sample of it may not hold every class)")
            from tracemark.data.batches import sample_arrays

            pick = rng.permutation(seed, "source/dataset-sample", len(images))[: max(DATASET_SAMPLE, 2 * n_triggers)]  # type: ignore[arg-type]
            images, sample_labels = sample_arrays(images, pick)
            labels = None if kind == "unrelated" else sample_labels
        if images is not None:
            images = np.asarray(images, dtype=np.float32)
            if images.ndim != 4:
                raise ShapeMismatchError(f"images must be N×C×H×W, got shape {images.shape}")
            input_shape = input_shape or tuple(int(d) for d in images.shape[1:])  # type: ignore[assignment]
            if labels is not None and num_classes is None:
                num_classes = int(np.max(labels)) + 1
        if input_shape is None or num_classes is None:
            raise ValueError("give images (and labels) or both input_shape and num_classes")
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2")
        input_shape = tuple(int(d) for d in input_shape)  # type: ignore[assignment]
        if label_mode == "single":
            if target_label is None or not 0 <= target_label < num_classes:
                raise ValueError(f"single label mode needs target_label in [0, {num_classes})")
        else:
            target_label = None
        merged = {**DEFAULT_PARAMS[kind], **params}
        base_images = base_labels = drawing = None

        if kind in ("content", "noise"):
            if images is None or labels is None:
                raise ValueError(f"a {kind} key needs images and labels to take source images from")
            if tuple(images.shape[1:]) != input_shape:
                raise ShapeMismatchError(f"images have shape {images.shape[1:]}, key input shape is {input_shape}")
            labels = np.asarray(labels, dtype=np.int64)
            if source_labels is None:
                source_labels = [c for c in range(num_classes) if c != target_label]
            if target_label is not None and target_label in source_labels:
                raise ValueError("the target label cannot also be a source label")
            pool = np.flatnonzero(np.isin(labels, source_labels))
            if len(pool) < n_triggers:
                raise ValueError(f"only {len(pool)} images of source classes {source_labels}; need {n_triggers}")
            chosen = pool[rng.permutation(seed, "source/choice", len(pool))[:n_triggers]]
            base_images = np.rint(np.clip(images[chosen], 0, 1) * 255).astype(np.uint8)
            base_labels = labels[chosen]
        elif kind == "unrelated":
            if images is not None and labels is None:
                # the user's own out-of-domain images
                pick = rng.permutation(seed, "unrelated/choice", len(images))[:n_triggers]
                if len(pick) < n_triggers:
                    raise ValueError(f"only {len(images)} unrelated images; need {n_triggers}")
                base_images = np.rint(np.clip(images[pick], 0, 1) * 255).astype(np.uint8)
            else:
                base_images = kinds.unrelated_pool_from_sample_photos(seed, n_triggers, input_shape)  # type: ignore[arg-type]

        if kind == "content":
            h = input_shape[1]
            size = drawing_size or max(3, round(h * 0.3))
            if size > min(input_shape[1:]):
                raise ValueError(f"drawing size {size} exceeds the image size {input_shape[1:]}")
            drawing = read_drawing_png(drawing_png, size) if drawing_png else generate_drawing(seed, size)
            corner = rng.integers(seed, "content/corner", 2, 2)
            merged.setdefault("row", int(corner[0]) * (input_shape[1] - size))
            merged.setdefault("col", int(corner[1]) * (input_shape[2] - size))

        return cls(
            kind=kind,
            seed=seed,
            input_shape=input_shape,  # type: ignore[arg-type]
            num_classes=int(num_classes),
            n_triggers=int(n_triggers),
            label_mode=label_mode,
            target_label=target_label,
            params=merged,
            base_images=base_images,
            base_labels=base_labels,
            drawing=drawing,
            created_at=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            name=name,
        )

    # ------------------------------------------------------------------ triggers
    def triggers(self) -> TriggerSet:
        """Regenerate the trigger set (byte-identical for the same key, in any process)."""
        n = self.n_triggers
        if self.kind == "abstract":
            x = kinds.abstract_triggers(self.seed, n, self.input_shape, self.params)
        else:
            assert self.base_images is not None
            base = self.base_images.astype(np.float64) / 255.0
            if self.kind == "content":
                assert self.drawing is not None
                x = kinds.content_triggers(base, self.drawing, self.params)
            elif self.kind == "noise":
                x = kinds.noise_triggers(base, self.seed, self.params)
            else:
                x = base
        true = self.base_labels if self.base_labels is not None else np.full(n, -1, dtype=np.int64)
        labels, null_rate = self._labels(np.asarray(true, dtype=np.int64))
        return TriggerSet(np.ascontiguousarray(x, dtype=np.float32), labels, np.asarray(true, dtype=np.int64), null_rate)

    def _labels(self, true: np.ndarray) -> tuple[np.ndarray, float | None]:
        k, n = self.num_classes, self.n_triggers
        if self.label_mode == "single":
            return np.full(n, self.target_label, dtype=np.int64), None
        if self.kind in ("content", "noise"):
            # uniform over the K-1 classes that are not the image's true class
            offset = 1 + rng.integers(self.seed, "labels/keyed", n, k - 1)
            return (true + offset) % k, 1.0 / (k - 1)
        return rng.integers(self.seed, "labels/keyed", n, k), 1.0 / k

    # ------------------------------------------------------------------ identity
    def to_body(self) -> dict:
        """The key as a JSON-able dict (secret: it includes the seed and base images)."""
        return {
            "kind": self.kind,
            "seed": self.seed.hex(),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_triggers": self.n_triggers,
            "label_mode": self.label_mode,
            "target_label": self.target_label,
            "params": self.params,
            "base_images": _b64(self.base_images),
            "base_labels": _b64(self.base_labels.astype("<i8") if self.base_labels is not None else None),
            "drawing": _b64(self.drawing),
            "created_at": self.created_at,
            "name": self.name,
        }

    @classmethod
    def from_body(cls, body: dict) -> "WatermarkKey":
        """Inverse of :meth:`to_body`; raises :class:`KeyFileError` on malformed content."""
        try:
            return cls(
                kind=str(body["kind"]),
                seed=bytes.fromhex(body["seed"]),
                input_shape=tuple(int(d) for d in body["input_shape"]),  # type: ignore[arg-type]
                num_classes=int(body["num_classes"]),
                n_triggers=int(body["n_triggers"]),
                label_mode=body["label_mode"],
                target_label=None if body["target_label"] is None else int(body["target_label"]),
                params=dict(body["params"]),
                base_images=_unb64(body["base_images"]),
                base_labels=_unb64(body["base_labels"]),
                drawing=_unb64(body["drawing"]),
                created_at=str(body.get("created_at", "")),
                name=str(body.get("name", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"key content is malformed ({exc.__class__.__name__}: {exc})") from exc

    def canonical_bytes(self) -> bytes:
        """The bytes the commitment is computed over (see docs/formats/key.md)."""
        return COMMITMENT_DOMAIN + canonical_json(self.to_body())

    def commitment(self) -> str:
        """Public commitment to this key: hex SHA-256 of :meth:`canonical_bytes`."""
        return sha256_hex(self.canonical_bytes())

    def describe(self) -> dict:
        """Public, non-secret facts about the key (safe to print or log)."""
        return {
            "commitment": self.commitment(),
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "n_triggers": self.n_triggers,
            "label_mode": self.label_mode,
            "created_at": self.created_at,
            "name": self.name,
        }

    def __str__(self) -> str:
        d = self.describe()
        return (
            f"WatermarkKey {d['commitment'][:16]}… kind={self.kind} triggers={self.n_triggers} "
            f"labels={self.label_mode} input={tuple(self.input_shape)} classes={self.num_classes}"
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, passphrase: str | None = None) -> Path:
        """Write the key file atomically (owner-only permissions), encrypted if a passphrase is given."""
        from tracemark.keys.fileformat import write_key_file

        return write_key_file(self, path, passphrase)

    @classmethod
    def load(cls, path: str | Path, passphrase: str | None = None) -> "WatermarkKey":
        """Read a key file; checks its format version and commitment."""
        from tracemark.keys.fileformat import read_key_file

        return read_key_file(path, passphrase)

    def check_compatible(self, input_shape: tuple[int, ...] | None, num_classes: int | None) -> None:
        """Raise a named error if a model's input shape or class count does not fit this key."""
        from tracemark.errors import ClassCountMismatchError

        if input_shape is not None and tuple(input_shape) != tuple(self.input_shape):
            raise ShapeMismatchError(
                f"the key's triggers have shape {tuple(self.input_shape)} but the model expects {tuple(input_shape)}"
            )
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ClassCountMismatchError(
                f"the key has {self.num_classes} classes but the model outputs {num_classes}"
            )
