"""Training-step throughput of the project against the assignment's loop, and against the machine's matmul rate.

For each cell (rnn, lstm, gru) at 11 and 100 digits, one run times, interleaved round by round:

* project   -- the step of ``trainables.loop.train``: ``train_batch`` (tensor-built data), AdderNet, cross entropy,
               ``zero_grad``, backward, Adam; the loss is accumulated on the device, nothing syncs per step;
* fused     -- the same step with ``kernel: fused`` (``trainables/fused.py``);
* reference -- the assignment's style: numpy random operands, turned into reversed, zero-padded Python digit
               lists with Python loops every batch, ``torch.tensor``, the same model and optimiser, and
               ``loss.item()`` every step.

Each comparison runs at 1 torch thread (what a trial uses by default: one CPU per trial, threads = CPUs) and at
all usable cores. It also measures fp32 ``torch.mm`` GFLOP/s on this machine at the same thread counts and
reports the model FLOP utilisation (MFU) of each step: its matmul FLOPs per second over the large-matmul rate
at the same thread count. ``--explore`` adds the 100-digit experiments of docs/PERFORMANCE.md (threads, oneDNN,
fused Adam, bf16 autocast, larger batches, torch.compile, the fused kernel) with a bit-identity check against the
default step.

    python benchmarks/step.py [--repeats N] [--quick] [--explore] [--out FILE.md]

``run(repeats, quick)`` returns the rows as dicts for ``benchmarks/run.py``. This file only measures: it must
not change the training core, and it imports the core rather than copying it.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from trainables import fused
from trainables.data import sequence_length, train_batch
from trainables.device import tune_allocator
from trainables.model import AdderNet

if __package__:
    from .common import (CoreShare, calls_for, interleaved, machine_info, machine_markdown, markdown_table,
                         median, spread)
else:  # run as a script: python benchmarks/step.py
    from common import (CoreShare, calls_for, interleaved, machine_info, machine_markdown, markdown_table,
                        median, spread)

HIDDEN, EMBED, BATCH, LR, SEED = 64, 32, 200, 1e-3, 0
SHAPES = ((11, 2), (100, 3))  # (digits, layers): the assignment's basic model and the long one
CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
MODE = "full"


# -- FLOPs ----------------------------------------------------------------------------------------------------
def step_flops(cell: str, layers: int, digits: int, batch: int = BATCH, hidden: int = HIDDEN,
               embed: int = EMBED) -> int:
    """Matmul FLOPs of one training step: forward (input and hidden matmuls of every layer and time step, and
    the Linear head) times 3 for forward + backward. Embedding lookups and elementwise gate maths are not counted."""
    g, T = GATES[cell], sequence_length(MODE, digits)
    forward = 0
    for layer in range(layers):
        width_in = 2 * embed if layer == 0 else hidden
        forward += 2 * batch * T * (width_in * g * hidden + hidden * g * hidden)
    forward += 2 * batch * T * hidden * 10
    return 3 * forward


# -- the two steps ----------------------------------------------------------------------------------------------
class ProjectStep:
    """One call is one iteration of ``trainables.loop.train`` (without grad clipping, which is off by default)."""

    def __init__(self, cell: str, digits: int, layers: int, batch: int = BATCH, *, fused_adam: bool = False,
                 autocast_bf16: bool = False, compiled: bool = False, kernel: str = "torch"):
        tune_allocator()  # as train() does; process-wide, so the reference step in this process gets it too
        torch.manual_seed(SEED)
        self.model = AdderNet(cell, layers, HIDDEN, EMBED, MODE, digits, kernel)
        kw = {"fused": True} if fused_adam else {}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR, **kw)
        self.loss_fn = nn.CrossEntropyLoss()
        self.forward = torch.compile(self.model) if compiled else self.model
        self.autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if autocast_bf16
                         else contextlib.nullcontext())
        self.digits, self.batch, self.k = digits, batch, 0
        self.window_loss = torch.zeros(())

    def __call__(self) -> None:
        batch = train_batch(MODE, self.digits, self.batch, SEED, self.k)
        with self.autocast:
            logits = self.forward(batch.a, batch.b)
            loss = self.loss_fn(logits.reshape(-1, 10).float(), batch.target.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.window_loss += loss.detach()
        self.k += 1


def numpy_operands(rng: np.random.RandomState, digits: int, size: int) -> list[int]:
    """``size`` uniform ``digits``-digit operands as Python ints, drawn with numpy as the assignment did.
    int64 holds 18 digits, so longer operands are glued together from 18-digit draws."""
    chunks = []
    left = digits
    while left > 0:
        n = min(18, left)
        chunks.append((n, rng.randint(0, 10 ** n, size=size, dtype=np.int64)))
        left -= n
    out = []
    for i in range(size):
        value = 0
        for n, draws in chunks:
            value = value * 10 ** n + int(draws[i])
        out.append(value)
    return out


def reversed_padded(x: int, length: int) -> list[int]:
    s = str(x)[::-1]
    return [int(c) for c in s] + [0] * (length - len(s))


def assignment_batch(rng: np.random.RandomState, digits: int, size: int):
    """The assignment's batch: Python lists of reversed, zero-padded digits, then ``torch.tensor``."""
    T = sequence_length(MODE, digits)
    a, b = numpy_operands(rng, digits, size), numpy_operands(rng, digits, size)
    xa, xb, y = [], [], []
    for i in range(size):
        xa.append(reversed_padded(a[i], T))
        xb.append(reversed_padded(b[i], T))
        y.append(reversed_padded(a[i] + b[i], T))
    return torch.tensor(xa), torch.tensor(xb), torch.tensor(y)


class ReferenceStep:
    """One call is one iteration of the assignment's loop, with the same model, optimiser and batch size."""

    def __init__(self, cell: str, digits: int, layers: int, batch: int = BATCH):
        torch.manual_seed(SEED)
        self.model = AdderNet(cell, layers, HIDDEN, EMBED, MODE, digits)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.loss_fn = nn.CrossEntropyLoss()
        self.rng = np.random.RandomState(SEED)
        self.digits, self.batch = digits, batch
        self.losses: list[float] = []

    def __call__(self) -> None:
        a, b, y = assignment_batch(self.rng, self.digits, self.batch)
        logits = self.model(a, b)
        loss = self.loss_fn(logits.view(-1, 10), y.view(-1))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())


# -- matmul rate ----------------------------------------------------------------------------------------------
def matmul_shapes(quick: bool) -> list[tuple[str, int, int, int]]:
    """(label, m, k, n): the recurrent matmul of one LSTM step, all time steps' input matmul, a large square."""
    T = sequence_length(MODE, 100)
    big = 512 if quick else 2048
    return [
        ("hidden step (B x H) @ (H x 4H)", BATCH, HIDDEN, 4 * HIDDEN),
        (f"input, all steps (B*T x H) @ (H x 4H), T={T}", BATCH * T, HIDDEN, 4 * HIDDEN),
        (f"large square {big}", big, big, big),
    ]


def matmul_rates(threads: list[int], repeats: int, quick: bool, target_s: float) -> list[dict]:
    rows = []
    saved = torch.get_num_threads()
    try:
        for label, m, k, n in matmul_shapes(quick):
            a, b = torch.randn(m, k), torch.randn(k, n)
            out = torch.empty(m, n)
            cases, calls = {}, {}
            for t in threads:
                torch.set_num_threads(t)
                cases[t] = lambda: torch.mm(a, b, out=out)
                calls[t] = calls_for(cases[t], target_s)
            samples = interleaved(cases, repeats, calls, setup={t: (lambda t=t: torch.set_num_threads(t))
                                                                 for t in threads})
            for t in threads:
                s = median(samples[t])
                rows.append({"shape": label, "m": m, "k": k, "n": n, "threads": t,
                             "gflops": 2 * m * k * n / s / 1e9, "spread": spread(samples[t])})
    finally:
        torch.set_num_threads(saved)
    return rows


def peak_gflops(matmul_rows: list[dict], threads: int) -> Optional[float]:
    """The large-square rate at ``threads``: the fp32 matmul rate this machine reaches."""
    for r in matmul_rows:
        if r["shape"].startswith("large") and r["threads"] == threads:
            return r["gflops"]
    return None


# -- project vs reference -------------------------------------------------------------------------------------
def compare_steps(repeats: int, shapes, cells, target_s: float, peaks: dict[int, Optional[float]],
                  thread_counts: list[int]) -> list[dict]:
    """One row per (threads, cell, digits): project (default kernel), fused (rnn/gru) and reference, interleaved."""
    rows = []
    saved = torch.get_num_threads()
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            peak = peaks.get(threads)
            for digits, layers in shapes:
                for cell in cells:
                    cases: dict[str, Callable[[], None]] = {"project": ProjectStep(cell, digits, layers)}
                    if cell in fused.CELLS:
                        cases["fused"] = ProjectStep(cell, digits, layers, kernel="fused")
                    cases["reference"] = ReferenceStep(cell, digits, layers)
                    calls = {name: calls_for(fn, target_s) for name, fn in cases.items()}
                    samples = interleaved(cases, repeats, calls)
                    proj, ref = median(samples["project"]), median(samples["reference"])
                    flops = step_flops(cell, layers, digits)
                    row = {
                        "cell": cell, "digits": digits, "layers": layers, "batch": BATCH, "threads": threads,
                        "project_ms": proj * 1e3, "project_samples_s": BATCH / proj,
                        "project_spread": spread(samples["project"]),
                        "reference_ms": ref * 1e3, "reference_samples_s": BATCH / ref,
                        "reference_spread": spread(samples["reference"]),
                        "speedup": ref / proj,
                        "gflop_per_step": flops / 1e9,
                        "project_gflops": flops / proj / 1e9,
                        "project_mfu": (flops / proj / 1e9 / peak) if peak else None,
                        "reference_mfu": (flops / ref / 1e9 / peak) if peak else None,
                        "calls_per_round": calls,
                    }
                    if "fused" in samples:
                        fz = median(samples["fused"])
                        row.update({"fused_ms": fz * 1e3, "fused_spread": spread(samples["fused"]),
                                    "fused_speedup": ref / fz, "fused_vs_project": proj / fz,
                                    "fused_gflops": flops / fz / 1e9,
                                    "fused_mfu": (flops / fz / 1e9 / peak) if peak else None})
                    rows.append(row)
                    fused_txt = f", fused {row['fused_ms']:8.2f} ms" if "fused_ms" in row else ""
                    print(f"  {threads} thr {cell:4s} {digits:3d} digits: project {proj * 1e3:8.2f} ms{fused_txt}, "
                          f"reference {ref * 1e3:8.2f} ms", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(saved)
    return rows


def best_kernel(row: dict) -> tuple[str, float, Optional[float]]:
    """(kernel, speedup over the reference, MFU) of the faster of the project's kernels in one row."""
    if row.get("fused_ms") is not None and row["fused_ms"] < row["project_ms"]:
        return "fused", row["fused_speedup"], row.get("fused_mfu")
    return "torch", row["speedup"], row.get("project_mfu")


# -- exploration at 100 digits --------------------------------------------------------------------------------
def variants(max_threads: int, with_compile: bool) -> dict[str, dict[str, Any]]:
    """Name -> settings of one experiment. ``threads``/``onednn`` are process settings applied per block."""
    v: dict[str, dict[str, Any]] = {
        f"default ({max_threads} threads)": {},
        "1 thread": {"threads": 1},
        "oneDNN off (torch.backends.mkldnn)": {"onednn": False},
        "Adam fused=True": {"fused_adam": True},
        "bf16 autocast": {"autocast_bf16": True},
        f"batch {2 * BATCH}": {"batch": 2 * BATCH},
        f"batch {5 * BATCH}": {"batch": 5 * BATCH},
        "kernel: fused": {"kernel": "fused"},
    }
    if with_compile:
        v["torch.compile(model)"] = {"compiled": True}
    return v


def _apply(settings: dict[str, Any], max_threads: int) -> None:
    torch.set_num_threads(settings.get("threads", max_threads))
    torch.backends.mkldnn.enabled = settings.get("onednn", True)


def _build(cell: str, digits: int, layers: int, settings: dict[str, Any]) -> ProjectStep:
    return ProjectStep(cell, digits, layers, settings.get("batch", BATCH),
                       fused_adam=settings.get("fused_adam", False),
                       autocast_bf16=settings.get("autocast_bf16", False),
                       compiled=settings.get("compiled", False), kernel=settings.get("kernel", "torch"))


def _weights_after(cell, digits, layers, settings, max_threads, steps) -> list[torch.Tensor]:
    _apply(settings, max_threads)
    step = _build(cell, digits, layers, settings)
    for _ in range(steps):
        step()
    return [p.detach().clone() for p in step.model.parameters()]


def explore(repeats: int, cells, digits: int, layers: int, target_s: float, check_steps: int,
            with_compile: bool) -> list[dict]:
    """Throughput of each variant against the default step, interleaved, and whether weights after
    ``check_steps`` steps are bit-identical to the default's (only meaningful at the same batch)."""
    max_threads = torch.get_num_threads()
    rows = []
    try:
        for cell in cells:
            vs = variants(max_threads, with_compile)
            steps, calls, setup, extra = {}, {}, {}, {}
            for name, settings in vs.items():
                _apply(settings, max_threads)
                t0 = time.perf_counter()
                steps[name] = _build(cell, digits, layers, settings)
                try:
                    calls[name] = calls_for(steps[name], target_s)
                except Exception as exc:  # an experiment that does not run here is a finding, not a crash
                    extra[name] = f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    del steps[name]
                    continue
                if settings.get("compiled"):
                    extra[name] = f"first calls incl. compile {time.perf_counter() - t0:.0f} s"
                setup[name] = lambda s=settings: _apply(s, max_threads)
            samples = interleaved(steps, repeats, calls, setup=setup)
            base_name = next(iter(vs))
            base = _weights_after(cell, digits, layers, {}, max_threads, check_steps)
            rerun = _weights_after(cell, digits, layers, {}, max_threads, check_steps)
            base_sps = BATCH / median(samples[base_name])
            for name, settings in vs.items():
                row = {"cell": cell, "digits": digits, "variant": name, "note": extra.get(name)}
                if name in samples:
                    s = median(samples[name])
                    b = settings.get("batch", BATCH)
                    row.update({"ms": s * 1e3, "samples_s": b / s, "vs_default": b / s / base_sps,
                                "spread": spread(samples[name])})
                    if b == BATCH:
                        # the default against a rerun of itself: "no" elsewhere is then the variant's doing
                        w = rerun if name == base_name else _weights_after(cell, digits, layers, settings,
                                                                           max_threads, check_steps)
                        same = all(torch.equal(x, y) for x, y in zip(base, w))
                        diff = max((x - y).abs().max().item() for x, y in zip(base, w))
                        row["bit_identical"] = "yes" if same else f"no (max abs diff {diff:.1e})"
                    elif b != BATCH:
                        row["bit_identical"] = "n/a (other batches)"
                rows.append(row)
                print(f"  {cell:4s} {name:36s} {row.get('ms', float('nan')):9.2f} ms  {row.get('note') or ''}",
                      file=sys.stderr, flush=True)
    finally:
        _apply({}, max_threads)
    return rows


# -- entry points ---------------------------------------------------------------------------------------------
def run(repeats: int = 5, quick: bool = False, *, cells=CELLS, explore_100: bool = False,
        with_compile: bool = True) -> dict:
    """All measurements of this benchmark as plain dicts: machine, matmul, steps, explore, others_cores."""
    target_s = 0.03 if quick else 0.3
    repeats = min(repeats, 3) if quick else repeats
    threads = sorted({1, torch.get_num_threads()})
    with CoreShare() as share:
        info = machine_info()
        print("matmul rates ...", file=sys.stderr, flush=True)
        mm = matmul_rates(threads, repeats, quick, target_s / 4)
        peaks = {t: peak_gflops(mm, t) for t in threads}
        print("training steps ...", file=sys.stderr, flush=True)
        steps = compare_steps(repeats, SHAPES, cells, target_s, peaks, threads)
        ex = []
        if explore_100:
            print("exploration at 100 digits ...", file=sys.stderr, flush=True)
            ex = explore(repeats, cells, 100, 3, target_s, check_steps=2 if quick else 3,
                         with_compile=with_compile)
    return {"machine": info, "matmul": mm, "steps": steps, "explore": ex, "repeats": repeats, "quick": quick,
            "wall_s": share.wall_s, "others_cores": share.others}


STEP_COLUMNS = [
    ("threads", "threads", "d"), ("cell", "cell", ""), ("digits", "digits", "d"), ("layers", "layers", "d"),
    ("project_ms", "project ms/iter", ".2f"), ("fused_ms", "fused ms/iter", ".2f"),
    ("reference_ms", "reference ms/iter", ".2f"), ("project_samples_s", "project samples/s", ",.0f"),
    ("speedup", "speedup (ref/project)", ".2f"), ("fused_speedup", "speedup (ref/fused)", ".2f"),
    ("project_mfu", "project MFU", ".1%"), ("fused_mfu", "fused MFU", ".1%"), ("reference_mfu", "reference MFU", ".1%"),
    ("project_spread", "project spread", ".0%"), ("fused_spread", "fused spread", ".0%"),
    ("reference_spread", "ref. spread", ".0%"),
]
MATMUL_COLUMNS = [("shape", "torch.mm fp32", ""), ("threads", "threads", "d"), ("gflops", "GFLOP/s", ".1f"),
                  ("spread", "spread", ".0%")]
EXPLORE_COLUMNS = [("cell", "cell", ""), ("variant", "variant", ""), ("ms", "ms/iter", ".2f"),
                   ("samples_s", "samples/s", ",.0f"), ("vs_default", "vs default", ".2f"),
                   ("bit_identical", "bit-identical", ""), ("spread", "spread", ".0%"), ("note", "note", "")]


def markdown(result: dict) -> str:
    """The result as a markdown section: machine, matmul rates, steps, exploration."""
    others = result["others_cores"]
    parts = [
        "## Training step: project vs the assignment's loop",
        "",
        machine_markdown(result["machine"]),
        f"- repeats: {result['repeats']} interleaved rounds, median reported{' (quick)' if result['quick'] else ''}",
        f"- wall time {result['wall_s']:.0f} s; other processes kept "
        + (f"{others:.2f} cores busy on average meanwhile" if others is not None else "an unknown load")
        + " (spread = (max - min) / median of the rounds)",
        "",
        markdown_table(result["matmul"], MATMUL_COLUMNS),
        "",
        markdown_table(result["steps"], STEP_COLUMNS),
    ]
    if result["explore"]:
        parts += ["", "### Explored at 100 digits (3 layers, batch 200 unless named)", "",
                  markdown_table(result["explore"], EXPLORE_COLUMNS)]
    return "\n".join(parts) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds per case (median reported)")
    p.add_argument("--quick", action="store_true", help="a smoke-test version that takes seconds")
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated subset of rnn,lstm,gru")
    p.add_argument("--explore", action="store_true", help="also run the 100-digit experiments")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the experiments")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the steps (0: torch's default)")
    p.add_argument("--out", type=Path, help="also write the markdown to this file")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    cells = tuple(c for c in args.cells.split(",") if c)
    unknown = [c for c in cells if c not in CELLS]
    if unknown or not cells:
        p.error(f"--cells: unknown cell(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(CELLS)}")
    result = run(args.repeats, args.quick, cells=cells, explore_100=args.explore, with_compile=not args.no_compile)
    text = markdown(result)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
