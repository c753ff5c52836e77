"""Addition data, generated as tensors: no Python loops over examples or digits.

Digits are least-significant first. Two modes:

* ``full`` -- operands are uniform over all d-digit strings (leading zeros allowed). Inputs and targets have
  d + 1 steps, so the final carry has a step of its own.
* ``seed`` -- the assignment's protocol: training operands are integers in [0, 555555555), evaluation operands in
  [555555555, 999999999), reversed and zero-padded to ``digits`` steps.

Training batch k of a run is a pure function of (seed, k); the evaluation set is a pure function of
(seed, mode, length) -- whatever the device: the operands are drawn by a CPU generator and copied to the device
(torch's CUDA generator draws other numbers for the same seed, which would make a GPU study and a CPU study
incomparable seed for seed); digits and sums are computed on the device. Nothing here knows about models or
training.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch

from .seeding import stream_seed  # noqa: F401  (re-exported: data streams are named by it)

SEED_TRAIN_RANGE = (0, 555_555_555)
SEED_EVAL_RANGE = (555_555_555, 999_999_999)


@dataclass
class Batch:
    a: torch.Tensor  # (B, T) int64 digits, least-significant first
    b: torch.Tensor  # (B, T)
    target: torch.Tensor  # (B, T) digits of a + b


def _generator(seed: int) -> torch.Generator:
    """The CPU generator of one batch: the same numbers on every machine and for every training device."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def sequence_length(mode: str, digits: int) -> int:
    """Steps of an input/target sequence for ``digits``-digit operands."""
    return digits + 1 if mode == "full" else digits


def add_digits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Digit-wise sum with carries, vectorised over batch and position.

    A carry enters position i iff the nearest position j < i whose digit sum is not 9 has a digit sum >= 10
    (nines only pass a carry along). That turns the sequential carry chain into a cumulative max.
    """
    s = a + b  # 0..18
    B, T = s.shape
    pos = torch.arange(T, device=s.device).expand(B, T)
    last_not_nine = torch.where(s != 9, pos, torch.full_like(pos, -1)).cummax(dim=1).values
    # carry into i depends on the last non-nine position strictly before i
    prev = torch.cat([torch.full_like(pos[:, :1], -1), last_not_nine[:, :-1]], dim=1)
    carry_in = (prev >= 0) & (s.gather(1, prev.clamp(min=0)) >= 10)
    return (s + carry_in.long()) % 10


def int_digits(x: torch.Tensor, length: int) -> torch.Tensor:
    """Digits of non-negative int64 values, least-significant first, zero-padded to ``length``."""
    n = min(length, 19)
    powers = 10 ** torch.arange(n, device=x.device, dtype=torch.int64)
    d = (x.unsqueeze(1) // powers) % 10
    if length > n:
        d = torch.cat([d, torch.zeros(x.shape[0], length - n, dtype=torch.int64, device=x.device)], dim=1)
    return d


def make_batch(mode: str, digits: int, size: int, seed: int, device: torch.device | str = "cpu",
               split: str = "train") -> Batch:
    """A batch that depends only on its arguments. ``split`` is ``train`` or ``eval`` (seed mode ranges)."""
    device = torch.device(device)
    g = _generator(seed)
    if mode == "full":
        ab = torch.randint(0, 10, (2, size, digits), generator=g).to(device)
        pad = torch.zeros(2, size, 1, dtype=torch.int64, device=device)
        ab = torch.cat([ab, pad], dim=2)
        a, b = ab[0], ab[1]
        return Batch(a, b, add_digits(a, b))
    if mode == "seed":
        lo, hi = SEED_TRAIN_RANGE if split == "train" else SEED_EVAL_RANGE
        ab = torch.randint(lo, hi, (2, size), generator=g, dtype=torch.int64).to(device)
        a, b = int_digits(ab[0], digits), int_digits(ab[1], digits)
        return Batch(a, b, int_digits(ab[0] + ab[1], digits))
    raise ValueError(f"unknown data mode {mode!r}")


def train_batch(mode: str, digits: int, size: int, seed: int, k: int, device: torch.device | str = "cpu") -> Batch:
    """Training batch ``k`` of a run with ``seed``."""
    return make_batch(mode, digits, size, stream_seed("train", seed, mode, digits, k), device, "train")


def eval_set(mode: str, digits: int, size: int, seed: int, device: torch.device | str = "cpu") -> Batch:
    """The fixed evaluation set of (seed, mode, length)."""
    return make_batch(mode, digits, size, stream_seed("eval", seed, mode, digits), device, "eval")


def digits_to_int(d: torch.Tensor | list[int]) -> int:
    """Least-significant-first digits to a Python int (any size)."""
    values = d.tolist() if isinstance(d, torch.Tensor) else list(d)
    s = "".join(str(int(v)) for v in reversed(values)).lstrip("0") or "0"
    return int_from_str(s)


def int_to_digits(x: int, length: int) -> list[int]:
    """A non-negative Python int to ``length`` least-significant-first digits."""
    if x < 0:
        raise ValueError(f"only non-negative integers can be added, got {x}")
    s = str_from_int(x)
    if len(s) > length:
        raise ValueError(f"{len(s)}-digit number does not fit in {length} digits")
    return [int(c) for c in reversed(s)] + [0] * (length - len(s))


@contextlib.contextmanager
def _unlimited_int_digits():
    """Python refuses int<->str conversions past 4300 digits by default; the adder works on any size. (Pythons
    before 3.10.7 have neither the limit nor the functions.)"""
    if not hasattr(sys, "get_int_max_str_digits"):
        yield
        return
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(old)


def int_from_str(s: str) -> int:
    with _unlimited_int_digits():
        return int(s)


def str_from_int(x: int) -> str:
    with _unlimited_int_digits():
        return str(x)
