"""The customer registry: an SQLite file of customers, their code commitments and their copies.

It holds no secret: each customer's code is derived from the master key by HMAC, so the
registry stores only the scheme's public facts and, per customer, the code commitment and
where its copy went. See docs/formats/fingerprint-registry.md.

Writes are safe under concurrency: each is one SQLite transaction that takes the database's
write lock first (``BEGIN IMMEDIATE``, waiting up to :data:`LOCK_TIMEOUT_S` for another writer),
so processes writing the same registry at once lose nothing, and a check and the write it guards
(a duplicate id, another base model) happen under the same lock. Keep the file on a local disk:
SQLite's locks are not reliable on network file systems.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from tracemark._util.sqlite import immediate_transaction
from tracemark.fingerprint.codes import FingerprintScheme, check_customer_id, unique_ids
from tracemark.fingerprint.errors import (
    CustomersFileError,
    DuplicateCustomerError,
    RegistryError,
    RegistryKeyMismatchError,
)
from tracemark.keys.key import WatermarkKey

FORMAT = "tracemark-fingerprint-registry"
VERSION = 1
CODE_CREATED = "customer-code-created"
LOCK_TIMEOUT_S = 60.0
SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE customers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    code_commitment TEXT NOT NULL,
    created_at TEXT NOT NULL,
    model_path TEXT,
    model_sha256 TEXT,
    package_path TEXT,
    package_sha256 TEXT,
    report TEXT
);
"""


@dataclass(frozen=True)
class CustomerRecord:
    """One registry row."""

    id: str
    code_commitment: str
    created_at: str
    model_path: str | None
    model_sha256: str | None
    package_path: str | None
    package_sha256: str | None
    report: dict | None

    def to_dict(self) -> dict:
        return asdict(self)


def read_customers_file(path: str | Path) -> list[str]:
    """Customer ids from a text file: one per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise CustomersFileError(f"no customers file at {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CustomersFileError(f"{path}: cannot read customers file ({exc})") from exc
    ids = [line.split("#", 1)[0].strip() for line in lines]
    ids = unique_ids(cid for cid in ids if cid)
    if not ids:
        raise CustomersFileError(f"{path}: no customer ids (one per line)")
    return ids


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class Registry:
    """Customers and their codes for one master key and scheme; open with :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = path
        self.meta = meta

    # ------------------------------------------------------------------ files
    @classmethod
    def create(cls, path: str | Path, scheme: FingerprintScheme) -> "Registry":
        """A new, empty registry for ``scheme`` at ``path`` (owner-only permissions); refuses to overwrite."""
        path = Path(path)
        if path.exists():
            raise RegistryError(f"{path} exists; open it instead of creating a new registry")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "created_at": _now(), **scheme.describe()}
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            with closing(sqlite3.connect(tmp)) as conn:
                conn.executescript(SCHEMA)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
                conn.commit()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return cls(path, meta)

    @classmethod
    def open(cls, path: str | Path) -> "Registry":
        """Open an existing registry; checks its format and version."""
        path = Path(path)
        if not path.is_file():
            raise RegistryError(f"no customer registry at {path}")
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                meta = {k: json.loads(v) for k, v in conn.execute("SELECT name, value FROM meta")}
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise RegistryError(f"{path}: not a tracemark customer registry ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise RegistryError(f"{path}: not a tracemark customer registry (format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            from tracemark.errors import FormatVersionError

            raise FormatVersionError(f"{path}: registry format version {meta.get('version')!r}; this release reads {VERSION}")
        return cls(path, meta)

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot open registry ({exc})") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its start; committed on success."""
        with closing(self._connect()) as conn:
            conn.isolation_level = None  # transactions are begun and ended here, not by the sqlite3 module
            with immediate_transaction(conn, lambda exc: RegistryError(
                    f"{self.path}: another process held the registry's write lock for {LOCK_TIMEOUT_S:.0f} s ({exc})")):
                yield conn

    # ------------------------------------------------------------------ scheme
    def scheme(self, key: WatermarkKey) -> FingerprintScheme:
        """The registry's scheme over ``key``; raises if ``key`` is not the key it was made with."""
        if key.commitment() != self.meta["key_commitment"]:
            raise RegistryKeyMismatchError(
                f"{self.path} was made with key {self.meta['key_commitment'][:16]}…, not {key.commitment()[:16]}…")
        return FingerprintScheme.from_key(key, int(self.meta["n_drawings"]))

    # ------------------------------------------------------------------ base model
    @property
    def base_sha256(self) -> str | None:
        """SHA-256 of the base model file the copies were made from (``None`` in registries made before it was recorded)."""
        return self.meta.get("base_model_sha256")

    def set_base(self, sha256: str) -> None:
        """Record the base model's file hash; refuses to change it (copies of another base carry other weights).

        The hash on file is read under the write lock, so of two processes setting different bases
        at once one is refused."""
        self.check_base(sha256)
        with self._write() as conn:
            row = conn.execute("SELECT value FROM meta WHERE name = 'base_model_sha256'").fetchone()
            if row is not None:
                self.meta["base_model_sha256"] = json.loads(row[0])
                self.check_base(sha256)
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", ("base_model_sha256", json.dumps(sha256)))
        self.meta["base_model_sha256"] = sha256

    def check_base(self, sha256: str) -> None:
        """Raise unless ``sha256`` is the registered base model's hash (or none was recorded)."""
        if self.base_sha256 not in (None, sha256):
            raise RegistryError(f"the base model given ({sha256[:16]}…) is not the one {self.path} records for its copies "
                                f"({self.base_sha256[:16]}…); use a new registry for another base")

    # ------------------------------------------------------------------ customers
    def add(self, scheme: FingerprintScheme, customer_id: str) -> CustomerRecord:
        """Register a customer: derive and store its code commitment (never the code)."""
        self._check_scheme(scheme)
        return self.add_many(scheme, [customer_id])[0]

    def add_many(self, scheme: FingerprintScheme, customer_ids: Iterable[str]) -> list[CustomerRecord]:
        """Register customers in one transaction (10,000 take about a second); all or, if one is already there, none."""
        self._check_scheme(scheme)
        now = _now()
        records = [CustomerRecord(check_customer_id(cid), scheme.code_commitment(cid), now, None, None, None, None, None)
                   for cid in unique_ids(customer_ids)]
        with self._write() as conn:
            taken = [r.id for r in records if conn.execute("SELECT 1 FROM customers WHERE id = ?", (r.id,)).fetchone()]
            if taken:
                names = ", ".join(repr(t) for t in taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
                raise DuplicateCustomerError(f"customer {names} is already registered in {self.path}")
            conn.executemany("INSERT INTO customers (id, code_commitment, created_at) VALUES (?, ?, ?)",
                             [(r.id, r.code_commitment, r.created_at) for r in records])
        return records

    def set_copy(self, customer_id: str, model_path: str, model_sha256: str, report: dict | None = None) -> None:
        """Record where a customer's marked copy was written, its hash and how it was made."""
        self._update(customer_id, model_path=model_path, model_sha256=model_sha256,
                     report=None if report is None else json.dumps(report, sort_keys=True))

    def set_package(self, customer_id: str, package_path: str, package_sha256: str) -> None:
        """Record a customer's protected package."""
        self._update(customer_id, package_path=package_path, package_sha256=package_sha256)

    def _update(self, customer_id: str, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._write() as conn:
            cursor = conn.execute(f"UPDATE customers SET {columns} WHERE id = ?", (*fields.values(), customer_id))
            if cursor.rowcount != 1:
                raise RegistryError(f"customer {customer_id!r} is not in {self.path}")

    def _rows(self) -> Iterator[CustomerRecord]:
        with closing(self._connect()) as conn:
            rows = conn.execute("SELECT id, code_commitment, created_at, model_path, model_sha256, package_path, "
                                "package_sha256, report FROM customers ORDER BY seq").fetchall()
        for row in rows:
            yield CustomerRecord(*row[:7], json.loads(row[7]) if row[7] else None)

    def records(self) -> list[CustomerRecord]:
        """Every customer, in the order registered."""
        return list(self._rows())

    def customers(self) -> list[str]:
        """Every customer id, in the order registered."""
        with closing(self._connect()) as conn:
            return [r[0] for r in conn.execute("SELECT id FROM customers ORDER BY seq")]

    def __len__(self) -> int:
        with closing(self._connect()) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0])

    def check_codes(self, scheme: FingerprintScheme) -> list[str]:
        """Ids whose stored commitment does not match the code ``scheme`` derives (should be none)."""
        self._check_scheme(scheme)
        return [r.id for r in self._rows() if r.code_commitment != scheme.code_commitment(r.id)]

    def _check_scheme(self, scheme: FingerprintScheme) -> None:
        if scheme.describe() != {k: self.meta[k] for k in scheme.describe()}:
            raise RegistryKeyMismatchError(f"{self.path} was made for another key or scheme: {self.meta}")

    def __str__(self) -> str:
        return (f"customer registry {self.path}: {len(self)} customers, key {self.meta['key_commitment'][:16]}…, "
                f"{self.meta['n_drawings']} drawings × {self.meta['num_classes']} classes")


def record_customer_code(ledger: Any, scheme: FingerprintScheme, customer_id: str) -> Any:
    """Append a ``customer-code-created`` entry (key commitment, customer, code commitment) to a ledger."""
    payload = {"key_commitment": scheme.key.commitment(), "customer": customer_id,
               "code_commitment": scheme.code_commitment(customer_id), "n_drawings": scheme.n_drawings}
    return ledger.append(CODE_CREATED, payload)
