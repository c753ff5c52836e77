"""Seeds derived from names, stable across processes, machines and Python versions (unlike ``hash()``).

Torch-free, so the sweep driver can plan trials (orchestrator/spec/plan.py) without importing torch.
"""
from __future__ import annotations

import hashlib


def stream_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts``; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
