"""Server configuration: one dataclass, passed to worker processes as JSON in an environment variable."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tracemark.extraction.settings import DEFAULT_CAP, DEFAULT_RATE, MonitorSettings
from tracemark.package.licence import OutputPolicy
from tracemark.serve.errors import ServeConfigError
from tracemark.serve.model import AUTO, ServedModel, from_file, from_package, is_package
from tracemark.trust.requests import ImageBounds

ENV_CONFIG = "TRACEMARK_SERVE_CONFIG"
ENV_ADMIN_TOKEN = "TRACEMARK_ADMIN_TOKEN"
"""Where the admin token of ``GET /metrics`` is read from unless ``admin_token_env`` names another variable."""
_MIN_ADMIN_TOKEN = 16


@dataclass(frozen=True)
class UnlockSpec:
    """How to open a package: names of secrets, never the secrets (passphrase by environment variable).

    ``vendor_pub`` pins the signer (default: ``$TRACEMARK_VENDOR_PUB`` or the trusted-vendors directory, see
    :mod:`tracemark.trust.signers`); ``trust_any_signer`` opens a package whose signer is not pinned, with a warning.
    """

    passphrase_env: str | None = None
    key_files: tuple[str, ...] = ()
    tpm_tcti: str | None = None
    machine: bool = False
    vendor_pub: str | None = None
    trust_any_signer: bool = False

    def unlockers(self) -> list[Any]:
        """The package unlockers this spec names."""
        from tracemark.package import MachineSecret, Passphrase, RecipientKey, TpmDevice, VendorKey

        found: list[Any] = []
        if self.passphrase_env:
            secret = os.environ.get(self.passphrase_env)
            if not secret:
                raise ServeConfigError(f"environment variable {self.passphrase_env} is empty or unset; export the passphrase in it")
            found.append(Passphrase(secret))
        found += [RecipientKey.from_vendor(VendorKey.load(path)) for path in self.key_files]
        if self.tpm_tcti:
            found.append(TpmDevice(self.tpm_tcti))
        if self.machine:
            found.append(MachineSecret())
        if not found:
            raise ServeConfigError("a package needs a way to open it: --passphrase-env VAR, --key FILE, --tpm or --machine")
        return found


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``tracemark serve`` needs; rates are in queries (inputs) per second.

    ``default_policy`` applies to clients without their own; ``None`` means the package licence's
    policy, or label-only for a plain model file. ``predict_threads`` bounds the predict requests a worker
    answers at once (default: its CPUs; the rest queue); ``torch_threads`` sets torch's threads per worker.

    Extraction resistance (docs/guide/extraction.md): ``marking`` turns response marking on, with the
    master secret read from the file ``marking_secret`` (or ``$TRACEMARK_MARKING_SECRET``), the evidence
    kept in ``responses_db``, ``marking_rate`` the default marked fraction and ``marking_cap`` the per-client
    budget (a client's marks at most ``marking_cap ×`` its answered inputs; typical inputs are held back, unusual
    ones never); ``monitor`` (thresholds)
    turns the stealing monitor on, its alerts going to ``alerts_db`` (default: the audit log's file).

    Untrusted-request bounds: a request's head must arrive within ``header_timeout`` seconds and its body within
    ``body_timeout`` more; beyond ``max_connections`` open connections requests get 503; uploaded images are
    bounded by ``max_image_pixels`` each and ``max_request_pixels`` per request. ``admin_token_env`` names the
    environment variable holding the token of ``GET /metrics`` (default ``$TRACEMARK_ADMIN_TOKEN``; without one,
    /metrics shows only aggregate counters).

    ``device``: where the model runs: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; an ONNX
    model on CUDA needs onnxruntime's CUDA provider (see :func:`~tracemark.serve.model.onnx_providers`).
    """

    model: str
    clients_db: str = "clients.sqlite"
    audit_db: str = "audit.sqlite"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    max_batch: int = 64
    max_body_bytes: int = 4 << 20
    value_range: tuple[float, float] | None = (0.0, 1.0)
    input_shape: tuple[int, ...] | None = None
    default_policy: OutputPolicy | None = None
    rate: float = 50.0
    burst: float = 200.0
    retention_days: float | None = 90.0
    audit_sync: str = "NORMAL"
    shared_limits: bool | None = None
    unlock: UnlockSpec = field(default_factory=UnlockSpec)
    torch_threads: int | None = None
    predict_threads: int | None = None
    marking: bool = False
    marking_secret: str | None = None
    marking_rate: float = DEFAULT_RATE
    marking_cap: float = DEFAULT_CAP
    marking_step: float = 1.0 / 255.0
    responses_db: str = "responses.sqlite"
    monitor: MonitorSettings | None = None
    alerts_db: str | None = None
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256
    max_image_pixels: int = ImageBounds.max_pixels
    max_request_pixels: int = ImageBounds.max_request_pixels
    admin_token_env: str | None = None
    device: str = AUTO

    def __post_init__(self) -> None:
        if not (0 < self.header_timeout <= 3600 and 0 < self.body_timeout <= 3600) or self.max_connections < 1:
            raise ServeConfigError("header and body timeouts must be in (0, 3600] seconds and max connections >= 1 "
                                   f"(got {self.header_timeout}, {self.body_timeout}, {self.max_connections})")
        if not 1 <= self.max_image_pixels <= self.max_request_pixels:
            raise ServeConfigError(f"max image pixels must be >= 1 and at most the pixels per request (got {self.max_image_pixels}, "
                                   f"{self.max_request_pixels})")
        if self.workers < 1 or self.max_batch < 1 or self.max_body_bytes < 1024:
            raise ServeConfigError("workers and max_batch must be >= 1 and max_body_bytes >= 1024")
        if self.predict_threads is not None and self.predict_threads < 1:
            raise ServeConfigError(f"predict threads must be >= 1 (got {self.predict_threads})")
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ServeConfigError(f"value range {self.value_range} is empty; give MIN,MAX with MIN < MAX")
        if not 0.0 <= self.marking_rate <= 0.5 or self.marking_step <= 0:
            raise ServeConfigError(f"marking rate must be a fraction in [0, 0.5] (got {self.marking_rate}) and the step > 0")
        if not 0.0 <= self.marking_cap <= 0.5:
            raise ServeConfigError(f"marking cap must be a fraction in [0, 0.5] (got {self.marking_cap})")

    @property
    def limits_shared(self) -> bool:
        """Whether rate-limit buckets live in SQLite (default: when there are several workers)."""
        return self.workers > 1 if self.shared_limits is None else self.shared_limits

    @property
    def limits_db(self) -> str:
        """The SQLite file of shared rate-limit buckets, next to the client store."""
        return str(Path(self.clients_db).with_suffix(".limits.sqlite"))

    @property
    def image_bounds(self) -> ImageBounds:
        """The decode limits of uploaded images."""
        return ImageBounds(self.max_image_pixels, self.max_request_pixels)

    def admin_token(self) -> str | None:
        """The admin token of ``GET /metrics`` from the environment (``None``: none configured)."""
        name = self.admin_token_env or ENV_ADMIN_TOKEN
        token = os.environ.get(name, "")
        if not token:
            if self.admin_token_env:
                raise ServeConfigError(f"environment variable {name} is empty or unset; export the admin token in it")
            return None
        if len(token) < _MIN_ADMIN_TOKEN:
            raise ServeConfigError(f"the admin token in ${name} is shorter than {_MIN_ADMIN_TOKEN} characters; "
                                   "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return token

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        raw = json.loads(text)
        if raw["default_policy"] is not None:
            raw["default_policy"] = OutputPolicy.from_dict(raw["default_policy"])
        if raw.get("monitor") is not None:
            raw["monitor"] = MonitorSettings.from_dict(raw["monitor"])
        raw["unlock"] = UnlockSpec(**{**raw["unlock"], "key_files": tuple(raw["unlock"]["key_files"])})
        for name in ("value_range", "input_shape"):
            raw[name] = tuple(raw[name]) if raw[name] is not None else None
        return cls(**raw)

    def load_model(self) -> ServedModel:
        """Open the package or model file this config names."""
        path = Path(self.model)
        if not path.is_file():
            raise ServeConfigError(f"no model or package at {path}")
        if is_package(path):
            return from_package(path, self.unlock.unlockers(), self.unlock.vendor_pub, self.input_shape,
                                trust_any_signer=self.unlock.trust_any_signer, device=self.device)
        return from_file(path, self.input_shape, self.device)


__all__ = ["ServeConfig", "UnlockSpec", "ENV_ADMIN_TOKEN", "ENV_CONFIG"]
