"""Small shared helpers (atomic writes, deterministic randomness, canonical JSON)."""
