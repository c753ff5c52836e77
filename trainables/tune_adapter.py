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
from typing import Optional

import ray
from ray import tune

from .config import TrainConfig
from .errors import GpuMemoryError

# ``.loop`` (and so torch) is imported inside the functions: the sweep's driver imports this module to name the
# trainable, and has no use for torch; the trial worker imports it when the trial starts.


def trial_threads(config: dict, cpus: float) -> int:
    """torch threads for a trial: the config's ``threads`` if set, else the trial's whole CPUs (at least 1)."""
    return int(config.get("threads") or max(1, int(cpus)))


def load_trial_checkpoint(checkpoint: tune.Checkpoint, fmt: Optional[str] = None) -> dict:
    """The trial's latest readable checkpoint: if the newest is damaged (a truncated file), fall back to the
    earlier ones Ray kept beside it; resuming from an earlier iteration replays the same batches. ``fmt``: the
    checkpoint format (default: a single run's)."""
    import pyarrow.fs as pafs

    from .checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT, CheckpointError, load_checkpoint

    fmt = fmt or CHECKPOINT_FORMAT
    try:
        with checkpoint.as_directory() as d:
            return load_checkpoint(Path(d) / CHECKPOINT_FILE, fmt)
    except CheckpointError as exc:
        error = exc
    parent, _, newest = checkpoint.path.rstrip("/").rpartition("/")
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    earlier = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                      and i.base_name.startswith("checkpoint_") and i.base_name < newest), reverse=True)
    for path in earlier:
        try:
            with tune.Checkpoint(path, filesystem=checkpoint.filesystem).as_directory() as d:
                state = load_checkpoint(Path(d) / CHECKPOINT_FILE, fmt)
        except CheckpointError:
            continue
        logging.getLogger(__name__).warning("%s; resuming from the earlier %s (iteration %d)", error, path, state["iter"])
        return state
    raise CheckpointError(f"{error}; no earlier readable checkpoint in {parent}")


def node_check(fs, marker_path: str, token: str, fused: bool = False, cuda: bool = False) -> dict:
    """What a trial needs on this node, run by the driver's probe before a study starts (one zero-CPU task per
    node): the training loop importable, the study's storage visible through the filesystem object trials use (a
    marker file the driver wrote, with its content), for ``kernel: fused`` a C++ compiler and ninja, and for
    trials that train on CUDA a torch that sees a CUDA device."""
    import platform
    import shutil
    import socket

    out = {"host": socket.gethostname(), "python": platform.python_version(), "ray": ray.__version__}
    try:
        import torch

        from . import loop  # noqa: F401  (torch, the model and the data: what a trial imports)

        out["torch"] = torch.__version__
    except Exception as exc:  # ImportError, or a broken torch install
        out["problem"] = (f"cannot import the training loop ({type(exc).__name__}: {exc}); install torch (and "
                          "pyarrow, numpy) on this node, or add them with --runtime-env '{\"pip\": [...]}'")
        return out
    try:
        with fs.open_input_stream(marker_path) as f:
            seen = f.read().decode()
    except Exception as exc:  # FileNotFoundError, permission, credentials, network
        out["problem"] = (f"the study storage is not visible from this node: it cannot read {marker_path} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); a local "
                          "--storage must be a filesystem every node shares (NFS), or use object storage (s3://...) "
                          "with credentials on every node")
        return out
    if seen != token:
        out["problem"] = (f"{marker_path} on this node is not the file the driver wrote: the storage path is a "
                          "different directory here; use a shared filesystem or object storage")
        return out
    if cuda and not torch.cuda.is_available():
        out["problem"] = (f"trials train on CUDA and this node offers GPUs to Ray, but its torch {torch.__version__} "
                          "sees no CUDA device (a CPU-only torch build, or a driver mismatch); install a CUDA build "
                          "of torch there, or run the study with --gpus-per-trial 0")
        return out
    if fused:
        missing = [name for name, ok in (("a C++ compiler (c++)", shutil.which("c++") or shutil.which("g++")),
                                         ("ninja", shutil.which("ninja") or _ninja_module())) if not ok]
        if missing:
            out["problem"] = (f"kernel: fused builds a C++ extension on each node at first use, and this node lacks "
                              f"{' and '.join(missing)}; install them, or use kernel: torch")
    return out


def _ninja_module() -> bool:
    try:
        import ninja  # noqa: F401

        return True
    except ImportError:
        return False


def training_config(config: dict) -> tuple[dict, dict]:
    """Split a trial's Tune config into the training config and what the driver passes besides: ``_continues``
    (JSON: the predecessor's checkpoint for a trial continued to a larger budget) and Tune's ``__trial_index__``
    (Optuna studies' replicate index, added to the seed)."""
    import json

    from .seeding import training_values

    continues = config.get("_continues", "") or ""
    return training_values(config), (json.loads(continues) if continues else {})


def checkpoint_at(uri: str) -> tune.Checkpoint:
    """A checkpoint directory given as a local path or a URI (an ``s3://...?endpoint_override=...`` one too)."""
    import pyarrow.fs as pafs

    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
    else:
        fs, path = pafs.LocalFileSystem(), uri
    return tune.Checkpoint(path, filesystem=fs)


class OomMarker:
    """A file in the trial's folder on storage (``gpu_out_of_memory.txt``) holding the line of a CUDA
    out-of-memory error. Tune retries any error up to ``max_failures`` times, and the same trial on the same GPU
    share runs out of memory again: its retry fails at once with the same line instead."""

    NAME = "gpu_out_of_memory.txt"

    def __init__(self, fs, folder: str):
        self.fs, self.path = fs, f"{folder.rstrip('/')}/{self.NAME}"

    @classmethod
    def of_trial(cls) -> "OomMarker":
        storage = tune.get_context().get_storage()
        return cls(storage.storage_filesystem, storage.trial_fs_path)

    def raise_if_marked(self) -> None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                line = f.read().decode().strip()
        except (FileNotFoundError, OSError):
            return
        raise GpuMemoryError(f"{line} (an earlier attempt of this trial; not retried)")

    def mark(self, line: str) -> None:
        try:
            with self.fs.open_output_stream(self.path) as f:
                f.write(line.encode())
        except OSError:
            pass  # without the marker the retry runs out of memory again: slower, not wrong


def gpu_fields() -> dict:
    """What a report says of GPUs: the ids Ray gave the trial (a fractional share: one id, shared) and the
    devices its process sees -- none when it trains on the CPU (trainables.device.hide_accelerators)."""
    return {"gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def send_report(metrics: dict, make_checkpoint=None) -> None:
    """``tune.report`` of ``metrics``, with the checkpoint ``make_checkpoint()`` returns attached if given."""
    from .checkpoint import CHECKPOINT_FILE, save_checkpoint

    if make_checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(make_checkpoint(), Path(tmp) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def run_trial(config: dict, checkpoint_every: int = 5) -> None:
    """A Ray Tune function trainable around ``trainables.loop.train`` -- or, for a trial whose config holds
    ``_pack`` (the driver's packed trials), around ``trainables.pack_loop.train_pack`` (``run_pack``)."""
    from .loop import train

    if config.get("_pack"):
        return run_pack(config, checkpoint_every)
    # Ray logs every saved checkpoint at INFO from the worker; the live table already shows progress.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    resources = tune.get_context().get_trial_resources().required_resources
    config, continues = training_config(config)
    cfg = TrainConfig.from_flat({**config, "threads": trial_threads(config, resources.get("CPU", 1))})
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # this trial's own checkpoint: a retry, a restore, or a PBT exploit
        state = load_trial_checkpoint(checkpoint)
    elif continues:  # a trial continued in a later generation of its study: its predecessor's last checkpoint
        state = load_trial_checkpoint(checkpoint_at(continues["checkpoint"]))
    else:
        state = None
    node = ray.get_runtime_context().get_node_id()
    eval_every = cfg.run.eval_every

    def report(metrics: dict, make_checkpoint) -> None:
        metrics = {**metrics, "node": node, "pid": os.getpid(), **gpu_fields()}
        final = metrics["status"] != "running"
        # Checkpoint points depend on the iteration alone, so a resumed trial checkpoints where the original would.
        send_report(metrics, make_checkpoint if final or (metrics["iter"] // eval_every) % checkpoint_every == 0
                    else None)

    oom = OomMarker.of_trial()
    oom.raise_if_marked()  # a retry of a trial that ran out of GPU memory would only run out again
    try:
        train(cfg, report=report, resume_from=state, gpus_assigned=len(ray.get_gpu_ids()),
              gpu_share=resources.get("GPU"))
    except GpuMemoryError as exc:
        oom.mark(str(exc))
        raise


PACK_SCORES = {"exact_acc": max, "digit_acc": max, "loss": min}  # the pack's own value: its best member's


def pack_members(config: dict) -> list[dict]:
    """The training configs of a packed trial's members: the trial's config (the study's constants) with each
    member's own values from ``_pack`` (JSON, a list of mappings) over it."""
    import json

    from .seeding import training_values

    base = training_values(config)
    return [training_values({**base, **m}) for m in json.loads(config["_pack"])]


def run_pack(config: dict, checkpoint_every: int = 5) -> None:
    """One Tune trial training the members of ``_pack`` as one batched model (continuing the pack checkpoint
    that ``_continues`` names, if it has no checkpoint of its own: members continued to a larger budget). Each report carries the members
    that reported in this evaluation round under ``members`` (member index -> what a lone trial reports) and, for
    Tune's metric and its live table, the best of their scores. A checkpoint (every member) is attached every
    ``checkpoint_every`` rounds and at every round in which a member ended, so the last one holds each member as
    it ended."""
    from .checkpoint import PACK_FORMAT
    from .pack_loop import train_pack

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    resources = tune.get_context().get_trial_resources().required_resources
    members = pack_members(config)
    threads = trial_threads(members[0], resources.get("CPU", 1))
    cfgs = [TrainConfig.from_flat({**m, "threads": threads}) for m in members]
    checkpoint = tune.get_checkpoint()
    _, continues = training_config(config)
    if checkpoint is None and continues:  # a pack continued by `extend`: its predecessor's last checkpoint
        checkpoint = checkpoint_at(continues["checkpoint"])
    state = load_trial_checkpoint(checkpoint, PACK_FORMAT) if checkpoint is not None else None
    node = ray.get_runtime_context().get_node_id()
    eval_every = cfgs[0].run.eval_every

    def report(reports: dict, make_checkpoint) -> None:
        gpus = gpu_fields()
        got = {str(k): {**m, "node": node, "pid": os.getpid(), **gpus}
               for k, m in reports.items()}
        metrics = {"members": got, "iter": max(m["iter"] for m in reports.values()), "node": node,
                   **{k: best(m[k] for m in reports.values()) for k, best in PACK_SCORES.items()}}
        ended = any(m["status"] != "running" for m in reports.values())
        send_report(metrics, make_checkpoint if ended or (metrics["iter"] // eval_every) % checkpoint_every == 0
                    else None)

    train_pack(cfgs, report=report, resume_from=state, gpus_assigned=len(ray.get_gpu_ids()),
               gpu_share=resources.get("GPU"))
