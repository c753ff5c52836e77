import json
import os

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli


def test_train_writes_a_reproducible_run_directory_and_add_uses_it(tmp_path):
    out = tmp_path / "run"
    # solves at 300 iterations here (torch 2.13/2.14); a budget five times that leaves any version's rounding room,
    # and costs nothing: training stops when it solves
    p = run_cli("train", "--type=rnn", "--layers=2", "--len=5", "--iters=1500", "--eval-every=50", "--seed=1",
                "--out", out, check=0)
    assert "solved in" in p.stdout, p.stdout
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["cell"] == "rnn" and record["config"]["digits"] == 5 and record["seed"] == 1
    assert "--len=5" in record["command"] and record["versions"]["torch"]
    assert record["config"]["threads"] == 1  # one torch thread unless --threads says otherwise
    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [m["iter"] for m in metrics] == list(range(50, metrics[-1]["iter"] + 1, 50))
    assert {"loss", "exact_acc", "digit_acc", "lr", "samples_per_s"} <= metrics[0].keys()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iters"] == metrics[-1]["iter"]
    assert summary["final"]["exact_acc"] == 1.0 and summary["iters"] < 1500
    add = run_cli("add", out, "12345", "54321", check=0)
    assert add.stdout.strip() == "66666" and "wrong" not in add.stderr
    add = run_cli("add", out, "99999", "1", check=0)  # a carry through every digit, into the sixth
    assert add.stdout.strip() == "100000", add.stdout + add.stderr


def test_add_says_when_the_model_is_wrong(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--len=5", "--iters=1", "--eval-every=1", "--out", out, "--quiet", check=0)  # untrained
    add = run_cli("add", out, "12345", "54321", check=0)
    # one step of training cannot add: six digits right by chance is about one in a million
    assert add.stdout.strip().isdigit() and add.stdout.strip() != "66666", add.stdout
    assert "note: the model is wrong here; the true sum is 66666" in add.stderr, add.stderr


def test_train_resume_continues_the_run(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--len=5", "--iters=100", "--eval-every=50", "--target=2", "--out", out, "--quiet", check=0)
    p = run_cli("train", "--resume", out, "--iters=200", "--quiet", check=0)
    assert "iters=200" in p.stdout
    metrics = pq.read_table(out / "metrics.parquet").to_pylist()
    assert [m["iter"] for m in metrics] == [50, 100, 150, 200]
    assert json.loads((out / "run.json").read_text())["resumed"][0]["from_iter"] == 100


@pytest.mark.parametrize("args, message", [
    (["train", "--type", "cnn"], "cell: unknown cell 'cnn'; choose one of rnn, lstm, gru"),
    (["train", "--len", "0"], "digits: must be between 1 and 10000, got 0"),
    (["train", "--iters", "-5"], "iters: must be >= 1, got -5"),
    (["train", "--iters", "many"], "iters: expected an integer, got 'many'"),
    (["train", "--mode", "seed", "--len", "5"], "seed mode pads 9-digit operands (sums up to 10 digits): needs >= 10, got 5"),
    (["train", "--out", "/proc/adder-run"], "--out /proc/adder-run"),
    (["add", "no/such/run", "1", "2"], "run no/such/run: no such run directory or checkpoint"),
    (["add", "RUN", "12a", "2"], "a '12a': not a non-negative integer"),
    (["train", "--resume", "no/such/run"], "--resume no/such/run: not a run directory"),
])
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(tmp_path, args, message):
    before = set(os.listdir(tmp_path))
    args = [str(tmp_path / "r") if a == "RUN" else a for a in args]
    p = run_cli(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert set(os.listdir(tmp_path)) == before  # no results/ or run directory created


def test_out_not_empty_points_to_resume(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    p = run_cli("train", "--out", tmp_path / "x", cwd=tmp_path)
    assert p.returncode == 2 and "--resume" in p.stderr
    assert (tmp_path / "x" / "file").read_text() == "keep me"
