"""The Ray Tune adapter: the only file in ``trainables`` that imports Ray.

Gets the trial's checkpoint, calls the unchanged training loop, and passes each report to ``tune.report``,
attaching a checkpoint every ``checkpoint_every`` reports and at the last one. Threads follow the trial's CPUs;
a trial given a GPU trains on CUDA.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import ray
from ray import tune

from .config import TrainConfig
from .loop import CHECKPOINT_FILE, load_checkpoint, save_checkpoint, train


def trial_threads(config: dict, cpus: float) -> int:
    """torch threads for a trial: the config's ``threads`` if set, else the trial's whole CPUs (at least 1)."""
    return int(config.get("threads") or max(1, int(cpus)))


def run_trial(config: dict, checkpoint_every: int = 5) -> None:
    """A Ray Tune function trainable around ``trainables.loop.train``."""
    # Ray logs every saved checkpoint at INFO from the worker; the live table already shows progress.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    resources = tune.get_context().get_trial_resources().required_resources
    cfg = TrainConfig.from_flat({**config, "threads": trial_threads(config, resources.get("CPU", 1))})
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    node = ray.get_runtime_context().get_node_id()
    eval_every = cfg.run.eval_every

    def report(metrics: dict, make_checkpoint) -> None:
        metrics = {**metrics, "node": node, "pid": os.getpid()}
        final = metrics["status"] != "running"
        # Checkpoint points depend on the iteration alone, so a resumed trial checkpoints where the original would.
        due = final or (metrics["iter"] // eval_every) % checkpoint_every == 0
        if make_checkpoint is None or not due:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(make_checkpoint(), Path(tmp) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    train(cfg, report=report, resume_from=state, gpus_assigned=len(ray.get_gpu_ids()))
