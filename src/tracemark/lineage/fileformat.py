"""The lineage file (``MARKED.lineage``): one safetensors file, no pickles (docs/formats/lineage.md).

Two tensors, ``inputs`` (uint8, N×C×H×W; an input is value/255) and ``labels`` (int64, N: the expected
answers), and one metadata entry ``tracemark-lineage`` holding canonical JSON: format, version, the
commitment digest, the class count, the calibration record, the generation's settings and figures, and the
pool manifest (every member's seed, architecture, split and optimiser, and the disjoint generation and
calibration key sets). The commitment is SHA-256 over :func:`commitment_bytes`; reading recomputes it.

A lineage file may be handed around, so reading is bounded before anything is parsed: the file size, the
header size, the tensor names, dtypes and shapes (at most :data:`MAX_INPUTS` inputs, each at most
4×512×512), the labels' range, and every calibration field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import FormatVersionError, TamperedError
from tracemark.ledger.entries import parse_json
from tracemark.lineage.calibrate import Calibration
from tracemark.lineage.errors import LineageFileError

FORMAT = "tracemark-lineage"
VERSION = 2
READS = (1, 2)
"""Version 2 adds the calibration ``rule`` (version 1 records are ``fit-checked``) and the generation filters."""
METADATA_KEY = "tracemark-lineage"
COMMITMENT_DOMAIN = b"tracemark-lineage-commitment/v1\n"
MAX_INPUTS = 300
"""At most this many inputs, so verification asks a suspect at most 300 queries."""
MAX_CHANNELS, MAX_SIDE, MAX_CLASSES = 4, 512, 100_000
MAX_HEADER_BYTES = 8 << 20
MAX_FILE_BYTES = 8 + MAX_HEADER_BYTES + MAX_INPUTS * (MAX_CHANNELS * MAX_SIDE * MAX_SIDE + 8)


def commitment_bytes(inputs: np.ndarray, labels: np.ndarray, num_classes: int) -> bytes:
    """What the commitment hashes: the domain line, canonical JSON of the shape and class count and a newline,
    the inputs' uint8 bytes (C order), the labels as little-endian int64."""
    head = canonical_json({"shape": [int(d) for d in inputs.shape], "num_classes": int(num_classes)})
    return (COMMITMENT_DOMAIN + head + b"\n" + np.ascontiguousarray(inputs, dtype=np.uint8).tobytes()
            + np.ascontiguousarray(labels, dtype="<i8").tobytes())


@dataclass(frozen=True)
class Lineage:
    """A committed behavioural fingerprint: inputs, the labels a derived model gives them, and their calibration."""

    inputs: np.ndarray
    labels: np.ndarray
    num_classes: int
    calibration: Calibration
    generation: dict[str, Any]
    pool: dict[str, Any]
    source_sha256: str
    created: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.inputs.shape[1:])  # type: ignore[return-value]

    def commitment(self) -> str:
        """Hex SHA-256 of :func:`commitment_bytes`."""
        return sha256_hex(commitment_bytes(self.inputs, self.labels, self.num_classes))

    def images(self) -> np.ndarray:
        """The inputs as float32 in [0, 1], as a suspect is asked them."""
        return self.inputs.astype(np.float32) / np.float32(255)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays."""
        return {"format": FORMAT, "version": VERSION, "commitment": self.commitment(), "n_inputs": int(len(self.labels)),
                "input_shape": list(self.input_shape), "num_classes": self.num_classes, "source_sha256": self.source_sha256,
                "created": self.created, "calibration": self.calibration.to_dict(), "generation": self.generation,
                "pool": self.pool}

    def __str__(self) -> str:
        return (f"lineage fingerprint {self.commitment()[:16]}…: {len(self.labels)} inputs of shape {self.input_shape}, "
                f"{self.num_classes} classes\n  {self.calibration}")

    def encode(self) -> bytes:
        """The file's bytes."""
        from safetensors.numpy import save

        meta = {k: v for k, v in self.to_dict().items() if k not in ("n_inputs", "input_shape")}
        return save({"inputs": np.ascontiguousarray(self.inputs, dtype=np.uint8),
                     "labels": np.ascontiguousarray(self.labels, dtype=np.int64)},
                    metadata={METADATA_KEY: canonical_json(meta).decode("utf-8")})

    def save(self, path: str | Path) -> Path:
        """Write the file atomically, owner-only: a thief who saw the inputs could train their answers away,
        so share it only with whoever verifies."""
        return atomic_write_bytes(path, self.encode(), mode=0o600)


def _check_header(raw: bytes, where: str) -> tuple[dict[str, Any], int]:
    if len(raw) < 8:
        raise LineageFileError(f"{where}: {len(raw)} bytes, too short for a lineage file")
    size = int.from_bytes(raw[:8], "little")
    if size > MAX_HEADER_BYTES or 8 + size > len(raw):
        raise LineageFileError(f"{where}: declares a {size:,}-byte header, over the {MAX_HEADER_BYTES:,} allowed or the file")
    header = parse_json(raw[8 : 8 + size], where, LineageFileError, "a safetensors header")
    if not isinstance(header, dict) or set(header) != {"__metadata__", "inputs", "labels"}:
        raise LineageFileError(f"{where}: not a lineage file (it must hold exactly the tensors inputs and labels)")
    inputs, labels = header["inputs"], header["labels"]
    try:
        n, c, h, w = (int(d) for d in inputs["shape"])
        ok = (inputs["dtype"] == "U8" and labels["dtype"] == "I64" and [int(d) for d in labels["shape"]] == [n]
              and 1 <= n <= MAX_INPUTS and 1 <= c <= MAX_CHANNELS and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE)
    except (KeyError, TypeError, ValueError) as exc:
        raise LineageFileError(f"{where}: malformed tensor entry ({exc!r})") from exc
    if not ok:
        raise LineageFileError(f"{where}: tensors must be uint8 inputs N×C×H×W and int64 labels N, with N <= {MAX_INPUTS}, "
                               f"C <= {MAX_CHANNELS}, H and W <= {MAX_SIDE}")
    return header, n


def decode(raw: bytes, where: str = "<lineage>") -> Lineage:
    """Parse and check lineage-file bytes; see :func:`read_lineage`."""
    if len(raw) > MAX_FILE_BYTES:
        raise LineageFileError(f"{where}: {len(raw):,} bytes, over the {MAX_FILE_BYTES:,} a lineage file may have")
    header, n = _check_header(raw, where)
    meta_text = (header["__metadata__"] or {}).get(METADATA_KEY) if isinstance(header["__metadata__"], dict) else None
    if not isinstance(meta_text, str):
        raise LineageFileError(f"{where}: no {METADATA_KEY} metadata; not a lineage file")
    meta = parse_json(meta_text.encode("utf-8"), where, LineageFileError, "JSON lineage metadata")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LineageFileError(f"{where}: not a {FORMAT} file (format field missing or wrong)")
    version = meta.get("version")
    if type(version) is not int or version not in READS:
        raise FormatVersionError(f"{where}: lineage format version {version!r}; this release reads "
                                 f"{' and '.join(map(str, READS))}")
    if isinstance(meta.get("calibration"), dict) and ("rule" in meta["calibration"]) != (version >= 2):
        raise LineageFileError(f"{where}: " + ("a version 1 lineage file carries no calibration rule, this one does; "
                               "the file was altered" if version == 1 else "a version 2 lineage file must name its "
                               "calibration rule"))
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        arrays = load(raw)
    except (SafetensorError, ValueError) as exc:
        raise LineageFileError(f"{where}: tensor data does not match its header ({exc})") from exc
    k = meta.get("num_classes")
    if type(k) is not int or not 2 <= k <= MAX_CLASSES:
        raise LineageFileError(f"{where}: num_classes must be an integer in [2, {MAX_CLASSES}]")
    labels = arrays["labels"]
    if labels.min() < 0 or labels.max() >= k:
        raise LineageFileError(f"{where}: an expected label lies outside [0, {k})")
    if not all(isinstance(meta.get(f), str) and len(meta[f]) <= 256 for f in ("commitment", "source_sha256", "created")) \
            or not all(isinstance(meta.get(f), dict) for f in ("generation", "pool", "calibration")):
        raise LineageFileError(f"{where}: lineage metadata lacks commitment, source_sha256, created, generation, pool or calibration")
    lineage = Lineage(arrays["inputs"], labels.astype(np.int64), k, Calibration.from_dict(meta["calibration"], n, where),
                      meta["generation"], meta["pool"], meta["source_sha256"], meta["created"])
    if lineage.commitment() != meta["commitment"]:
        raise TamperedError(f"{where}: inputs or labels do not match the recorded commitment; the file was altered")
    return lineage


def read_lineage(path: str | Path) -> Lineage:
    """Read and check a lineage file (size and shape bounds first, then format, calibration and commitment).

    Raises :class:`LineageFileError`, :class:`~tracemark.errors.FormatVersionError` or
    :class:`~tracemark.errors.TamperedError`, each with one line naming the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise LineageFileError(f"no lineage file at {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LineageFileError(f"{path}: {size:,} bytes, over the {MAX_FILE_BYTES:,} a lineage file may have")
    return decode(path.read_bytes(), str(path))
