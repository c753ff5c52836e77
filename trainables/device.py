"""Where a run trains, and the process-wide state that goes with the device: the device choice, the allocator,
the random-number generators' state. Nothing here knows about Ray."""
from __future__ import annotations

import os
import random
from typing import Optional

import torch

from .errors import DeviceError, GpuMemoryError


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(requested: str, gpus_assigned: Optional[float] = None) -> torch.device:
    """The device a run uses. ``gpus_assigned`` (from a scheduler such as Ray) overrides ``auto``: a trial given
    no GPU uses the CPU -- without asking torch about accelerators, so a CPU trial on a GPU node never touches
    CUDA -- and one given a GPU share uses the accelerator torch has (CUDA, or MPS on Apple silicon, which Ray
    also counts as a GPU). DeviceError if the device asked for is not there."""
    if requested == "auto":
        if gpus_assigned is not None and gpus_assigned <= 0:
            return torch.device("cpu")
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        if gpus_assigned is not None:
            raise DeviceError(f"the trial was given {gpus_assigned:g} GPU but torch sees neither CUDA nor MPS "
                              "on this node (a CPU-only torch build?)")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device cuda was requested but torch sees no CUDA device")
    if requested == "mps" and not _mps_available():
        raise DeviceError("device mps was requested but torch sees no MPS device")
    return torch.device(requested)


def resume_device(state: dict, requested: str, gpus_assigned: Optional[float] = None) -> tuple[torch.device, str]:
    """The device a run resumed from checkpoint ``state`` continues on, and a note when it is not the one the run
    trained on. Another device gives other numbers, so it is taken only when the config names it explicitly
    (``train --resume DIR --device cpu``); a run that trained on CUDA and would fall back to the CPU because
    ``auto`` finds no GPU here is a DeviceError instead, as is a run on ``cuda`` where there is none."""
    trained = trained_on(state)
    try:
        device = resolve_device(requested, gpus_assigned)
    except DeviceError as exc:
        raise DeviceError(f"{exc}, and the run trained on {trained or requested} (checkpoint of iteration "
                          f"{state.get('iter')}); continue it on the CPU with --device cpu (its numbers then "
                          "differ from the GPU's)") from None
    if trained is None or device.type == trained:
        return device, ""
    if requested == device.type:
        return device, (f"continuing on {device.type} a run that trained on {trained} (checkpoint of iteration "
                        f"{state.get('iter')}): from here its numbers differ from a run that stayed on {trained}")
    raise DeviceError(f"the run trained on {trained} (checkpoint of iteration {state.get('iter')}) and would "
                      f"continue on {device.type} here (device {requested}); continue it on {device.type} "
                      f"explicitly with --device {device.type} (its numbers then differ), or resume it where "
                      f"{trained} is available")


# What a process's accelerator runtimes read, once, to learn which devices it may see (HIP: ROCm builds of torch).
HIDDEN_ACCELERATORS = {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}


def hide_accelerators() -> bool:
    """Make this process's GPUs invisible to torch, for a run that trains on the CPU in a process of its own (a
    Ray trial, ``adder-sweep train --device cpu``). Even a CPU run asks CUDA otherwise: a CUDA build's
    ``Adam.step`` checks the accelerator's current stream for graph capture whenever CUDA is available, which
    initialises CUDA in the process; and Ray 2.60 no longer empties ``CUDA_VISIBLE_DEVICES`` for a task
    given no GPU (ray-project/ray#54868). Works only before the process's first CUDA query (torch counts the
    devices once); returns False, hiding nothing, when CUDA is already initialised here."""
    if torch.cuda.is_initialized():
        return False
    os.environ.update(HIDDEN_ACCELERATORS)
    return True


def trained_on(state: dict) -> Optional[str]:
    """The device type a checkpoint's run trained on: recorded since checkpoints carry ``device``; before, known
    only when the config named it."""
    if state.get("device"):
        return str(state["device"])
    named = (state.get("config") or {}).get("device")
    return named if named in ("cpu", "cuda", "mps") else None


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


def rng_state(device: torch.device) -> dict:
    """The random-number state a checkpoint keeps: Python's, torch's CPU generator, and -- for a CUDA run only --
    the generator of the one GPU it uses. A CPU run never asks CUDA (which would initialise it, and store one
    state per visible GPU)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Put back ``rng_state``'s generators, for the device this run uses. Checkpoints written before this kept a
    list of every visible GPU's state: the entry of this run's GPU is used if it is there."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, (list, tuple)):
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels on CUDA (cuDNN's RNN backward is not deterministic otherwise), or torch's defaults.
    Process-wide, so set on every run: a reused Ray worker may have run a trial with the other setting. cuBLAS
    also needs CUBLAS_WORKSPACE_CONFIG before its first handle exists (``CUBLAS_WORKSPACE``: ``train`` sets it
    in its process before a CUDA run's first handle, for the CLI and every trial alike)."""
    on = deterministic and device.type == "cuda"
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=False)


CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # torch's docs: what deterministic cuBLAS needs


def limit_gpu_memory(device: torch.device, share: Optional[float]) -> Optional[float]:
    """Cap this process's caching allocator at ``share`` of the GPU (a Ray trial's fractional GPU), and free the
    blocks a reused worker's previous trial left cached; returns the cap, or None when there is none (the whole
    GPU, or not a CUDA run). The cap covers what torch allocates, not the CUDA context each process holds
    beside it (hundreds of MB per process, measured by benchmarks/gpu.py)."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    fraction = float(share) if share is not None and 0 < share < 1 else 1.0
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction if fraction < 1 else None


def oom_message(exc: BaseException, cap: Optional[float], total_bytes: Optional[int]) -> str:
    """One line for a CUDA out-of-memory error: what was asked (torch's "Tried to allocate"), the cap, the way out."""
    import re

    asked = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]?i?B)", str(exc))
    what = f"tried to allocate {asked.group(1)}" if asked else "an allocation failed"
    gib = f" of the GPU's {total_bytes / 2**30:.1f} GiB" if total_bytes else ""
    limit = (f"with this trial capped at {cap:.0%}{gib} (its GPU share)" if cap is not None else
             f"with the whole GPU{gib} available")
    return (f"CUDA out of memory: {what} {limit}; give the trial a larger GPU share (resources.gpu), or lower "
            "eval_size, batch_size or the eval lengths")


def gpu_total_bytes(device: torch.device) -> Optional[int]:
    try:
        return int(torch.cuda.get_device_properties(device).total_memory)
    except Exception:  # noqa: BLE001 (only for the message)
        return None


def as_memory_error(exc: BaseException, device: torch.device, cap: Optional[float]) -> GpuMemoryError:
    return GpuMemoryError(oom_message(exc, cap, gpu_total_bytes(device)))
