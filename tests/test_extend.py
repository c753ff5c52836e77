"""Growing studies (orchestrator/tune/extend.py, orchestrator/spec/plan.py) on real Ray: new grid values and seeds without
rerunning finished trials, a longer budget equal to a longer study from scratch, refusals, an interrupted extension
finished by resume, and replicates that share their sampled values."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.spec.plan import plan
from orchestrator.spec.space import parse_space
from tests.conftest import ROOT, write_space

# budget 60 = 3 reports of 20; target 1.5 never solves, so every trial ends on its budget and can be continued
GRID = """\
# tiny grid for extend tests
name: grow
checkpoint_every: 1
space:
  cell: {grid: [rnn]}
  digits: 3
  iters: 60
  eval_every: 20
  eval_size: 100
  target: 1.5
"""


def _reports_per_trial(study: Path) -> dict:
    return {d.parent.relative_to(study).as_posix(): len(d.read_text().splitlines())
            for d in study.glob("**/trial_*/result.json")}


def _table(study: Path, which="trials"):
    return pq.read_table(study / f"{which}.parquet").to_pandas()


def test_extend_adds_grid_values_and_seeds_without_rerunning(ray_local, tmp_path, capsys):
    space = write_space(tmp_path / "grow.yaml", GRID)
    res = tmp_path / "res"
    res.mkdir()
    assert main(["sweep", str(space), "--storage", str(res), "--name", "g"]) == 0
    before = _reports_per_trial(res / "g")
    assert len(before) == 1

    # dry run: says what would happen, runs and writes nothing
    listing = sorted(p.relative_to(res).as_posix() for p in res.rglob("*"))
    assert main(["extend", "g", "--storage", str(res), "--set", "cell={grid: [rnn, gru]}", "--repeats", "2",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "extend g: 1 trial(s) reused as they are, 0 continued to iters=60, 3 new" in out
    assert "Best configuration over seeds" not in out  # one seed so far: only the best trial is named
    assert sorted(p.relative_to(res).as_posix() for p in res.rglob("*")) == listing

    assert main(["extend", "g", "--storage", str(res), "--set", "cell={grid: [rnn, gru]}", "--repeats", "2"]) == 0
    from orchestrator.results.report import load_study, rank_configurations

    best = rank_configurations(load_study("g", str(res))).iloc[0]  # the end of the run names it, over its seeds
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Best configuration over seeds")]
    assert len(lines) == 1 and lines[0].startswith(f"Best configuration over seeds (mean ± 95% CI, N = 2): "
                                                   f"cell={best['cell']}, "), lines
    assert f" {best['estimate'].text()}" in lines[0], lines
    after = _reports_per_trial(res / "g")
    assert {k: after[k] for k in before} == before  # the finished trial was not run again
    assert len(after) == 4 and all(k.startswith("gen-1/") for k in set(after) - set(before))
    t = _table(res / "g")
    assert sorted(zip(t["cell"], t["seed"])) == [("gru", 0), ("gru", 1), ("rnn", 0), ("rnn", 1)]
    assert sorted(t["generation"]) == [0, 1, 1, 1]
    assert t.groupby("cell")["config_id"].nunique().tolist() == [1, 1]  # a configuration's seeds share its id
    record = json.loads((res / "g" / "adder_study.json").read_text())
    assert [r["kind"] for r in record["runs"]] == ["sweep", "extend"]
    assert record["runs"][1]["added"] == 3 and record["runs"][1]["code"]["commit"]
    assert record["spec"]["repeats"] == 2 and record["generations"][1]["path"] == "gen-1"
    # nothing left to add: a second identical extend runs nothing
    assert main(["extend", "g", "--storage", str(res), "--set", "cell={grid: [rnn, gru]}", "--repeats", "2"]) == 0
    assert "nothing to run" in capsys.readouterr().out


def _finals(study: Path) -> dict:
    m = _table(study, "metrics")
    t = _table(study)
    out = {}
    for row in t.itertuples():
        curve = m[m.trial_id == row.trial_id].sort_values("iter")
        out[(row.cell, row.seed)] = [(r.iter, r.loss, r.exact_acc, r.digit_acc, r.lr) for r in curve.itertuples()]
    return out


def test_extending_iters_continues_trials_and_equals_a_longer_study(ray_local, tmp_path):
    text = GRID.replace("cell: {grid: [rnn]}", "cell: {grid: [rnn, gru]}") \
        .replace("  iters: 60\n", "  iters: 60\n  schedule: plateau\n  plateau_patience: 0\n  lr: 0.01\n")
    space = write_space(tmp_path / "grow.yaml", text)
    res = tmp_path / "res"
    res.mkdir()
    assert main(["sweep", str(space), "--storage", str(res), "--name", "short"]) == 0
    assert main(["extend", "short", "--storage", str(res), "--set", "iters=120"]) == 0
    long = write_space(tmp_path / "long.yaml", text.replace("iters: 60", "iters: 120"))
    assert main(["sweep", str(long), "--storage", str(res), "--name", "long"]) == 0
    got, want = _finals(res / "short"), _finals(res / "long")
    assert got == want  # bit-identical curves, the plateau schedule's state included
    assert all([r[0] for r in curve] == [20, 40, 60, 80, 100, 120] for curve in got.values())
    t = _table(res / "short")
    assert set(t["iters"]) == {120} and set(t["first_generation"]) == {0} and set(t["generation"]) == {1}
    assert all(len(x.split(",")) == 2 for x in t["tune_trials"])  # one logical trial of two Tune trials


@pytest.fixture(scope="module")
def refusable(ray_local, tmp_path_factory):
    """A finished one-trial study with a stop rule, for the refusals below."""
    d = tmp_path_factory.mktemp("refusable")
    space = write_space(d / "grow.yaml", GRID + "stop: {iter: 1000}\n")
    res = d / "res"
    res.mkdir()
    assert main(["sweep", str(space), "--storage", str(res), "--name", "r"]) == 0
    return res


@pytest.mark.parametrize("argv, message", [
    (["--set", "hidden=32"], "space.hidden: changed from 64 to 32, which changes training"),
    (["--set", "cell={grid: [gru]}"], "space.cell: grid('rnn') -> grid('gru'): removes ['rnn']"),
    (["--set", "iters=40"], "space.iters: 60 -> 40: an extension can only give trials more iterations"),
    (["--set", "layers=3"], "space.layers: changed from 2 to 3, which changes training -- start a new study"),
    (["--file", "METRIC"], "metric: changed from 'exact_acc' to 'loss'; the finished trials were ranked"),
    (["--file", "REMOVED"], "space.eval_size: removed (the study's trials ran with 100, the default is 2000)"),
    (["--set", "iters=5000"], "space.iters: 5000 is past the study's stop rule iter >= 1000"),
])
def test_refused_extensions_name_each_key_and_write_nothing(refusable, tmp_path, capsys, argv, message):
    res = refusable  # one finished study for every case: each refusal must leave it exactly as it was
    write_space(tmp_path / "METRIC", GRID + "stop: {iter: 1000}\nmetric: loss\n")
    write_space(tmp_path / "REMOVED", GRID.replace("  eval_size: 100\n", "") + "stop: {iter: 1000}\n")
    argv = [str(tmp_path / a) if a in ("METRIC", "REMOVED") else a for a in argv]
    listing = {p: p.stat().st_mtime for p in (res / "r").rglob("*")}
    capsys.readouterr()
    assert main(["extend", "r", "--storage", str(res), *argv]) == 2
    # (the tests' shared Ray may still print its workers' exit lines from the sweep above: not ours)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "pid=" not in line]
    assert len(err) == 1 and message in err[0], err
    assert {p: p.stat().st_mtime for p in (res / "r").rglob("*")} == listing


def test_extend_refuses_pbt_and_missing_studies(tmp_path, capsys):
    assert main(["extend", "nope", "--storage", str(tmp_path)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err


def test_interrupted_extension_is_finished_by_resume(ray_local, tmp_path):
    text = GRID.replace("iters: 60", "iters: 200").replace("cell: {grid: [rnn]}", "cell: {grid: [rnn, gru]}")
    space = write_space(tmp_path / "grow.yaml", text)
    res = tmp_path / "res"
    res.mkdir()
    assert main(["sweep", str(space), "--storage", str(res), "--name", "k"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "extend", "k", "--storage", str(res),
                             "--repeats", "3"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not list((res / "k").glob("gen-1/trial_*/checkpoint_*")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sum(json.loads(f.read_text().splitlines()[-1])["iter"] == 200
                   for f in (res / "k").glob("gen-1/trial_*/result.json") if f.read_text().strip())
    assert finished < 4, "the extension finished before it was killed: nothing left for resume to do"
    p = subprocess.run([sys.executable, "-m", "orchestrator", "resume", "k", "--storage", str(res)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "6/6 trials: 6 terminated" in p.stdout
    t = _table(res / "k")
    assert sorted(zip(t["cell"], t["seed"])) == sorted((c, s) for c in ("rnn", "gru") for s in range(3))
    assert (t["iters_run"] == 200).all()


def test_replicates_share_sampled_values_and_growth_keeps_them():
    spec = parse_space("num_samples: 3\nrepeats: 2\nsearch: {type: random, seed: 7}\nspace:\n"
                       "  cell: {grid: [rnn, gru]}\n  lr: {loguniform: [0.0001, 0.1]}\n", "r.yaml")
    trials = plan(spec)
    assert len(trials) == 12
    by_config = {}
    for t in trials:
        by_config.setdefault(t.config_id, set()).add((t.config["lr"], t.seed))
    assert all(len({lr for lr, _ in v}) == 1 and {s for _, s in v} == {0, 1} for v in by_config.values())
    assert len({t.config["lr"] for t in trials}) == 6  # each configuration has its own lr
    # more samples, more seeds, another grid value and a wider range: every old trial keeps its values
    from orchestrator.spec.space import respec

    grown = respec(spec, "r.yaml", ("cell={grid: [rnn, gru, lstm]}", "lr={loguniform: [0.00001, 1.0]}"),
                   num_samples=5, repeats=3)
    bigger = {(t.config_id, t.seed): t.config for t in plan(grown, history=(spec,))}
    for t in trials:
        assert bigger[(t.config_id, t.seed)] == t.config
    assert len(bigger) == 3 * 5 * 3
