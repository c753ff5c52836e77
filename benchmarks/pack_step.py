"""The packed section of ``make bench``: one packed training step of K members (trainables/packed.py) against K
single steps of the same members (AdderNet, torch.optim.Adam), at 1 torch thread, 11 digits, batch 200.

Measured side by side: for each cell, hidden size and K, rounds alternate the K single steps and the packed step
(same batches, same members) and the medians give the speed-up K x single / packed. Only the step: data, forward,
loss, backward, clipping, Adam -- not evaluation, not Ray: what the batched maths buys. What a packed study
buys as a whole (a Ray trial, evaluation and reports per pack instead of per trial) is benchmarks/pack_study.py.

    python benchmarks/pack_step.py [--quick] [--json out.json]

This file only measures; it changes nothing in the project.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DIGITS, BATCH = 11, 200


def _single_steps(models, opts, batches, loss_fn) -> None:
    for model, opt, b in zip(models, opts, batches):
        loss = loss_fn(model(b.a, b.b).reshape(-1, 10), b.target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _packed_step(pack, opt, a, b, target) -> None:
    from trainables.packed import member_losses

    losses = member_losses(pack(a, b), target)
    opt.zero_grad()
    losses.sum().backward()
    opt.step()


def measure(cell: str, hidden: int, k: int, rounds: int, min_s: float) -> dict:
    import torch
    from torch import nn

    from trainables.data import train_batch
    from trainables.model import AdderNet
    from trainables.packed import PackedAdam, PackedAdderNet

    torch.manual_seed(0)
    models = [AdderNet(cell, 2, hidden=hidden, embed=32, digits=DIGITS) for _ in range(k)]
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in models]
    pack = PackedAdderNet.from_members(models)
    popt = PackedAdam(pack.parameters(), torch.full((k,), 1e-3, dtype=torch.float64))
    batches = [train_batch("full", DIGITS, BATCH, s, 0) for s in range(k)]
    a, b = torch.stack([x.a for x in batches]), torch.stack([x.b for x in batches])
    target = torch.stack([x.target for x in batches])
    loss_fn = nn.CrossEntropyLoss()

    def timed(fn) -> float:
        fn()  # warm-up of this block
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - start >= min_s:
                return (time.perf_counter() - start) / n

    singles, packed = [], []
    for _ in range(rounds):
        singles.append(timed(lambda: _single_steps(models, opts, batches, loss_fn)))
        packed.append(timed(lambda: _packed_step(pack, popt, a, b, target)))
    s, p = statistics.median(singles), statistics.median(packed)
    return {"cell": cell, "hidden": hidden, "k": k, "single_ms": s / k * 1000, "k_singles_ms": s * 1000,
            "packed_ms": p * 1000, "speedup": s / p,
            "spread": (max(packed) - min(packed)) / p if p else None}


def run(quick: bool = False) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cells = ("rnn",) if quick else ("rnn", "gru", "lstm")
    hiddens = (16,) if quick else (16, 64)
    ks = (4,) if quick else (4, 16, 64)
    rows = [measure(c, h, k, 2 if quick else 3, 0.05 if quick else 0.3) for c in cells for h in hiddens for k in ks]
    return {"threads": 1, "digits": DIGITS, "batch": BATCH, "torch": torch.__version__, "rows": rows}


def markdown(res: dict) -> list[str]:
    out = [f"One training step of K members, 1 thread, {res['digits']} digits, batch {res['batch']} (torch "
           f"{res['torch']}): K single AdderNet steps one after another against one packed step; speed-up = K x "
           "single / packed, medians of interleaved rounds. The step only (no evaluation, no Ray).", "",
           "| cell | hidden | K | one single step, ms | K single steps, ms | packed step, ms | speed-up |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        out.append(f"| {r['cell']} | {r['hidden']} | {r['k']} | {r['single_ms']:.2f} | {r['k_singles_ms']:.1f} | "
                   f"{r['packed_ms']:.1f} | {r['speedup']:.2f}x |")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="rnn, hidden 16, K 4 only: a smoke check")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args(argv)
    res = run(args.quick)
    print("\n".join(markdown(res)))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
