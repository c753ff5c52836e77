import math
import random

import pytest
import torch

from trainables import TrainConfig, load_checkpoint, load_model, save_checkpoint, train
from trainables.errors import CheckpointError

# threads pinned: float results depend on torch's thread count, which other tests change process-wide
TINY = {"cell": "rnn", "digits": 5, "iters": 600, "eval_every": 50, "eval_size": 500, "seed": 1, "threads": 1}


def test_learns_five_digit_addition():
    """A real run: rnn, 5 digits, a few hundred iterations reaches exact accuracy >= 0.95."""
    from trainables.data import digits_to_int, int_to_digits

    reports = []
    summary = train(TrainConfig.from_flat({**TINY, "iters": 1500, "target": 0.95}),
                    report=lambda m, c: reports.append(m))
    assert summary["status"] == "solved"
    assert summary["final"]["exact_acc"] >= 0.95
    first = next(r["iter"] for r in reports if r["exact_acc"] >= 0.95)
    assert summary["iters_to_solve"] == first == reports[-1]["iter"]
    assert {"iter", "loss", "exact_acc", "digit_acc", "lr", "samples_per_s"} <= reports[0].keys()
    assert reports[0]["loss"] > reports[-1]["loss"]
    # add() is the model's own prediction, and a model this accurate gets most fresh sums right
    model = summary["model"]
    rng = random.Random(7)
    pairs = [(rng.randrange(10**5), rng.randrange(10**5)) for _ in range(200)]
    for a, b in pairs[:20]:
        pred = model.predict(torch.tensor([int_to_digits(a, 6)]), torch.tensor([int_to_digits(b, 6)]))
        assert model.add(a, b) == digits_to_int(pred[0])
    assert sum(model.add(a, b) == a + b for a, b in pairs) >= 180


def test_budget_status_and_eval_lengths():
    summary = train(TrainConfig.from_flat({**TINY, "iters": 100, "eval_lengths": [8], "target": 1.5}))
    assert summary["status"] == "budget" and summary["iters"] == 100 and summary["iters_to_solve"] is None
    assert "exact_acc@8" in summary["final"]


def _poison_weights_at(iteration):
    """A report callback that sets the classifier's weights to NaN at ``iteration`` (the state dict shares the
    parameters' storage): the run then diverges at its next report whatever the torch version's rounding."""
    reports = []

    def report(metrics, checkpoint):
        reports.append(metrics)
        if metrics["iter"] == iteration:
            checkpoint()["model"]["dense.weight"].fill_(float("nan"))

    return reports, report


def test_diverging_run_keeps_last_finite_metrics():
    reports, report = _poison_weights_at(10)
    summary = train(TrainConfig.from_flat({**TINY, "iters": 300, "eval_every": 5, "target": 1.5}), report=report)
    assert summary["status"] == "diverged" and summary["iters"] == 15
    assert [r["status"] for r in reports] == ["running", "running", "diverged"]
    assert all(math.isfinite(r["loss"]) for r in reports[:-1])
    assert summary["final"] == reports[-2]
    assert reports[-1]["exact_acc"] == reports[-2]["exact_acc"]  # the last finite metrics are what it reports


def test_diverging_before_the_first_report_reports_zero_accuracy():
    """An absurd lr turns the loss non-finite within a few iterations (which one depends on the torch version's
    rounding: 5 on 2.13, 10 on 2.14); with reports every 200 that is before the first report in any case."""
    reports = []
    summary = train(TrainConfig.from_flat({**TINY, "lr": 1e22, "iters": 400, "eval_every": 200, "target": 1.5}),
                    report=lambda m, c: reports.append(m))
    assert summary["status"] == "diverged" and summary["iters"] == 200
    assert [(r["status"], r["exact_acc"]) for r in reports] == [("diverged", 0.0)]
    assert summary["final"]["exact_acc"] == 0.0 and math.isnan(summary["final"]["loss"])


def test_plateau_schedule_reduces_lr():
    cfg = TrainConfig.from_flat({**TINY, "schedule": "plateau", "lr": 0.02, "plateau_patience": 0,
                                 "plateau_threshold": 10.0, "plateau_min_lr": 0.005, "iters": 200, "target": 1.5})
    lrs = []
    train(cfg, report=lambda m, c: lrs.append(m["lr"]))
    assert lrs[0] == 0.02 and lrs[1] == 0.01 and lrs[-1] == 0.005


def _strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "time_s")} for r in rows]


def _assert_same_weights(a, b):
    for (k, x), y in zip(a["model"].state_dict().items(), b["model"].state_dict().values()):
        assert torch.equal(x, y), k


def _interrupt_and_resume(cfg, tmp_path, at: int):
    """Run ``cfg``, checkpoint and interrupt it at iteration ``at``, resume from that checkpoint.
    Returns (reports of both parts, the checkpoint state, the resumed run's summary)."""
    reports = []

    def stop(metrics, checkpoint):
        reports.append(metrics)
        if metrics["iter"] == at:
            save_checkpoint(checkpoint(), tmp_path / "checkpoint.pt")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=stop)
    state = load_checkpoint(tmp_path)
    resumed = train(cfg, report=lambda m, c: reports.append(m), resume_from=state)
    return reports, state, resumed


def test_resume_is_bit_identical(tmp_path):
    cfg = TrainConfig.from_flat({**TINY, "cell": "lstm", "iters": 300, "schedule": "plateau", "lr": 0.01,
                                 "target": 1.5})
    full_reports = []
    full = train(cfg, report=lambda m, c: full_reports.append(m))

    part_reports, state, resumed = _interrupt_and_resume(cfg, tmp_path, at=150)
    assert state["iter"] == 150
    assert _strip_timing(part_reports) == _strip_timing(full_reports)
    _assert_same_weights(full, resumed)


def test_load_model_and_corrupt_checkpoint(tmp_path):
    cfg = TrainConfig.from_flat({**TINY, "cell": "gru", "layers": 1, "iters": 50})
    saved = {}
    train(cfg, report=lambda m, c: saved.setdefault("state", c()))
    path = save_checkpoint(saved["state"], tmp_path / "checkpoint.pt")
    model = load_model(tmp_path)
    assert model.cell == "gru" and model.rnn.num_layers == 1
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="checkpoint.pt: checkpoint is unreadable"):
        load_model(path)
    with pytest.raises(CheckpointError, match="missing: no such checkpoint file"):
        load_model(tmp_path / "missing")


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_fused_kernel_learns_and_resumes_bit_identically(cell, tmp_path):
    """kernel=fused: a real run learns 5-digit addition; a second run, interrupted at a mid-run checkpoint and
    resumed from it, reports the same numbers at every step (so a rerun is deterministic too) and ends with
    bit-identical weights."""
    cfg = TrainConfig.from_flat({**TINY, "cell": cell, "kernel": "fused", "iters": 400, "target": 1.5})
    full_reports = []
    full = train(cfg, report=lambda m, c: full_reports.append(m))
    assert full["final"]["exact_acc"] >= 0.9
    assert full["model"].uses_fused_kernel(torch.device("cpu"))

    part_reports, _, resumed = _interrupt_and_resume(cfg, tmp_path, at=200)
    assert _strip_timing(part_reports) == _strip_timing(full_reports)
    _assert_same_weights(full, resumed)


def test_allocator_tuning_applies_on_glibc():
    """train() keeps large step temporaries on malloc's heap (docs/PERFORMANCE.md); on glibc the calls succeed."""
    import platform

    from trainables.device import tune_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning is glibc-only")
    assert tune_allocator() is True
    assert tune_allocator() is True  # idempotent


def test_denormal_setting_does_not_change_a_stable_run():
    """denormals=flush only changes values below 1.2e-38; a stable run gives the same numbers either way."""
    cfg = TrainConfig.from_flat({**TINY, "iters": 150, "target": 1.5})
    flushed = train(cfg)
    kept = train(cfg.replace(denormals="keep"))
    assert cfg.run.denormals == "flush"
    for key in ("loss", "exact_acc", "digit_acc"):
        assert flushed["final"][key] == kept["final"][key], key
    _assert_same_weights(flushed, kept)
    torch.set_flush_denormal(False)  # leave the process as torch starts it
