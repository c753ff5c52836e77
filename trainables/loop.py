"""The plain training loop. Nothing in this file knows about Ray.

``train(config, report, resume_from)`` runs Adam on fresh batches, evaluates every ``eval_every`` iterations on
a fixed evaluation set, and calls ``report(metrics, checkpoint)`` after each evaluation, where ``checkpoint()``
returns the full training state as one dict (built only when the caller asks for it). Resuming from such a dict
gives bit-identical weights and metrics to an uninterrupted run on the same machine (CPU).

Host synchronisation happens only at reports: the training loss is accumulated on the device.
"""
from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import fused
from .checkpoint import CHECKPOINT_FORMAT
from .config import TrainConfig
from .data import eval_set, train_batch
from .device import CUBLAS_WORKSPACE, resolve_device, resume_device, rng_state, set_determinism, set_rng_state, tune_allocator
from .errors import CheckpointError, first_line
from .model import AdderNet

Report = Callable[[dict, Callable[[], dict]], None]


def exact_match(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of sequences with every digit right."""
    return (pred == target).all(dim=1).float().mean()


def digit_match(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of digits right."""
    return (pred == target).float().mean()


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    o = config.optim
    if o.schedule != "plateau":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=o.plateau_factor, patience=o.plateau_patience,
        threshold=o.plateau_threshold, min_lr=o.plateau_min_lr)


@torch.no_grad()
def evaluate(model: AdderNet, sets: dict[int, Any]) -> dict[int, tuple[float, float]]:
    """exact and digit accuracy per evaluation length."""
    model.eval()
    out = {}
    for length, batch in sets.items():
        pred = model.predict(batch.a, batch.b)
        out[length] = (exact_match(pred, batch.target).item(), digit_match(pred, batch.target).item())
    model.train()
    return out


def train(config: TrainConfig, report: Optional[Report] = None, resume_from: Optional[dict] = None,
          *, gpus_assigned: Optional[int] = None) -> dict:
    """Train an AdderNet; returns a summary (status, iters, iters_to_solve, final and best metrics)."""
    config.validate()
    m, d, o, r = config.model, config.data, config.optim, config.run
    if resume_from is not None:
        device, _ = resume_device(resume_from, r.device, gpus_assigned)
    else:
        device = resolve_device(r.device, gpus_assigned)
    if device.type == "cpu":
        tune_allocator()
    # process-wide, so set on every run: a reused Ray worker may have run a trial with the other setting
    torch.set_flush_denormal(r.denormals == "flush")
    if device.type == "cuda":
        # before this run's first cuBLAS handle (a reused worker's earlier trial set it before its own): without
        # it, deterministic mode refuses cuBLAS matmuls; always set, so a later deterministic trial can run
        os.environ.setdefault(*CUBLAS_WORKSPACE)
    set_determinism(r.deterministic, device)
    if r.threads > 0:
        torch.set_num_threads(r.threads)

    torch.manual_seed(r.seed)
    random.seed(r.seed)
    model = AdderNet.from_config(config).to(device)
    if model.uses_fused_kernel(device):
        fused.extension()  # build or load it now: a missing compiler fails here, before any training
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr)
    scheduler = make_scheduler(config, optimizer)
    loss_fn = nn.CrossEntropyLoss()

    it = 0
    best: dict[str, Any] = {}
    last: dict[str, Any] = {}
    iters_to_solve = None
    elapsed = 0.0  # training wall seconds, carried across resumes
    if resume_from is not None:
        ckpt_cfg = resume_from["config"]
        try:
            model.load_state_dict(resume_from["model"])
            optimizer.load_state_dict(resume_from["optimizer"])
            if scheduler is not None and resume_from.get("scheduler") is not None:
                scheduler.load_state_dict(resume_from["scheduler"])
            set_rng_state(resume_from["rng"], device)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint of iteration {resume_from.get('iter')} does not fit this run "
                                  f"(cell {ckpt_cfg.get('cell')}, layers {ckpt_cfg.get('layers')} in the checkpoint "
                                  f"vs {m.cell}, {m.layers} here): {first_line(exc)}") from None
        if ckpt_cfg.get("lr") != o.lr:
            # A new lr in the config (PBT's exploit, or a user's explicit change) replaces the checkpoint's.
            for group in optimizer.param_groups:
                group["lr"] = o.lr
        it = int(resume_from["iter"])
        best = dict(resume_from.get("best", {}))
        last = dict(resume_from.get("last", {}))
        iters_to_solve = resume_from.get("iters_to_solve")
        elapsed = float(resume_from.get("elapsed", 0.0))

    lengths = [d.digits] + [L for L in d.eval_lengths if L != d.digits]
    sets = {L: eval_set(d.mode, L, d.eval_size, r.seed, device) for L in lengths}

    def checkpoint() -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_flat(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "iter": it,
            "rng": rng_state(device),
            "device": device.type,
            "best": best,
            "last": last,
            "iters_to_solve": iters_to_solve,
            "elapsed": elapsed,
        }

    status = "solved" if (last and last.get("exact_acc", 0) >= r.target) else "running"
    window_loss = torch.zeros((), device=device)
    window_n = 0
    t0 = time.perf_counter()
    model.train()
    while status == "running" and it < r.iters:
        batch = train_batch(d.mode, d.digits, d.batch_size, r.seed, it, device)
        logits = model(batch.a, batch.b)
        loss = loss_fn(logits.reshape(-1, 10), batch.target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        window_loss += loss.detach()
        window_n += 1
        it += 1
        if it % r.eval_every and it < r.iters:
            continue

        mean_loss = (window_loss / window_n).item()  # the one host sync per report
        if not math.isfinite(mean_loss):
            status = "diverged"
            break
        acc = evaluate(model, sets)
        now = time.perf_counter()
        elapsed += now - t0
        metrics = {
            "iter": it,
            "loss": mean_loss,
            "exact_acc": acc[d.digits][0],
            "digit_acc": acc[d.digits][1],
            "lr": optimizer.param_groups[0]["lr"],
            "samples_per_s": window_n * d.batch_size / max(now - t0, 1e-9),
            "time_s": elapsed,
        }
        for L in lengths[1:]:
            metrics[f"exact_acc@{L}"] = acc[L][0]
            metrics[f"digit_acc@{L}"] = acc[L][1]
        if scheduler is not None:
            scheduler.step(mean_loss)
        last = metrics
        for k in ("exact_acc", "digit_acc"):
            best[k] = max(best.get(k, 0.0), metrics[k])
        best["loss"] = min(best.get("loss", math.inf), mean_loss)
        if metrics["exact_acc"] >= r.target:
            status = "solved"
            iters_to_solve = it
        elif it >= r.iters:
            status = "budget"
        metrics["status"] = status
        metrics["iters_to_solve"] = iters_to_solve
        if report is not None:
            report(metrics, checkpoint)
        window_loss = torch.zeros((), device=device)
        window_n = 0
        t0 = time.perf_counter()

    if status == "running":
        status = "budget"
        if resume_from is not None and report is not None and last and it == int(resume_from["iter"]):
            # Resumed at the end of the budget (e.g. PBT copied a finished trial's checkpoint): nothing left
            # to train, but the caller still needs this run's final report.
            report({**last, "status": status, "iters_to_solve": iters_to_solve}, checkpoint)
    summary = {
        "status": status,
        "iters": it,
        "iters_to_solve": iters_to_solve,
        "final": last,
        "best": best,
        "wall_s": elapsed,
        "device": str(device),
    }
    if status == "diverged":
        if not last:  # diverged before the first report: nothing finite to keep, the model adds nothing
            last = {"iter": it, "loss": float("nan"), "exact_acc": 0.0, "digit_acc": 0.0,
                    "lr": optimizer.param_groups[0]["lr"], "samples_per_s": 0.0, "time_s": elapsed}
            summary["final"] = last
        if report is not None:
            # The diverged state is not checkpointed: the last finite checkpoint stays the latest one.
            report({**last, "iter": it, "status": "diverged", "iters_to_solve": iters_to_solve}, None)
    summary["model"] = model
    return summary
