"""Watermark keys: the secret, its trigger set, and the key file."""

from tracemark.keys.fileformat import decode_key_file, encode_key_file, is_encrypted, read_key_file, write_key_file
from tracemark.keys.key import WatermarkKey
from tracemark.keys.kinds import KINDS
from tracemark.keys.triggerset import TriggerSet

__all__ = [
    "KINDS",
    "TriggerSet",
    "WatermarkKey",
    "decode_key_file",
    "encode_key_file",
    "is_encrypted",
    "read_key_file",
    "write_key_file",
]
