"""The evidence ledger: owner identity, signed hash-chained entries, RFC 3161 tokens, evidence bundles.

See docs/formats/ledger.md, docs/formats/evidence-bundle.md and docs/guide/evidence.md.
"""

from tracemark.ledger.audit import LedgerReport, verify_ledger
from tracemark.ledger.bundle import BundleReport, export_bundle, verify_bundle
from tracemark.ledger.entries import Entry
from tracemark.ledger.events import (
    ENV_LEDGER,
    ENV_OWNER_KEY,
    ENV_OWNER_PASSPHRASE,
    configured_ledger,
    file_sha256,
    record_embedded,
    record_key_created,
    record_packaged,
    record_verification,
)
from tracemark.ledger.identity import OwnerIdentity, load_public_key
from tracemark.ledger.store import Ledger
from tracemark.ledger.timestamp import TokenInfo, obtain_timestamp, verify_token

__all__ = [
    "ENV_LEDGER",
    "ENV_OWNER_KEY",
    "ENV_OWNER_PASSPHRASE",
    "BundleReport",
    "Entry",
    "Ledger",
    "LedgerReport",
    "OwnerIdentity",
    "TokenInfo",
    "configured_ledger",
    "export_bundle",
    "file_sha256",
    "load_public_key",
    "obtain_timestamp",
    "record_embedded",
    "record_key_created",
    "record_packaged",
    "record_verification",
    "verify_bundle",
    "verify_ledger",
    "verify_token",
]
