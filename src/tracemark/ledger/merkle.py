"""Merkle tree over entry hashes (RFC 6962 shape), so one token covers many entries."""

from __future__ import annotations

import hashlib


def _leaf(entry_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(entry_hash)).digest()


def _root(nodes: list[bytes]) -> bytes:
    if len(nodes) == 1:
        return nodes[0]
    split = 1 << ((len(nodes) - 1).bit_length() - 1)  # largest power of two below len
    return hashlib.sha256(b"\x01" + _root(nodes[:split]) + _root(nodes[split:])).digest()


def merkle_root(entry_hashes: list[str]) -> str:
    """Hex Merkle root of hex entry hashes (leaf = H(0x00‖h), node = H(0x01‖left‖right))."""
    if not entry_hashes:
        raise ValueError("a Merkle tree needs at least one leaf")
    return _root([_leaf(h) for h in entry_hashes]).hex()
