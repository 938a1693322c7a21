"""The ledger directory: append-only entry file, signed head, tokens and attachments.

Appends take an exclusive ``fcntl.flock`` on the entry file, write the whole line with one
``write`` call, flush and ``fsync``, then replace the signed head atomically. A process killed
mid-append leaves either no new entry, a complete one, or a torn tail that readers report and
the next append moves aside and records.
"""

from __future__ import annotations

import fcntl
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tracemark._util.canonical import sha256_hex
from tracemark._util.files import atomic_write_bytes
from tracemark.errors import LedgerError, TracemarkError
from tracemark.ledger.chain import (
    GENESIS_EVENT,
    Head,
    check_head,
    check_seen,
    check_signature,
    decode_head,
    make_head,
    owner_key,
    parse_entries,
    verify_chain,
)
from tracemark.ledger.entries import GENESIS_PREV, Entry, make_entry
from tracemark.ledger.errors import HeadError, WitnessError
from tracemark.ledger.identity import OwnerIdentity, public_key_hex, public_key_pem

LEDGER_FILE = "ledger.jsonl"
HEAD_FILE = "head.json"
PUBLIC_KEY_FILE = "owner.pub.pem"
TOKENS_DIR = "tokens"
ATTACHMENTS_DIR = "attachments"
TORN_DIR = "torn"
TAIL_RECOVERED = "tail-recovered"


ENV_STATE_DIR = "TRACEMARK_STATE_DIR"
_LEDGER_ID = re.compile(r"[0-9a-f]{32}")
_MAX_MARK_BYTES = 4096


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the store keeps state outside ledgers: ``$TRACEMARK_STATE_DIR``, else ``$XDG_STATE_HOME/tracemark``."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_STATE_DIR):
        return Path(environ[ENV_STATE_DIR])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".local" / "state")
    return Path(base) / "tracemark"


def mark_path(ledger_id: str) -> Path:
    """The high-water mark of a ledger: a copy of the newest head this machine signed, outside the ledger."""
    if not _LEDGER_ID.fullmatch(ledger_id):
        raise LedgerError(f"ledger id {ledger_id[:40]!r} is not 32 hex digits; the ledger's first entry is malformed")
    return state_dir() / "ledger-heads" / f"{ledger_id}.json"


def read_mark(ledger_id: str, key: Ed25519PublicKey) -> Head | None:
    """The ledger's high-water mark, checked against the owner's key; ``None`` if this machine has none."""
    path = mark_path(ledger_id)
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        data = handle.read(_MAX_MARK_BYTES)
    try:
        head = decode_head(data, str(path))
        check_signature(head, key)
    except TracemarkError as exc:
        raise WitnessError(f"the high-water mark {path} is unusable ({exc}); remove it if you trust the ledger as it is") from exc
    if head.ledger_id != ledger_id:
        raise WitnessError(f"the high-water mark {path} belongs to another ledger; remove it")
    return head


def check_mark(entries: list[Entry], key: Ed25519PublicKey) -> Head | None:
    """Raise :class:`RollbackError` if this machine once signed a head the ledger no longer reaches."""
    ledger_id = str(entries[0].payload.get("ledger_id"))
    mark = read_mark(ledger_id, key)
    if mark is not None:
        source = f"the high-water mark {mark_path(ledger_id)} (remove it only if you restored an older ledger on purpose)"
        check_seen(entries, [(mark.seq, mark.hash)], source)
    return mark


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Ledger:
    """A ledger directory. ``owner`` is needed to append, not to read or verify."""

    def __init__(self, directory: str | os.PathLike[str], owner: OwnerIdentity | None = None) -> None:
        self.directory = Path(directory)
        self.owner = owner

    # ------------------------------------------------------------------ paths
    @property
    def path(self) -> Path:
        """The entry file (JSON Lines)."""
        return self.directory / LEDGER_FILE

    @property
    def head_path(self) -> Path:
        """The owner-signed head file."""
        return self.directory / HEAD_FILE

    @property
    def tokens_dir(self) -> Path:
        """Directory of time-stamp token records."""
        return self.directory / TOKENS_DIR

    def attachment_path(self, sha256: str) -> Path:
        """Where the attachment with this SHA-256 is stored."""
        return self.directory / ATTACHMENTS_DIR / sha256

    # ------------------------------------------------------------------ create / open
    @classmethod
    def init(cls, directory: str | os.PathLike[str], owner: OwnerIdentity) -> "Ledger":
        """Create a new ledger in ``directory`` whose entry #0 declares ``owner``'s public key."""
        ledger = cls(directory, owner)
        ledger.directory.mkdir(parents=True, exist_ok=True)
        payload = {"ledger_id": uuid.uuid4().hex, "owner_public_key": public_key_hex(owner.public_key)}
        genesis = make_entry(owner, 0, GENESIS_EVENT, payload, GENESIS_PREV)
        try:
            fd = os.open(ledger.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError as exc:
            raise LedgerError(f"a ledger already exists at {ledger.directory}; open it instead of initialising") from exc
        try:
            _write_all(fd, genesis.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        atomic_write_bytes(ledger.head_path, make_head(owner, payload["ledger_id"], genesis).encode(), mode=0o644)
        atomic_write_bytes(ledger.directory / PUBLIC_KEY_FILE, public_key_pem(owner.public_key), mode=0o644)
        return ledger

    @classmethod
    def open(cls, directory: str | os.PathLike[str], owner: OwnerIdentity | None = None) -> "Ledger":
        """Open an existing ledger directory; raises :class:`LedgerError` if there is none."""
        ledger = cls(directory, owner)
        if not ledger.path.is_file():
            raise LedgerError(f"no ledger at {ledger.directory}; create one with `tracemark ledger init {directory}`")
        return ledger

    # ------------------------------------------------------------------ read
    def read(self, allow_torn_tail: bool = False) -> tuple[list[Entry], bytes]:
        """Decode all complete entries (no signature check) and return them with any torn tail."""
        return parse_entries(self.path.read_bytes(), str(self.path), allow_torn_tail)

    def entries(self) -> list[Entry]:
        """All entries, chain-checked from the start (raises on any break or a torn tail)."""
        entries, _ = self.read()
        verify_chain(entries)
        return entries

    def head(self) -> Head | None:
        """The signed head, or ``None`` when the file is absent."""
        if not self.head_path.is_file():
            return None
        return decode_head(self.head_path.read_bytes(), str(self.head_path))

    # ------------------------------------------------------------------ append
    @contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def append(self, event: str, payload: dict[str, Any]) -> Entry:
        """Sign and append one entry; returns it once it is on disk (fsync'd)."""
        if self.owner is None:
            raise LedgerError("appending needs the owner key; load it with OwnerIdentity.load or set TRACEMARK_OWNER_KEY")
        if event == GENESIS_EVENT:
            raise LedgerError(f"{GENESIS_EVENT!r} is written only by Ledger.init")
        with self._locked() as fd:
            data = b""
            while chunk := os.pread(fd, 1 << 20, len(data)):
                data += chunk
            entries, tail = parse_entries(data, str(self.path), allow_torn_tail=True)
            last = self._checked_last(entries)
            check_mark(entries, self.owner.public_key)
            ledger_id = str(entries[0].payload["ledger_id"])
            if tail:
                last = self._recover_tail(fd, len(data) - len(tail), tail, last, ledger_id)
            entry = make_entry(self.owner, last.seq + 1, event, payload, last.hash)
            self._write(fd, entry, ledger_id)
        return entry

    def _checked_last(self, entries: list[Entry]) -> Entry:
        assert self.owner is not None
        if not entries:
            raise LedgerError(f"{self.path} has no complete entry; it is not a ledger")
        if entries[0].owner != self.owner.fingerprint():
            raise LedgerError("this ledger belongs to another owner key; use the key it was created with")
        entries[-1].check(self.owner.public_key)
        return entries[-1]

    def _write(self, fd: int, entry: Entry, ledger_id: str) -> None:
        assert self.owner is not None
        os.lseek(fd, 0, os.SEEK_END)
        _write_all(fd, entry.encode())
        os.fsync(fd)
        head = make_head(self.owner, ledger_id, entry).encode()
        atomic_write_bytes(self.head_path, head, mode=0o644)
        try:
            atomic_write_bytes(mark_path(ledger_id), head, mode=0o644)
        except OSError:
            pass  # the mark is an extra witness (state directory not writable); the ledger and its head are written

    def _recover_tail(self, fd: int, offset: int, tail: bytes, last: Entry, ledger_id: str) -> Entry:
        """Move a torn tail aside, cut it off, and record that in the chain."""
        digest = sha256_hex(tail)
        saved = self.directory / TORN_DIR / f"{offset}-{digest[:16]}.bin"
        atomic_write_bytes(saved, tail, mode=0o600)
        os.ftruncate(fd, offset)
        os.fsync(fd)
        assert self.owner is not None
        payload = {"offset": offset, "length": len(tail), "sha256": digest, "saved_as": f"{TORN_DIR}/{saved.name}"}
        entry = make_entry(self.owner, last.seq + 1, TAIL_RECOVERED, payload, last.hash)
        self._write(fd, entry, ledger_id)
        return entry

    # ------------------------------------------------------------------ attachments
    def attach(self, data: bytes) -> str:
        """Store ``data`` content-addressed under attachments/; return its SHA-256."""
        digest = sha256_hex(data)
        path = self.attachment_path(digest)
        if not path.is_file():
            atomic_write_bytes(path, data, mode=0o644)
        return digest

    def check_head(self, entries: list[Entry]) -> Head:
        """Check the signed head against ``entries`` (chain-checked); raises if it is absent or wrong."""
        head = self.head()
        if head is None:
            raise HeadError(f"{self.head_path} is missing; without it entries cut off the end cannot be detected")
        check_head(head, entries, owner_key(entries[0]))
        return head
