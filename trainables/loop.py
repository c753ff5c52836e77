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
from .device import (CUBLAS_WORKSPACE, as_memory_error, hide_accelerators, limit_gpu_memory, resolve_device,
                     resume_device, rng_state, set_determinism, set_rng_state, tune_allocator)
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
          *, gpus_assigned: Optional[int] = None, gpu_share: Optional[float] = None) -> dict:
    """Train an AdderNet; returns a summary (status, iters, iters_to_solve, final and best metrics, device,
    kernel). ``gpus_assigned``/``gpu_share``: the GPUs a scheduler gave the run (a Ray trial's), which decide
    ``device: auto`` and cap the run's GPU memory at its share."""
    config.validate()
    device, cap = prepare_device(config, resume_from, gpus_assigned, gpu_share)
    run = _Run(config, device)
    if resume_from is not None:
        run.restore(resume_from)
    try:
        run.loop(report, resumed=resume_from is not None)
    except torch.OutOfMemoryError as exc:
        raise as_memory_error(exc, device, cap) from None
    return run.summary(report)


def prepare_device(config: TrainConfig, resume_from: Optional[dict], gpus_assigned: Optional[int],
                   gpu_share: Optional[float]) -> tuple[torch.device, Optional[float]]:
    """The run's device, and the process-wide settings that go with it, set on every run (a reused Ray worker
    may have run a trial with other settings); returns the device and the GPU memory cap (None: none)."""
    r = config.run
    if resume_from is not None:
        device, _ = resume_device(resume_from, r.device, gpus_assigned)
    else:
        device = resolve_device(r.device, gpus_assigned)
    if device.type == "cpu":
        tune_allocator()
        if gpus_assigned is not None:  # a scheduler's process (a Ray trial): the GPUs here are not this run's
            hide_accelerators()
    torch.set_flush_denormal(r.denormals == "flush")
    if device.type == "cuda":
        # before this run's first cuBLAS handle (a reused worker's earlier trial set it before its own): without
        # it, deterministic mode refuses cuBLAS matmuls; always set, so a later deterministic trial can run
        os.environ.setdefault(*CUBLAS_WORKSPACE)
    set_determinism(r.deterministic, device)
    if r.threads > 0:
        torch.set_num_threads(r.threads)
    return device, limit_gpu_memory(device, gpu_share)


class _Run:
    """One run's model, optimizer, schedule, evaluation sets and progress; ``loop`` trains it."""

    def __init__(self, config: TrainConfig, device: torch.device):
        m, d, o, r = config.model, config.data, config.optim, config.run
        self.config, self.device = config, device
        torch.manual_seed(r.seed)
        random.seed(r.seed)
        self.model = AdderNet.from_config(config).to(device=device, dtype=getattr(torch, r.dtype))
        self.kernel = "fused" if self.model.uses_fused_kernel(device) else "torch"
        if self.kernel == "fused":
            fused.extension()  # build or load it now: a missing compiler fails here, before any training
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr)
        self.scheduler = make_scheduler(config, self.optimizer)
        self.loss_fn = nn.CrossEntropyLoss()
        self.it, self.iters_to_solve, self.elapsed = 0, None, 0.0  # elapsed: training seconds, across resumes
        self.best: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.lengths = [d.digits] + [L for L in d.eval_lengths if L != d.digits]
        self.sets = {L: eval_set(d.mode, L, d.eval_size, r.seed, device) for L in self.lengths}
        self.status = "running"
        self.start_iter: Optional[int] = None

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint dict (``checkpoint``); CheckpointError if it does not fit this run."""
        m, o = self.config.model, self.config.optim
        ckpt_cfg = state["config"]
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], self.device)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint of iteration {state.get('iter')} does not fit this run "
                                  f"(cell {ckpt_cfg.get('cell')}, layers {ckpt_cfg.get('layers')} in the checkpoint "
                                  f"vs {m.cell}, {m.layers} here): {first_line(exc)}") from None
        if ckpt_cfg.get("lr") != o.lr:
            # A new lr in the config (PBT's exploit, or a user's explicit change) replaces the checkpoint's.
            for group in self.optimizer.param_groups:
                group["lr"] = o.lr
        self.it = self.start_iter = int(state["iter"])
        self.best = dict(state.get("best", {}))
        self.last = dict(state.get("last", {}))
        self.iters_to_solve = state.get("iters_to_solve")
        self.elapsed = float(state.get("elapsed", 0.0))
        if self.last and self.last.get("exact_acc", 0) >= self.config.run.target:
            self.status = "solved"

    def checkpoint(self) -> dict:
        """The full training state as one dict (built only when a report's caller asks for it)."""
        return {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_flat(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "iter": self.it, "rng": rng_state(self.device), "device": self.device.type, "best": self.best,
            "last": self.last, "iters_to_solve": self.iters_to_solve, "elapsed": self.elapsed,
        }

    def step(self) -> torch.Tensor:
        """One training iteration on batch ``it``; the loss stays on the device."""
        d, o = self.config.data, self.config.optim
        batch = train_batch(d.mode, d.digits, d.batch_size, self.config.run.seed, self.it, self.device)
        logits = self.model(batch.a, batch.b)
        loss = self.loss_fn(logits.reshape(-1, 10), batch.target.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.optimizer.step()
        self.it += 1
        return loss.detach()

    def loop(self, report: Optional[Report], resumed: bool) -> None:
        """Train until solved, diverged or out of budget, reporting after every evaluation."""
        r = self.config.run
        dtype = getattr(torch, r.dtype)  # (float64 runs sum their losses in float64 too)
        window_loss, window_n = torch.zeros((), device=self.device, dtype=dtype), 0
        t0 = time.perf_counter()
        self.model.train()
        while self.status == "running" and self.it < r.iters:
            window_loss += self.step()
            window_n += 1
            if self.it % r.eval_every and self.it < r.iters:
                continue
            mean_loss = (window_loss / window_n).item()  # the one host sync per report
            if not math.isfinite(mean_loss):
                self.status = "diverged"
                break
            metrics = self.evaluate(mean_loss, window_n, t0)
            if report is not None:
                report(metrics, self.checkpoint)
            window_loss, window_n = torch.zeros((), device=self.device, dtype=dtype), 0
            t0 = time.perf_counter()
        if self.status == "running":
            self.status = "budget"
            if resumed and report is not None and self.last and self.it == self.start_iter:
                # Resumed at the end of the budget (e.g. PBT copied a finished trial's checkpoint): nothing left
                # to train, but the caller still needs this run's final report.
                report({**self.last, "status": self.status, "iters_to_solve": self.iters_to_solve},
                       self.checkpoint)

    def evaluate(self, mean_loss: float, window_n: int, t0: float) -> dict:
        """The report of iteration ``it``: loss, accuracies, lr and speed; updates best, status and the schedule."""
        d, r = self.config.data, self.config.run
        acc = evaluate(self.model, self.sets)
        now = time.perf_counter()
        self.elapsed += now - t0
        metrics = {"iter": self.it, "loss": mean_loss, "exact_acc": acc[d.digits][0], "digit_acc": acc[d.digits][1],
                   "lr": self.optimizer.param_groups[0]["lr"],
                   "samples_per_s": window_n * d.batch_size / max(now - t0, 1e-9), "time_s": self.elapsed,
                   "device": self.device.type, "kernel": self.kernel}
        for L in self.lengths[1:]:
            metrics[f"exact_acc@{L}"] = acc[L][0]
            metrics[f"digit_acc@{L}"] = acc[L][1]
        if self.scheduler is not None:
            self.scheduler.step(mean_loss)
        self.last = metrics
        for k in ("exact_acc", "digit_acc"):
            self.best[k] = max(self.best.get(k, 0.0), metrics[k])
        self.best["loss"] = min(self.best.get("loss", math.inf), mean_loss)
        if metrics["exact_acc"] >= r.target:
            self.status = "solved"
            self.iters_to_solve = self.it
        elif self.it >= r.iters:
            self.status = "budget"
        metrics["status"] = self.status
        metrics["iters_to_solve"] = self.iters_to_solve
        return metrics

    def summary(self, report: Optional[Report]) -> dict:
        """The run's outcome; a diverged run reports its end (without a checkpoint: the last finite one stays)."""
        out = {"status": self.status, "iters": self.it, "iters_to_solve": self.iters_to_solve, "final": self.last,
               "best": self.best, "wall_s": self.elapsed, "device": str(self.device), "kernel": self.kernel}
        if self.status == "diverged":
            if not self.last:  # diverged before the first report: nothing finite to keep, the model adds nothing
                self.last = {"iter": self.it, "loss": float("nan"), "exact_acc": 0.0, "digit_acc": 0.0,
                             "lr": self.optimizer.param_groups[0]["lr"], "samples_per_s": 0.0,
                             "time_s": self.elapsed}
                out["final"] = self.last
            if report is not None:
                report({**self.last, "iter": self.it, "status": "diverged",
                        "iters_to_solve": self.iters_to_solve}, None)
        out["model"] = self.model
        return out
