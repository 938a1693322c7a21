"""The reference pool: models derived from the owner's (surrogates) and independently trained ones (references).

Every member is trained from a :class:`MemberSpec` (method, architecture, seed, the fraction of the owner's
training data it sees, optimiser settings) and cached under the pool directory:
``models/<key>.safetensors`` and one ``manifest.json`` recording each member's seed, architecture, split
(seed, half, size and the SHA-256 of its indices) and optimiser. The key is the SHA-256 of the spec (without its
name and use), the data's digest and, for surrogates, the source model's digest, so a member is never trained
twice: asking for it again loads the file (checked against the SHA-256 in the manifest).

Members used to *generate* a fingerprint and members used to *calibrate* it are two disjoint sets: a plan
whose generation and calibration members share a key or a seed is refused, and :meth:`Pool.manifest`
lists both key sets with their (empty) overlap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from tracemark._util.canonical import canonical_json, sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.attacks import Distill, Extract, FineTune, ThiefData
from tracemark.data.datasets import ImageData
from tracemark.data.models import build_model, load_model_bytes, model_bytes, model_spec
from tracemark.lineage._data import PARTS, OwnerData, class_count, indices_digest, owner_data, split_indices
from tracemark.lineage.errors import PoolError
from tracemark.training import fit

FORMAT = "tracemark-lineage-pool"
VERSION = 1
MANIFEST = "manifest.json"
METHODS = ("finetune", "extract", "distill", "independent")
MAX_MANIFEST_BYTES = 16 << 20
Use = Literal["generation", "calibration"]


@dataclass(frozen=True)
class MemberSpec:
    """How one pool member is made.

    ``method``: ``finetune`` (all layers of a copy of the source, on the member's split), ``extract`` (a fresh
    ``arch`` trained on the source's labels for the split's images), ``distill`` (on its probabilities), or
    ``independent`` (a fresh ``arch`` trained on the split's own labels, never seeing the source). ``arch`` is
    ``"source"`` for ``finetune``. ``fraction`` of the owner's training data is drawn with ``seed``, which also
    seeds initial weights and shuffling; the optimiser is Adam at ``lr`` for ``epochs``. ``part``: draw the
    split from all of the data, or from its fixed half ``a`` or ``b`` (disjoint).
    """

    name: str
    use: Use
    method: str
    arch: str
    seed: int
    fraction: float
    epochs: int
    lr: float = 1e-3
    batch_size: int = 64
    part: str = "all"

    @property
    def role(self) -> str:
        """``surrogate`` for members derived from the source, ``reference`` for independent ones."""
        return "reference" if self.method == "independent" else "surrogate"

    def training(self) -> dict[str, Any]:
        """What the cache key covers: everything but the name and use."""
        doc = {"method": self.method, "arch": self.arch, "seed": self.seed, "fraction": self.fraction,
               "optimiser": {"name": "adam", "lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size}}
        return doc if self.part == "all" else {**doc, "part": self.part}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PoolPlan:
    """The members a fingerprint needs: generation surrogates and references, and calibration references."""

    members: tuple[MemberSpec, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise PoolError(f"pool plan repeats member names {sorted({n for n in names if names.count(n) > 1})}")
        for m in self.members:
            if m.method not in METHODS:
                raise PoolError(f"pool member {m.name}: unknown method {m.method!r}; use one of {', '.join(METHODS)}")
            if not 0 < m.fraction <= 1 or m.epochs < 1:
                raise PoolError(f"pool member {m.name}: fraction must be in (0, 1] and epochs at least 1")
            if m.part not in PARTS:
                raise PoolError(f"pool member {m.name}: part must be one of {', '.join(PARTS)}, not {m.part!r}")
            if m.use == "calibration" and m.role != "reference":
                raise PoolError(f"pool member {m.name}: calibration uses independent references only, not {m.method}")
        if not self.select("generation", "surrogate") or not self.select("generation", "reference"):
            raise PoolError("pool plan needs at least one generation surrogate and one generation reference")
        gen_seeds = {m.seed for m in self.members if m.use == "generation"}
        cal_seeds = {m.seed for m in self.members if m.use == "calibration"}
        if gen_seeds & cal_seeds:
            raise PoolError(f"pool plan uses seeds {sorted(gen_seeds & cal_seeds)} for both generation and calibration; "
                            "the two sets must be disjoint")

    def select(self, use: Use, role: str | None = None) -> tuple[MemberSpec, ...]:
        """The members of one use (and role)."""
        return tuple(m for m in self.members if m.use == use and (role is None or m.role == role))


def default_plan(seed: int = 0, *, source_arch: str = "small_cnn", epochs: int = 10, surrogates: int = 14,
                 generation_references: int = 18, calibration_references: int = 10) -> PoolPlan:
    """The standard pool: surrogates made by the thief's own attacks, cycling fine-tune, label extraction into
    ``source_arch``, LeNet and an MLP, distillation into an MLP, LeNet and ``source_arch`` (so every architecture
    a thief may pick is there, taught by labels and by probabilities); generation and calibration references
    cycling small CNN, LeNet, MLP on their own seeds and splits, with Adam at 5e-4, 1e-3 and 2e-3.

    Generation members draw from half ``a`` of the data, calibration references from the disjoint half ``b``:
    the inputs are made to avoid models trained on the generation data, so references trained on that data
    agree less than a stranger with other data would (MNIST: 9–12 of 200 against 20–77 for the same training
    on other images), and only references on other data calibrate honestly. Generation seeds are
    ``1000·seed + 1…``, calibration ``1000·seed + 501…``."""
    base = 1000 * seed
    kinds = [("finetune", "source", max(1, epochs // 3), 5e-4), ("extract", source_arch, epochs, 1e-3),
             ("extract", "lenet", epochs, 1e-3), ("distill", "mlp", epochs, 1e-3), ("distill", "lenet", epochs, 1e-3),
             ("extract", "mlp", epochs, 1e-3), ("distill", source_arch, epochs, 1e-3)]
    archs = ("small_cnn", "lenet", "mlp")
    rates = (1e-3, 5e-4, 2e-3)
    members = [MemberSpec(f"surrogate-{i}-{kinds[i % 7][0]}-{kinds[i % 7][1]}", "generation", kinds[i % 7][0],
                          kinds[i % 7][1], base + 1 + i, 0.8, kinds[i % 7][2], kinds[i % 7][3], part="a")
               for i in range(surrogates)]
    members += [MemberSpec(f"reference-{i}-{archs[i % 3]}", "generation", "independent", archs[i % 3], base + 101 + i,
                           (0.6, 0.7, 0.8, 0.9)[i % 4], epochs, rates[(i // 3) % 3], part="a")
                for i in range(generation_references)]
    members += [MemberSpec(f"calibration-{i}-{archs[(i + 1) % 3]}", "calibration", "independent", archs[(i + 1) % 3],
                           base + 501 + i, (0.8, 0.9, 1.0, 1.0)[i % 4], epochs, rates[(i // 3) % 3], part="b")
                for i in range(calibration_references)]
    return PoolPlan(tuple(members))


def module_digest(model: nn.Module) -> str:
    """Hex SHA-256 over a module's state (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class PoolMember:
    """A trained (or loaded) member, its cache key and its manifest record."""

    spec: MemberSpec
    key: str
    model: nn.Module
    record: dict[str, Any]
    trained: bool

    def describe(self) -> str:
        return f"{self.spec.name} ({self.spec.method} {self.spec.arch}, seed {self.spec.seed}, key {self.key[:12]})"


@dataclass
class Pool:
    """The members one fingerprint uses, and what building them cost (``trained``: models trained now)."""

    directory: str
    members: list[PoolMember]
    trained: int
    reused: int
    seconds: float
    data_sha256: str
    source_sha256: str

    def select(self, use: Use, role: str | None = None) -> list[PoolMember]:
        """The members of one use (and role), in plan order."""
        return [m for m in self.members if m.spec.use == use and (role is None or m.spec.role == role)]

    def manifest(self) -> dict[str, Any]:
        """Each member's record and the proof that generation and calibration keys do not overlap."""
        gen = [m.key for m in self.select("generation")]
        cal = [m.key for m in self.select("calibration")]
        return {"format": FORMAT, "version": VERSION, "data_sha256": self.data_sha256, "source_sha256": self.source_sha256,
                "members": [{"name": m.spec.name, "use": m.spec.use, **m.record} for m in self.members],
                "generation_keys": gen, "calibration_keys": cal, "overlap": sorted(set(gen) & set(cal))}

    def to_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "trained": self.trained, "reused": self.reused, "seconds": self.seconds,
                "members": len(self.members), "manifest": self.manifest()}

    def __str__(self) -> str:
        kinds = {u: len(self.select(u)) for u in ("generation", "calibration")}
        return (f"pool {self.directory}: {len(self.members)} members ({kinds['generation']} for generation, "
                f"{kinds['calibration']} for calibration); {self.trained} trained now in {self.seconds:.1f} s, "
                f"{self.reused} loaded from cache")


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format": FORMAT, "version": VERSION, "members": {}}
    raw = path.read_bytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PoolError(f"{path}: {len(raw):,} bytes, over {MAX_MANIFEST_BYTES:,}; not a pool manifest")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PoolError(f"{path}: not JSON ({exc}); delete the pool directory to rebuild it") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION \
            or not isinstance(doc.get("members"), dict):
        raise PoolError(f"{path}: not a {FORMAT} version {VERSION} manifest; use another --pool-dir or delete it")
    return doc


def _save(model: nn.Module, spec: MemberSpec) -> bytes:
    """Fine-tuned copies keep the source's architecture: their state alone; fresh models: :func:`model_bytes`."""
    if spec.method == "finetune" and model_spec(model) is None:
        from safetensors.torch import save

        return save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    return model_bytes(model)


def _load(data: bytes, spec: MemberSpec, source: nn.Module, where: str) -> nn.Module:
    if spec.method == "finetune" and model_spec(source) is None:
        from safetensors.torch import load

        model = copy.deepcopy(source)
        model.load_state_dict(load(data))
        model.eval()
        return model
    return load_model_bytes(data, where)


def _train(spec: MemberSpec, source: nn.Module, data: OwnerData, num_classes: int, device) -> tuple[nn.Module, dict]:
    indices = split_indices(len(data.train), spec.fraction, spec.seed, spec.part)  # type: ignore[arg-type]
    subset: Dataset = Subset(data.train, indices.tolist())
    split = {"seed": spec.seed, "fraction": spec.fraction, "part": spec.part, "size": int(len(indices)),
             "of": len(data.train), "indices_sha256": indices_digest(indices)}  # type: ignore[arg-type]
    if spec.method == "independent":
        model = build_model(spec.arch, data.input_shape, num_classes, seed=spec.seed)
        fit(model, subset, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, seed=spec.seed, device=device)
        return model, split
    thief = ThiefData(x=subset, seed=spec.seed, device=device)
    n = len(indices)
    if spec.method == "finetune":
        attack = FineTune("FTAL", n_samples=n, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size)
    elif spec.method == "extract":
        attack = Extract(spec.arch, n_queries=n, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, num_classes=num_classes)
    else:
        attack = Distill(spec.arch, n_queries=n, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, num_classes=num_classes)
    stolen = attack.run(source, thief)
    assert stolen.model is not None
    return stolen.model, split


def build_pool(source: nn.Module, data: ImageData | Dataset, plan: PoolPlan, directory: str | Path, *,
               device: str | torch.device | None = None) -> Pool:
    """Train (or load from ``directory``) every member of ``plan`` for ``source`` on ``data``.

    A member already in the manifest with the same key is loaded, never retrained; a cached file whose SHA-256
    differs from the manifest's is refused (:class:`PoolError`). The manifest is rewritten atomically after each
    member trained, so an interrupted build keeps what it finished.
    """
    root = Path(directory)
    path = root / MANIFEST
    manifest = _read_manifest(path)
    od = owner_data(data)
    source.eval()
    num_classes = class_count(source, od.input_shape)
    source_sha = module_digest(source)
    start = time.perf_counter()
    members, trained = [], 0
    for spec in plan.members:
        key_doc = {"v": VERSION, "training": spec.training(), "data_sha256": od.digest,
                   "source_sha256": source_sha if spec.role == "surrogate" else None, "num_classes": num_classes}
        key = sha256_hex(canonical_json(key_doc))
        record = manifest["members"].get(key)
        file = root / "models" / f"{key[:32]}.safetensors"
        if record is not None and file.is_file():
            raw = file.read_bytes()
            if sha256_hex(raw) != record.get("sha256"):
                raise PoolError(f"{file}: differs from the SHA-256 its manifest recorded; the cache was altered "
                                "(delete the file to retrain that member)")
            members.append(PoolMember(spec, key, _load(raw, spec, source, str(file)), record, trained=False))
            continue
        began = time.perf_counter()
        model, split = _train(spec, source, od, num_classes, device)
        model.eval()
        raw = _save(model, spec)
        atomic_write_bytes(file, raw, mode=0o644)
        record = {"key": key, **spec.training(), "role": spec.role, "split": split, "data_sha256": od.digest,
                  "source_sha256": key_doc["source_sha256"], "file": f"models/{file.name}", "sha256": sha256_hex(raw),
                  "trained_seconds": round(time.perf_counter() - began, 3),
                  "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        manifest["members"][key] = record
        atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n", mode=0o644)
        members.append(PoolMember(spec, key, model, record, trained=True))
        trained += 1
    pool = Pool(str(root), members, trained, len(members) - trained, time.perf_counter() - start, od.digest, source_sha)
    if pool.manifest()["overlap"]:
        raise PoolError("a model is in both the generation and the calibration set; give them different seeds or splits")
    return pool
