"""Bad input from the command line: one clear line naming the culprit, exit code 2, nothing written."""
import os
from pathlib import Path

import pytest

from orchestrator.cli import main
from tests.conftest import ROOT

QUICK = str(ROOT / "search_spaces" / "quick.yaml")


def tree(path: Path) -> set:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


CASES = [
    # sweep
    (["sweep", "missing.yaml"], "missing.yaml: no such search-space file"),
    (["sweep", "DIR"], "is a directory; expected a search-space YAML file"),
    (["sweep", "EMPTY"], "file: is empty"),
    (["sweep", "BROKEN"], "flow sequence started at line 2, column 9"),
    (["sweep", QUICK, "--name", "a/b"], "--name 'a/b': use letters, digits"),
    (["sweep", QUICK, "--name", ".."], "--name '..': use letters, digits"),
    (["sweep", QUICK, "--cpus-per-trial", "-1"], "--cpus-per-trial -1: must be >= 0"),
    (["sweep", QUICK, "--max-concurrent", "0"], "--max-concurrent 0: must be >= 1"),
    (["sweep", QUICK, "--cpus-per-trial", "0"], "--cpus-per-trial 0: a trial without a GPU needs some CPU"),
    (["sweep", QUICK, "--storage", "FILE"], "is a file, not a directory"),
    (["sweep", QUICK, "--storage", "/proc/adder-sweep-test"], "--storage /proc/adder-sweep-test"),
    # resume / status / report
    (["resume", "nope", "--storage", "."], "no study 'nope' under"),
    (["resume", "../up"], "no study 'up' under"),
    (["resume", "bad..name"], "study name 'bad..name'"),
    (["status", "nope", "--storage", "."], "no study 'nope' under"),
    (["report", "nope", "--storage", "."], "no study 'nope' under"),
    (["compare", "nope", "other", "--storage", "."], "no study 'nope' under"),
    (["board", "nope", "--storage", "."], "no study 'nope' under"),
    # train / add
    (["train", "--type", "cnn"], "cell: unknown cell 'cnn'"),
    (["train", "--len", "0"], "digits: must be between 1 and 10000, got 0"),
    (["train", "--iters", "-5"], "iters: must be >= 1, got -5"),
    (["train", "--lr", "fast"], "lr: expected a number, got 'fast'"),
    (["train", "--mode", "seed", "--len", "5"], "needs >= 10, got 5"),
    (["train", "--resume", "DIR", "--out", "x"], "--resume and --out conflict"),
    (["train", "--out", "FILE/run"], "--out FILE/run"),
    (["add", "nowhere", "1", "2"], "run nowhere: no such run directory or checkpoint"),
    (["add", "DIR", "1.5", "2"], "a '1.5': not a non-negative integer"),
    (["add", "DIR", "1", "2"], "no checkpoint.pt in this directory"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_command_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    (tmp_path / "EMPTY").write_text("")
    (tmp_path / "BROKEN").write_text("space:\n  cell: [rnn\n")
    (tmp_path / "FILE").write_text("x")
    before = tree(tmp_path)
    argv = [str(tmp_path / a) if a in ("DIR", "EMPTY", "BROKEN", "FILE") else
            a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    message = message.replace("FILE", str(tmp_path / "FILE"))
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert message in err[0], err[0]
    assert tree(tmp_path) == before
    assert not os.path.exists("/proc/adder-sweep-test")


def test_a_missing_storage_folder_is_created_and_said(ray_local, tmp_path, monkeypatch, capsys):
    """Like Ray, MLflow and TensorBoard, a sweep creates its storage (with parents) and says where; a launch refused
    after that takes the folder back, and a path that cannot be created stays one line."""
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "one.yaml"
    space.write_text("# one tiny trial\nname: one\nspace: {digits: 3, iters: 20, eval_every: 10, eval_size: 50}\n")
    assert main(["sweep", str(space), "--storage", "new/studies", "--name", "s"]) == 0
    err = capsys.readouterr().err
    assert f"adder-sweep: created the storage folder {tmp_path / 'new' / 'studies'}" in err, err
    assert (tmp_path / "new" / "studies" / "s" / "trials.parquet").is_file()
    assert main(["sweep", str(space), "--storage", "other/studies", "--gpus-per-trial", "1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert "asks for 1 GPU but the Ray cluster has 0" in err[-1] and not (tmp_path / "other").exists(), err
    (tmp_path / "blocker").write_text("x")
    assert main(["sweep", str(space), "--storage", "blocker/studies"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"--storage {tmp_path / 'blocker' / 'studies'}: {tmp_path / 'blocker'} is not a " \
                               "directory" in err[0], err


def test_gpu_request_on_a_cpu_machine_fails_before_any_trial(ray_local, tmp_path, capsys):
    assert main(["sweep", QUICK, "--gpus-per-trial", "1", "--storage", str(tmp_path), "--name", "g"]) == 2
    assert "asks for 1 GPU but the Ray cluster has 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- damaged, foreign and crafted checkpoints: `add`, `train --resume` and a trial's restore ---------------------
class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint.pt would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _good_state(run_dir):
    import torch

    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def _crafted(run_dir, marker):
    import torch

    torch.save({**_good_state(run_dir), "best": _RunsCode(marker)}, run_dir / "checkpoint.pt")


def _missing_config(run_dir, marker):
    import torch

    state = _good_state(run_dir)
    del state["config"]
    torch.save(state, run_dir / "checkpoint.pt")


def _other_version(run_dir, marker):
    import torch

    torch.save({**_good_state(run_dir), "format": "adder-sweep-checkpoint/9"}, run_dir / "checkpoint.pt")


def _foreign(run_dir, marker):
    import torch

    torch.save(torch.nn.Linear(2, 2).state_dict(), run_dir / "checkpoint.pt")  # somebody else's weights


def _truncated(run_dir, marker):
    p = run_dir / "checkpoint.pt"
    p.write_bytes(p.read_bytes()[:400])


def _not_torch(run_dir, marker):
    (run_dir / "checkpoint.pt").write_text("hello\n")


def _wrong_weights(run_dir, marker):
    import torch

    state = _good_state(run_dir)
    state["model"] = {k: v[..., :1] if v.dim() else v for k, v in state["model"].items()}
    torch.save(state, run_dir / "checkpoint.pt")


CHECKPOINT_CASES = [
    (_crafted, "refused to load: the file asks to import or call posix.system"),
    (_missing_config, "damaged checkpoint: missing config"),
    (_other_version, "checkpoint format 'adder-sweep-checkpoint/9', but this version of adder-sweep reads "
                     "'adder-sweep-checkpoint/1'"),
    (_foreign, "not an adder-sweep checkpoint (no 'format' key"),
    (_truncated, "checkpoint is unreadable"),
    (_not_torch, "checkpoint is unreadable"),
    (_wrong_weights, "damaged checkpoint: the weights do not fit its config "
                     "(Error(s) in loading state_dict for AdderNet: size mismatch"),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--len=3", "--iters=20", "--eval-every=10", "--eval-size=50", "--threads=1",
                 "--out", str(run), "--quiet"]) == 0
    return run


@pytest.mark.parametrize("command", ["add", "resume"])
@pytest.mark.parametrize("damage, message", CHECKPOINT_CASES, ids=[c[0].__name__.strip("_") for c in CHECKPOINT_CASES])
def test_bad_checkpoint_is_one_clear_line(trained_run, tmp_path, capsys, command, damage, message):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    marker = tmp_path / "code-ran"
    damage(run, marker)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["add", str(run), "1", "2"] if command == "add" else ["train", "--resume", str(run), "--iters", "40",
                                                                 "--quiet"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert message in err[0] and "checkpoint.pt" in err[0], err[0]
    assert not marker.exists(), "loading the checkpoint ran code"
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing written


def test_truncated_metrics_table_under_train_resume(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    table = run / "metrics.parquet"
    table.write_bytes(table.read_bytes()[:60])
    assert main(["train", "--resume", str(run), "--iters", "40", "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "metrics.parquet: unreadable" in err[0], err
    assert len(table.read_bytes()) == 60


def test_trial_restore_skips_a_crafted_checkpoint_for_an_earlier_one(trained_run, tmp_path):
    """A trial's newest checkpoint in storage was replaced by a crafted file: the restore refuses it without
    running it and falls back to the earlier checkpoint Ray kept."""
    import shutil

    from ray import tune

    from trainables.tune_adapter import load_trial_checkpoint

    trial = tmp_path / "trial"
    for i in (0, 1):
        (trial / f"checkpoint_00000{i}").mkdir(parents=True)
        shutil.copy(trained_run / "checkpoint.pt", trial / f"checkpoint_00000{i}" / "checkpoint.pt")
    marker = tmp_path / "code-ran"
    _crafted(trial / "checkpoint_000001", marker)
    state = load_trial_checkpoint(tune.Checkpoint(str(trial / "checkpoint_000001")))
    assert state["iter"] == 20 and not marker.exists()
    _crafted(trial / "checkpoint_000000", marker)
    from trainables.errors import CheckpointError

    with pytest.raises(CheckpointError, match="refused to load.*no earlier readable checkpoint"):
        load_trial_checkpoint(tune.Checkpoint(str(trial / "checkpoint_000001")))
    assert not marker.exists()


@pytest.mark.parametrize("token", ["missing", "empty"])
def test_token_path_without_a_token_is_one_line_before_ray_starts(tmp_path, token, monkeypatch):
    """RAY_AUTH_TOKEN_PATH naming a missing or empty file, token mode (what a local Ray turns on when
    RAY_AUTH_MODE is unset): Ray would refuse to start with a traceback. With token auth off it is no problem."""
    import subprocess
    import sys

    from orchestrator.cluster.connect import _check_token_file

    path = tmp_path / "token"
    if token == "empty":
        path.write_text("\n")
    (tmp_path / "res").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(ROOT / "search_spaces" / "quick.yaml"),
                        "--storage", str(tmp_path / "res"), "--name", "q"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT), "RAY_AUTH_TOKEN_PATH": str(path)})
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert f"RAY_AUTH_TOKEN_PATH={path}: no token in that file" in err[0]
    assert not (tmp_path / "res" / "q").exists()  # nothing half-written
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _check_token_file()  # no token needed
