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
    (["sweep", QUICK, "--storage", "nowhere/studies"], "--storage"),
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


def test_gpu_request_on_a_cpu_machine_fails_before_any_trial(ray_local, tmp_path, capsys):
    assert main(["sweep", QUICK, "--gpus-per-trial", "1", "--storage", str(tmp_path), "--name", "g"]) == 2
    assert "asks for 1 GPU but the Ray cluster has 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
