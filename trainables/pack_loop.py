"""The training loop of a pack: K members trained as one batched model (trainables/packed.py), each as
``trainables.loop.train`` would train it alone -- its own initial weights, batches, evaluation set, learning rate,
plateau schedule, gradient clipping, target, budget and outcome. Nothing in this file knows about Ray.

``train_pack(configs, report)`` calls ``report(reports, checkpoint)`` after each evaluation round, where
``reports`` maps a member's index to the metrics it reported (the same keys as a lone run's report, plus
``member``) and ``checkpoint()`` returns the whole pack's state as one dict. A member that has ended (solved,
diverged, out of budget) stops changing; the pack ends when every member has ended. Resuming from a checkpoint
gives the numbers of an uninterrupted pack (the RNG is not drawn from: batches and evaluation sets are functions of
each member's seed and iteration).

What members must share is ``PACK_SHARED``: the shape of the model and of a step, and the process-wide settings.
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable, Optional

import torch

from .checkpoint import PACK_FORMAT
from .config import PACK_SHARED, ConfigError, TrainConfig
from .errors import CheckpointError, first_line
from .data import eval_set, train_batch
from .loop import digit_match, exact_match, prepare_device
from .model import AdderNet
from .packed import PackedAdam, PackedAdderNet, clip_member_grads, member_losses


PackReport = Callable[[dict[int, dict], Callable[[], dict]], None]


def check_packable(configs: list[TrainConfig]) -> None:
    if not configs:
        raise ConfigError([("pack", "a pack needs at least one member")], "pack")
    first = configs[0].to_flat()
    problems = []
    for i, c in enumerate(configs[1:], 1):
        flat = c.to_flat()
        problems += [(k, f"member {i} has {flat[k]!r}, member 0 {first[k]!r}: members of a pack share it")
                     for k in PACK_SHARED if flat[k] != first[k]]
    if problems:
        raise ConfigError(problems, "pack")


class _Member:
    """One member's progress: what ``loop._Run`` keeps for a lone run."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.status, self.iters_to_solve, self.ended_at = "running", None, None
        self.best: dict = {}
        self.last: dict = {}
        self.scheduler = None
        if config.optim.schedule == "plateau":  # torch's own rule, on a one-group stand-in optimizer
            o = config.optim
            self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=o.lr)
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self._opt, mode="min", factor=o.plateau_factor, patience=o.plateau_patience,
                threshold=o.plateau_threshold, min_lr=o.plateau_min_lr)

    def lr_after(self, mean_loss: float, lr: float) -> float:
        if self.scheduler is None:
            return lr
        self._opt.param_groups[0]["lr"] = lr
        self.scheduler.step(mean_loss)
        return self._opt.param_groups[0]["lr"]


class _Pack:
    def __init__(self, configs: list[TrainConfig], device: torch.device):
        self.configs, self.device = configs, device
        dtype = getattr(torch, configs[0].run.dtype)
        models = []
        for c in configs:  # each member's initial weights as its lone run draws them
            torch.manual_seed(c.run.seed)
            random.seed(c.run.seed)
            models.append(AdderNet.from_config(c))
        self.model = PackedAdderNet.from_members(models).to(device=device, dtype=dtype)
        self.members = [_Member(c) for c in configs]
        self.optimizer = PackedAdam(self.model.parameters(),
                                    torch.tensor([c.optim.lr for c in configs], dtype=torch.float64, device=device))
        self.clip = torch.tensor([c.optim.grad_clip for c in configs], dtype=dtype, device=device)
        d = configs[0].data
        self.lengths = [d.digits] + [L for L in d.eval_lengths if L != d.digits]
        self.sets = {L: [eval_set(d.mode, L, d.eval_size, c.run.seed, device) for c in configs] for L in self.lengths}
        # each member's own iteration: members continued from an earlier study generation start where they ended
        self.its = [0] * len(configs)
        self.it, self.elapsed = 0, 0.0  # the pack's steps
        self.window = torch.zeros(len(configs), dtype=dtype, device=device)
        self.window_n = torch.zeros(len(configs), dtype=torch.int64, device=device)

    def active(self) -> torch.Tensor:
        return torch.tensor([m.status == "running" and it < m.config.run.iters
                             for m, it in zip(self.members, self.its)],
                            device=self.device)

    def step(self, active: torch.Tensor) -> torch.Tensor:
        d = self.configs[0].data
        batches = [train_batch(d.mode, d.digits, d.batch_size, c.run.seed, it, self.device)
                   for c, it in zip(self.configs, self.its)]
        a, b = torch.stack([x.a for x in batches]), torch.stack([x.b for x in batches])
        losses = member_losses(self.model(a, b), torch.stack([x.target for x in batches]))
        self.optimizer.zero_grad()
        # a finished member's loss is left out: it may be NaN (diverged), and its gradient is not used
        torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
        clip_member_grads(self.model, self.clip)
        self.optimizer.step(active)
        self.it += 1
        self.its = [it + int(on) for it, on in zip(self.its, active.tolist())]
        return losses.detach()

    @torch.no_grad()
    def evaluate_all(self) -> dict[int, list[tuple[float, float]]]:
        """Per length, each member's (exact, digit) accuracy on its own evaluation set, in chunks of 1,000."""
        out = {}
        for L, sets in self.sets.items():
            a, b = torch.stack([s.a for s in sets]), torch.stack([s.b for s in sets])
            target = torch.stack([s.target for s in sets])
            pred = torch.cat([self.model(a[:, i:i + 1000], b[:, i:i + 1000]).argmax(-1)
                              for i in range(0, a.shape[1], 1000)], dim=1)
            out[L] = [(exact_match(pred[k], target[k]).item(), digit_match(pred[k], target[k]).item())
                      for k in range(len(sets))]
        return out

    def report_round(self, due: list[int], window: torch.Tensor, window_n: torch.Tensor, t0: float) -> dict:
        """The reports of the members due at iteration ``it``: as ``loop._Run.evaluate`` makes them."""
        d = self.configs[0].data
        acc = self.evaluate_all()
        now = time.perf_counter()
        self.elapsed += now - t0
        out = {}
        for k in due:
            m, r = self.members[k], self.configs[k].run
            n = int(window_n[k])
            mean_loss = (window[k] / max(n, 1)).item()
            if not math.isfinite(mean_loss):
                m.status, m.ended_at = "diverged", self.its[k]
                continue
            lr = self.optimizer.lr[k].item()
            metrics = {"iter": self.its[k], "loss": mean_loss, "exact_acc": acc[d.digits][k][0],
                       "digit_acc": acc[d.digits][k][1], "lr": lr,
                       "samples_per_s": n * d.batch_size / max(now - t0, 1e-9), "time_s": self.elapsed,
                       "device": self.device.type, "kernel": "packed", "member": k}
            for L in self.lengths[1:]:
                metrics[f"exact_acc@{L}"], metrics[f"digit_acc@{L}"] = acc[L][k]
            self.optimizer.lr[k] = m.lr_after(mean_loss, lr)
            m.last = metrics
            for key in ("exact_acc", "digit_acc"):
                m.best[key] = max(m.best.get(key, 0.0), metrics[key])
            m.best["loss"] = min(m.best.get("loss", math.inf), mean_loss)
            if metrics["exact_acc"] >= r.target:
                m.status, m.iters_to_solve = "solved", self.its[k]
            elif self.its[k] >= r.iters:
                m.status = "budget"
            metrics["status"], metrics["iters_to_solve"] = m.status, m.iters_to_solve
            out[k] = metrics
        return out

    def loop(self, report: Optional[PackReport]) -> None:
        window, window_n = self.window, self.window_n  # each member's loss sum and steps since its last report
        t0 = time.perf_counter()
        while True:
            active = self.active()
            if not bool(active.any()):
                break
            losses = self.step(active)
            window += torch.where(active, losses, torch.zeros_like(window))
            window_n += active.to(torch.int64)
            due = [i for i, m in enumerate(self.members) if bool(active[i]) and
                   (self.its[i] % m.config.run.eval_every == 0 or self.its[i] >= m.config.run.iters)]
            if not due:
                continue
            reports = self.report_round(due, window, window_n, t0)
            for i in due:
                window[i], window_n[i] = 0.0, 0
            # (after the reset: a checkpoint holds the windows of members not due now, which a resume goes on with)
            if report is not None and reports:
                report(reports, self.checkpoint)
            t0 = time.perf_counter()
        for m in self.members:
            if m.status == "running":
                m.status = "budget"

    def checkpoint(self) -> dict:
        return {"format": PACK_FORMAT, "configs": [c.to_flat() for c in self.configs],
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedulers": [m.scheduler.state_dict() if m.scheduler is not None else None for m in self.members],
                "members": [{"status": m.status, "iters_to_solve": m.iters_to_solve, "best": m.best, "last": m.last,
                             "ended_at": m.ended_at} for m in self.members],
                "iter": self.it, "its": list(self.its), "elapsed": self.elapsed, "device": self.device.type,
                "window": self.window.clone(), "window_n": self.window_n.clone()}

    def restore(self, state: dict) -> None:
        check_pack_state(state, self.configs)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"damaged pack checkpoint: its weights do not fit the pack ({first_line(exc)})") \
                from None
        for m, s, ms in zip(self.members, state["schedulers"], state["members"]):
            if m.scheduler is not None and s is not None:
                m.scheduler.load_state_dict(s)
            m.status, m.iters_to_solve, m.best, m.last = ms["status"], ms["iters_to_solve"], ms["best"], ms["last"]
            m.ended_at = ms.get("ended_at")
        self.it, self.elapsed = int(state["iter"]), float(state["elapsed"])
        if "window" in state:
            self.window.copy_(state["window"])
            self.window_n.copy_(state["window_n"])
        self.its = [int(i) for i in state.get("its") or [self.it] * len(self.members)]
        for m, it in zip(self.members, self.its):
            if m.status == "budget" and it < m.config.run.iters:  # continued to a larger budget
                m.status = "running"

    def summaries(self, report: Optional[PackReport]) -> list[dict]:
        out, ended = [], {}
        for k, m in enumerate(self.members):
            if m.status == "diverged":
                if not m.last:
                    m.last = {"iter": m.ended_at, "loss": float("nan"), "exact_acc": 0.0, "digit_acc": 0.0,
                              "lr": self.optimizer.lr[k].item(), "samples_per_s": 0.0, "time_s": self.elapsed}
                ended[k] = {**m.last, "iter": m.ended_at, "status": "diverged", "iters_to_solve": m.iters_to_solve,
                            "member": k}
            iters = m.ended_at if m.status == "diverged" else m.last.get("iter", self.its[k])
            out.append({"status": m.status, "iters": iters, "iters_to_solve": m.iters_to_solve, "final": m.last,
                        "best": m.best, "wall_s": self.elapsed, "device": str(self.device), "kernel": "packed"})
        if ended and report is not None:
            report(ended, None)
        return out


def check_pack_state(state: dict, configs: list[TrainConfig]) -> None:
    """CheckpointError unless ``state`` is a checkpoint of this pack: the same members in the same order (their
    budgets and threads may differ: a longer budget continues a member)."""
    saved = state.get("configs")
    if not isinstance(saved, list) or len(saved) != len(configs) or len(state.get("members") or []) != len(configs):
        raise CheckpointError(f"the pack checkpoint holds {len(saved) if isinstance(saved, list) else 'no'} "
                              f"members, the pack has {len(configs)}: it is another pack's")
    for k, (old, c) in enumerate(zip(saved, configs)):
        new = c.to_flat()
        differ = sorted(key for key in new if key not in ("iters", "threads") and old.get(key) != new[key])
        if differ:
            raise CheckpointError(f"the pack checkpoint's member {k} trained with {differ[0]}={old.get(differ[0])!r}, "
                                  f"the pack's has {new[differ[0]]!r}: it is another pack's")


def train_pack(configs: list[TrainConfig], report: Optional[PackReport] = None, resume_from: Optional[dict] = None,
               *, gpus_assigned: Optional[int] = None, gpu_share: Optional[float] = None) -> list[dict]:
    """Train the members of a pack; returns each member's summary (as ``loop.train`` returns a lone run's,
    without the model). ConfigError if the members do not share ``PACK_SHARED``."""
    for c in configs:
        c.validate()
    check_packable(configs)
    device, _ = prepare_device(configs[0], None, gpus_assigned, gpu_share)
    pack = _Pack(configs, device)
    if resume_from is not None:
        pack.restore(resume_from)
    pack.loop(report)
    return pack.summaries(report)
