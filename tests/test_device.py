"""Device decisions (trainables/device.py), tested on a machine without a GPU: which device a run takes, which
random-number states it saves and restores, when a resumed run may change device, and the determinism flags.
torch's own accelerator queries are replaced where a test needs a machine that has one; Ray is not involved."""
import json
import os

import pytest
import torch

from tests.conftest import run_cli
from trainables import TrainConfig, train
from trainables.device import resolve_device, resume_device, rng_state, set_determinism, set_rng_state
from trainables.errors import DeviceError

TINY = {"cell": "rnn", "digits": 3, "iters": 20, "eval_every": 10, "eval_size": 50, "seed": 1, "threads": 1}


class _Stream:
    def is_capturing(self):
        return False


@pytest.fixture
def gpu_machine(monkeypatch):
    """torch of a CUDA build on a machine with a GPU, as far as a process that has not initialised CUDA can tell:
    CUDA is available unless ``CUDA_VISIBLE_DEVICES`` is empty. Every other CUDA or accelerator call is recorded
    (each would initialise CUDA in the process and hold memory on a GPU); the torch.cuda ones also fail."""
    touched = []

    def touch(name, result=None):
        def call(*args, **kwargs):
            touched.append(name)
            if result is None:
                raise AssertionError(f"a CPU run called torch.{name}")
            return result
        return call

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0")  # set here so that the test's end restores it
    visible = lambda: os.environ.get("CUDA_VISIBLE_DEVICES") != ""  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", visible)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for name in ("get_rng_state_all", "get_rng_state", "set_rng_state_all", "set_rng_state", "init",
                 "current_device", "device_count"):
        monkeypatch.setattr(torch.cuda, name, touch(f"cuda.{name}"))
    # what torch's own code asks (Adam.step's graph-capture check, in every CUDA build)
    monkeypatch.setattr(torch.accelerator, "current_accelerator",
                        lambda check_available=False: torch.device("cuda") if visible() or not check_available
                        else None)
    monkeypatch.setattr(torch.accelerator, "current_stream", touch("accelerator.current_stream", _Stream()))
    monkeypatch.setattr(torch.accelerator, "current_device_index", touch("accelerator.current_device_index", 0))
    return touched


def test_a_cpu_trial_on_a_gpu_machine_never_asks_cuda(gpu_machine):
    """A run a scheduler gave no GPU (a Ray trial) hides the GPUs from its process before torch asks, so neither
    its own code nor torch's Adam initialises CUDA; so does ``adder-sweep train --device cpu``."""
    checkpoints = []
    summary = train(TrainConfig.from_flat({**TINY, "device": "auto"}), report=lambda m, c: checkpoints.append(c()),
                    gpus_assigned=0)
    assert summary["device"] == "cpu" and gpu_machine == []
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["HIP_VISIBLE_DEVICES"] == ""
    assert all("cuda" not in c["rng"] and c["device"] == "cpu" for c in checkpoints)
    resumed = train(TrainConfig.from_flat({**TINY, "device": "cpu", "iters": 30}), resume_from=checkpoints[0],
                    gpus_assigned=0)
    assert resumed["iters"] == 30 and gpu_machine == []


def test_the_train_command_on_the_cpu_hides_the_gpus_of_its_process(gpu_machine, tmp_path):
    from orchestrator.cli import main

    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["train", *flags, "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert gpu_machine == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["device"] == "cpu"


def test_a_library_call_on_the_cpu_leaves_its_callers_gpus_visible(gpu_machine):
    """``train()`` in someone's own process changes no environment: their later GPU work must still see the
    GPUs. Its own code asks CUDA nothing (torch's Adam may, which is torch's to decide)."""
    summary = train(TrainConfig.from_flat({**TINY, "device": "cpu"}))
    assert summary["device"] == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert not [t for t in gpu_machine if t.startswith("cuda.")], gpu_machine
    # a Ray trial given no GPU share uses the CPU without asking torch about accelerators at all
    assert resolve_device("auto", gpus_assigned=0).type == "cpu"


def test_a_gpu_share_takes_the_accelerator_torch_has(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", gpus_assigned=0.25).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)  # Apple silicon: Ray counts MPS as a GPU
    assert resolve_device("auto", gpus_assigned=1).type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="given 1 GPU but torch sees neither CUDA nor MPS"):
        resolve_device("auto", gpus_assigned=1)
    with pytest.raises(DeviceError, match="device cuda was requested but torch sees no CUDA device"):
        resolve_device("cuda")


def test_only_the_gpu_a_run_uses_has_its_rng_state_saved_and_restored(monkeypatch):
    saved, restored = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: saved.append(device) or torch.zeros(8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: restored.append((device, state)))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: pytest.fail("every visible GPU's state asked for"))
    gpu1 = torch.device("cuda", 1)
    state = rng_state(gpu1)
    assert saved == [gpu1] and torch.equal(state["cuda"], torch.zeros(8))
    set_rng_state(state, gpu1)
    assert restored[-1][0] == gpu1
    # a checkpoint of the old format kept a list, one per GPU visible then; resumed where fewer are visible
    old = {**state, "cuda": [torch.ones(8)]}
    restored.clear()
    set_rng_state(old, gpu1)  # was an IndexError in torch.cuda.set_rng_state_all
    assert restored == []
    set_rng_state(old, torch.device("cuda", 0))
    assert torch.equal(restored[0][1], torch.ones(8))
    set_rng_state(old, torch.device("cpu"))  # a CPU run ignores GPU states
    assert len(restored) == 1


def test_a_resumed_run_changes_device_only_when_told(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_gpu = {"device": "cuda", "iter": 300, "config": {"device": "auto"}}
    with pytest.raises(DeviceError, match=r"the run trained on cuda \(checkpoint of iteration 300\) and would "
                                          r"continue on cpu here \(device auto\); continue it on cpu explicitly "
                                          r"with --device cpu"):
        resume_device(on_gpu, "auto")
    with pytest.raises(DeviceError, match="no CUDA device, and the run trained on cuda .*--device cpu"):
        resume_device(on_gpu, "cuda")
    device, note = resume_device(on_gpu, "cpu")
    assert device.type == "cpu" and "continuing on cpu a run that trained on cuda" in note
    assert resume_device({"device": "cpu", "iter": 5}, "auto") == (torch.device("cpu"), "")
    assert resume_device({"iter": 5, "config": {"device": "auto"}}, "auto")[1] == ""  # old checkpoint: unknown


def test_determinism_flags_follow_the_device_and_the_opt_out():
    set_determinism(True, torch.device("cuda"))
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    set_determinism(False, torch.device("cuda"))  # deterministic: false in a study
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    set_determinism(True, torch.device("cuda"))
    set_determinism(True, torch.device("cpu"))  # a reused worker's next trial, on the CPU: torch's defaults again
    assert not torch.are_deterministic_algorithms_enabled()
    assert TrainConfig().run.deterministic is True
    assert TrainConfig.from_flat({"deterministic": "false"}).run.deterministic is False  # a flag's text


def test_batches_are_drawn_on_the_cpu_whatever_the_device():
    """A CUDA generator draws other numbers than the CPU's for the same seed: batches come from a CPU generator
    and are copied, so a GPU study and a CPU study see the same data. The meta device has no generator at all."""
    from trainables.data import eval_set, train_batch

    batch = train_batch("full", 5, 8, seed=1, k=3, device="meta")
    assert batch.a.device.type == "meta" and batch.target.shape == (8, 6)
    assert eval_set("seed", 12, 8, seed=1, device="meta").a.shape == (8, 12)


def test_train_resume_of_a_gpu_run_without_cuda_is_one_line_and_device_cpu_continues(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--len=3", "--iters=20", "--eval-every=10", "--target=2", "--out", out, "--quiet", check=0)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({**state, "device": "cuda"}, out / "checkpoint.pt")  # as a run on a GPU machine left it
    p = run_cli("train", "--resume", out, "--iters=40", "--quiet")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "the run trained on cuda (checkpoint of iteration 20)" in p.stderr and "--device cpu" in p.stderr
    before = json.loads((out / "run.json").read_text())
    assert "resumed" not in before  # nothing written by the refused resume
    p = run_cli("train", "--resume", out, "--iters=40", "--device", "cpu", "--quiet", check=0)
    assert "continuing on cpu a run that trained on cuda" in p.stderr, p.stderr
    assert json.loads((out / "summary.json").read_text())["iters"] == 40
    p = run_cli("train", "--resume", out, "--iters=50", "--device", "cuda", "--quiet")
    assert p.returncode == 2 and "only --iters" in p.stderr  # cpu is the one device a resume may be moved to


def test_a_gpu_share_caps_the_allocator_and_an_oom_names_the_ask_and_the_cap(monkeypatch):
    from trainables.device import limit_gpu_memory, oom_message

    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: calls.append(fraction))
    assert limit_gpu_memory(torch.device("cuda", 0), 0.25) == 0.25 and calls == ["empty", 0.25]
    assert limit_gpu_memory(torch.device("cuda", 0), 1) is None and calls[-1] == 1.0  # a reused worker: no cap
    calls.clear()
    assert limit_gpu_memory(torch.device("cpu"), 0.25) is None and calls == []
    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.56 GiB. GPU 0 has a total capacity of "
                                 "139.72 GiB of which 1.00 GiB is free.")
    line = oom_message(exc, 0.25, 150 * 2**30)
    assert line.startswith("CUDA out of memory: tried to allocate 2.56 GiB with this trial capped at 25% of the "
                           "GPU's 150.0 GiB (its GPU share)") and "\n" not in line


def test_an_out_of_memory_trial_is_marked_so_its_retry_fails_at_once(tmp_path):
    import pyarrow.fs as pafs

    from trainables.errors import GpuMemoryError
    from trainables.tune_adapter import OomMarker

    marker = OomMarker(pafs.LocalFileSystem(), str(tmp_path))
    marker.raise_if_marked()  # nothing marked: the trial runs
    marker.mark("CUDA out of memory: tried to allocate 2.56 GiB with this trial capped at 25%")
    with pytest.raises(GpuMemoryError, match=r"tried to allocate 2.56 GiB .* \(an earlier attempt of this trial; "
                                             r"not retried\)"):
        marker.raise_if_marked()


def test_the_kernel_that_ran_is_recorded_not_the_one_asked_for():
    """kernel: fused runs rnn and gru on the CPU only; an lstm trial asked for it runs torch's kernel, and its
    reports (and trials.parquet's kernel_ran) say torch."""
    reports = []
    lstm = train(TrainConfig.from_flat({**TINY, "cell": "lstm", "kernel": "fused"}),
                 report=lambda m, c: reports.append(m))
    assert lstm["kernel"] == "torch" and {r["kernel"] for r in reports} == {"torch"}
    assert {r["device"] for r in reports} == {"cpu"}
    rnn = train(TrainConfig.from_flat({**TINY, "kernel": "fused"}))
    assert rnn["kernel"] == "fused"
