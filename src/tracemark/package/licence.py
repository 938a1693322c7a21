"""The licence a package carries: who may use it, when, on which devices, with which output policy.

The licence sits inside the signed manifest, and the data key's wrapping is bound to it (see
docs/formats/package.md), so editing it breaks both the signature and the unwrapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from tracemark.errors import LicenceError, PackageError

OUTPUT_MODES = ("label", "top_k", "probabilities")


def _utc(value: datetime | str, what: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise PackageError(f"licence {what} {value!r} is not an ISO 8601 date-time (e.g. 2026-01-31T00:00:00Z)") from exc
    if value.tzinfo is None:
        raise PackageError(f"licence {what} {value.isoformat()} has no time zone; give it in UTC (suffix Z)")
    return value.astimezone(timezone.utc).replace(microsecond=0)


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class OutputPolicy:
    """What a server of the model may return: the label only, the top ``k`` classes, or probabilities.

    ``decimals`` rounds returned scores (``top_k`` and ``probabilities``); ``None`` means unrounded.
    """

    mode: str = "label"
    top_k: int | None = None
    decimals: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in OUTPUT_MODES:
            raise PackageError(f"output policy mode {self.mode!r} unknown; use one of {', '.join(OUTPUT_MODES)}")
        if self.mode == "top_k" and (self.top_k is None or self.top_k < 1):
            raise PackageError("output policy 'top_k' needs top_k >= 1")
        if self.mode != "top_k" and self.top_k is not None:
            raise PackageError(f"top_k is only meaningful with mode 'top_k', not {self.mode!r}")
        if self.decimals is not None and not 0 <= self.decimals <= 8:
            raise PackageError("output policy decimals must be between 0 and 8")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "top_k": self.top_k, "decimals": self.decimals}

    @classmethod
    def from_dict(cls, raw: dict) -> "OutputPolicy":
        return cls(str(raw["mode"]), raw.get("top_k"), raw.get("decimals"))

    def __str__(self) -> str:
        parts = [self.mode if self.mode != "top_k" else f"top-{self.top_k}"]
        if self.decimals is not None:
            parts.append(f"rounded to {self.decimals} decimals")
        return ", ".join(parts)


@dataclass(frozen=True)
class Licence:
    """Customer, validity window (UTC), allowed device ids (empty: any device) and output policy."""

    customer_id: str
    not_before: datetime
    not_after: datetime
    allowed_devices: tuple[str, ...] = ()
    output_policy: OutputPolicy = field(default_factory=OutputPolicy)

    def __post_init__(self) -> None:
        if not self.customer_id:
            raise PackageError("a licence needs a customer id")
        object.__setattr__(self, "not_before", _utc(self.not_before, "not_before"))
        object.__setattr__(self, "not_after", _utc(self.not_after, "not_after"))
        object.__setattr__(self, "allowed_devices", tuple(str(d) for d in self.allowed_devices))
        if self.not_after <= self.not_before:
            raise PackageError("licence not_after must be later than not_before")

    def check(self, device_id: str | None, now: datetime | None = None) -> None:
        """Raise :class:`LicenceError` unless the licence allows use on ``device_id`` at ``now``."""
        now = _utc(now or datetime.now(timezone.utc), "check time")
        if now < self.not_before:
            raise LicenceError(
                f"licence for {self.customer_id} is not valid before {_iso(self.not_before)} (now {_iso(now)}); "
                "check the clock or ask the vendor for a current package"
            )
        if now > self.not_after:
            raise LicenceError(
                f"licence for {self.customer_id} expired at {_iso(self.not_after)} (now {_iso(now)}); ask the vendor to renew it"
            )
        if self.allowed_devices and device_id not in self.allowed_devices:
            raise LicenceError(
                f"this device ({device_id or 'unknown'}) is not among the licence's allowed devices "
                f"({', '.join(self.allowed_devices)}); run `tracemark device id` and ask the vendor to enrol it"
            )

    def to_dict(self) -> dict:
        return {
            "customer_id": self.customer_id,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "allowed_devices": list(self.allowed_devices),
            "output_policy": self.output_policy.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "Licence":
        try:
            return cls(
                str(raw["customer_id"]),
                raw["not_before"],
                raw["not_after"],
                tuple(raw.get("allowed_devices", ())),
                OutputPolicy.from_dict(raw["output_policy"]),
            )
        except (KeyError, TypeError) as exc:
            raise PackageError(f"malformed licence ({exc!r})") from exc

    def __str__(self) -> str:
        devices = ", ".join(self.allowed_devices) if self.allowed_devices else "any device"
        return (
            f"licence for {self.customer_id}: {_iso(self.not_before)} to {_iso(self.not_after)}, "
            f"{devices}; output: {self.output_policy}"
        )
