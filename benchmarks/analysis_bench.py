"""Benchmarks of the reading side (issue 14): how fast commands that do not train start, and how fast a large
study loads for analysis.

* start-up: ``adder-sweep --help`` and ``adder-sweep validate search_spaces/quick.yaml`` (median of several runs),
  beside a bare ``python -c pass`` measured in the same run -- target under 1 s;
* load: a synthetic 1,000-trial study (Ray Tune's experiment state and one result.json of 30 reports per trial,
  as Ray writes them) loaded with ``orchestrator.load_study``: from the trial files (no tables yet), and from
  the Parquet tables once written -- target under 5 s.

    python benchmarks/analysis_bench.py
"""
from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T_STARTUP_S = 1.0
T_LOAD_S = 5.0


def _time(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def startup(runs: int = 7) -> dict:
    cli = [sys.executable, "-m", "orchestrator"]
    return {"python -c pass": _time([sys.executable, "-c", "pass"], runs),
            "adder-sweep --help": _time(cli + ["--help"], runs),
            "adder-sweep validate quick.yaml": _time(cli + ["validate", "search_spaces/quick.yaml"], runs),
            "runs": runs}


def make_study(root: Path, name: str, n: int = 1000, reports: int = 30, seed: int = 0) -> Path:
    """A study directory as a finished sweep leaves it, with ``n`` trials (synthetic numbers)."""
    from orchestrator.spec.space import parse_space

    rng = random.Random(seed)
    study = root / name
    study.mkdir(parents=True)
    spec = parse_space("num_samples: 250\nrepeats: 2\nsearch: random\nspace:\n  cell: {grid: [rnn, gru]}\n"
                       "  lr: {loguniform: [0.0001, 0.1]}\n  iters: 600\n  eval_every: 20\n", "bench.yaml")
    record = {"name": name, "spec": spec.to_json(), "runs": [{"kind": "sweep", "versions": {"ray": "2.60.0"}}],
              "generations": [{"index": 0, "path": "", "spec": spec.to_json()}]}
    (study / "adder_study.json").write_text(json.dumps(record))
    trial_data = []
    for i in range(n):
        tid = f"bench_{i:05d}"
        config = {"cell": rng.choice(["rnn", "gru"]), "lr": 10 ** rng.uniform(-4, -1), "seed": i % 2,
                  "iters": 600, "eval_every": 20, "_continues": ""}
        d = study / f"trial_{tid}"
        d.mkdir()
        lines, acc = [], 0.0
        for k in range(1, reports + 1):
            acc = min(1.0, acc + rng.random() * 0.08)
            lines.append(json.dumps({"iter": 20 * k, "loss": 2.3 * (1 - acc) + 0.01, "exact_acc": acc,
                                     "digit_acc": 0.5 + acc / 2, "lr": config["lr"], "time_s": k * 0.1,
                                     "samples_per_s": 1e4, "status": "budget" if k == reports else "running",
                                     "iters_to_solve": None, "time_total_s": k * 0.12, "timestamp": 1_700_000_000 + k,
                                     "node": "n1", "hostname": "bench"}))
        (d / "result.json").write_text("\n".join(lines) + "\n")
        trial = {"trial_id": tid, "status": "TERMINATED", "config": config, "relative_logdir": d.name}
        runtime = {"last_result": json.loads(lines[-1]), "num_failures": 0, "error_filename": None}
        trial_data.append([json.dumps(trial), json.dumps(runtime)])
    (study / "experiment_state-2026-11-30_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return study


def load(n: int = 1000) -> dict:
    from orchestrator import load_study
    from orchestrator.results.tables import write_tables
    from orchestrator.studydir.storage import Storage

    with tempfile.TemporaryDirectory() as tmp:
        make_study(Path(tmp), "big", n)
        t0 = time.perf_counter()
        s = load_study("big", tmp)  # no tables yet: built in memory from 1,000 result.json files
        from_files = time.perf_counter() - t0
        assert len(s.trials) == n
        write_tables(Storage.open(tmp), "big")
        t0 = time.perf_counter()
        s = load_study("big", tmp)  # the Parquet tables, checked current against the trial files
        from_tables = time.perf_counter() - t0
        assert len(s.trials) == n and len(s.metrics) == n * 30
    return {"trials": n, "from_files_s": from_files, "from_tables_s": from_tables}


def main() -> int:
    s = startup()
    l_ = load()
    print(json.dumps({"startup": s, "load": l_}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
