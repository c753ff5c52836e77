"""Search-space files: the shipped ones validate; each malformed one fails with its own message."""
import os
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.spec.plan import num_trials
from orchestrator.spec.space import parse_space, read_space_file
from tests.conftest import ROOT

BAD = sorted((ROOT / "tests" / "data" / "bad_spaces").glob("*.yaml"))
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    if not first.startswith("# expect: "):
        return "is empty"
    return first[len("# expect: "):]


def test_corpus_is_big_enough():
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_space_fails_clearly_and_writes_nothing(path, tmp_path, capsys):
    storage = tmp_path / "store"
    assert main(["sweep", str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert str(path) in err[0] and expected_message(path) in err[0], err[0]
    assert not storage.exists()
    assert main(["validate", str(path)]) == 2


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_file_validates_and_starts_with_a_comment(path, capsys):
    spec, text = read_space_file(path)
    assert text.startswith("#"), "every search-space file starts with a comment block saying what it studies"
    assert num_trials(spec) >= 1
    assert main(["validate", str(path)]) == 0
    assert f"trials: {num_trials(spec)}" in capsys.readouterr().out


def test_trial_count_and_resolved_space():
    spec = parse_space("num_samples: 3\nspace:\n  cell: {grid: [rnn, gru]}\n  digits: {grid: [5, 11, 20]}\n"
                       "  lr: {loguniform: [1e-4, 1e-2]}\n", "x.yaml")
    assert num_trials(spec) == 18 and spec.swept_keys() == ["cell", "digits", "lr"]


def test_many_problems_are_reported_together():
    with pytest.raises(Exception) as e:
        parse_space("space:\n  layer: 3\n  lr: {uniform: [2, 1]}\nscheduler: {type: asha, foo: 1}\n", "x.yaml")
    assert "3 problems" in str(e.value) and "space.layer" in str(e.value) and "scheduler.foo" in str(e.value)


def test_directory_and_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "no such search-space file" in capsys.readouterr().err


def test_conflicting_and_bad_flags(tmp_path, capsys):
    space = ROOT / "search_spaces" / "quick.yaml"
    assert main(["sweep", str(space), "--cpus-per-trial", "-1", "--storage", str(tmp_path / "s")]) == 2
    assert "--cpus-per-trial -1: must be >= 0" in capsys.readouterr().err
    assert main(["sweep", str(space), "--name", "a/../b", "--storage", str(tmp_path / "s")]) == 2
    assert "--name 'a/../b'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_unwritable_storage_fails_before_ray(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sweep", str(ROOT / "search_spaces" / "quick.yaml"), "--storage", str(blocker / "sub")]) == 2
    assert f"file/sub: {blocker} is not a directory" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["file"]


def test_set_overrides_entries_of_the_space(capsys):
    path = str(ROOT / "search_spaces" / "seed_lr.yaml")
    assert main(["validate", path, "--set", "digits={grid: [100]}", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "trials: 12 (12 grid points x 1 sample x 1 seed [0]" in out and "grid(100)" in out
    assert main(["validate", path, "--set", "digitz=3"]) == 2
    assert "space.digitz: unknown training-config key (did you mean 'digits'?)" in capsys.readouterr().err
    assert main(["validate", path, "--set", "digits"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("text, ok", [
    ("resources: {gpu: 0}\nspace: {device: cuda}\n", False),
    ("space: {device: {grid: [cpu, mps]}}\n", False),
    ("resources: {gpu: 0.25}\nspace: {device: cuda}\n", True),
    ("resources: {gpu: 0.25}\nspace: {device: cpu}\n", True),  # the logical-GPU scheduling test's setting
    ("space: {device: auto}\n", True),
])
def test_a_gpu_device_needs_a_gpu_share(tmp_path, capsys, text, ok):
    """cuda or mps with gpu 0 would put trials on GPU 0 that Ray does not count: refused at validate, naming both
    keys; so is a --gpus-per-trial 0 that takes the share away."""
    path = tmp_path / "dev.yaml"
    path.write_text("# device check\n" + text)
    assert main(["validate", str(path)]) == (0 if ok else 2)
    err = capsys.readouterr().err
    if not ok:
        assert "space.device:" in err and "needs a GPU share, but resources.gpu is 0" in err, err
        assert len(err.strip().splitlines()) == 1
    elif "cuda" in text:
        assert main(["sweep", str(path), "--gpus-per-trial", "0", "--storage", str(tmp_path / "s")]) == 2
        assert "--gpus-per-trial 0: space.device: cuda needs a GPU share" in capsys.readouterr().err
        assert not (tmp_path / "s").exists()
