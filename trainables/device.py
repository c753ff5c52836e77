"""Where a run trains, and the process-wide state that goes with the device: the device choice, the allocator,
the random-number generators' state. Nothing here knows about Ray."""
from __future__ import annotations

import random
from typing import Optional

import torch


def resolve_device(requested: str, gpus_assigned: Optional[int] = None) -> torch.device:
    """The device a run uses. ``gpus_assigned`` (from a scheduler such as Ray) overrides ``auto``:
    a trial given a GPU uses CUDA, one given none uses the CPU."""
    if requested == "auto":
        if gpus_assigned is not None:
            return torch.device("cuda" if gpus_assigned > 0 else "cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was requested but torch sees no CUDA device")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device mps was requested but torch sees no MPS device")
    return torch.device(requested)


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """On glibc (Linux), let ``malloc`` serve large blocks from its heaps and keep freed memory (up to 1 GB).

    A training step allocates tens of MB of temporaries (the activations of every time step). By default glibc
    maps such blocks freshly with ``mmap`` and unmaps them on free, so every iteration pays a page fault per
    4 KB touched (about 0.5 ms per MB here): the LSTM step at 100 digits runs 1.4x faster without that
    (docs/PERFORMANCE.md). Process-wide and idempotent; it changes no result, only where memory
    comes from. Returns whether the settings apply."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1024 * 1024 * 1024) == 1
        ok = libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024) == 1 and ok
    except (OSError, AttributeError):  # not glibc: nothing to do
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
