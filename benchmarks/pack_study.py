"""The packed-study section of ``make bench``: one study of many tiny trials (random lr, hidden 16, 20 iterations)
run as users run it -- ``adder-sweep sweep`` in a subprocess, Ray's start, the tables and the study page included
-- at pack 1, 16 and 64, beside raw Ray Tune with ``reuse_actors=True`` running a function trainable around the
same training loop (``trainables.loop.train``), also in a subprocess of its own. One run, side by side; the wall
is the whole command's, measured from outside.

    python benchmarks/pack_study.py [--trials N] [--json out.json]

This file only measures; it changes nothing in the project.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
TRIALS, QUICK_TRIALS = 1000, 100
PACKS = (1, 16, 64)
T_VS_RAW = 3.0  # issue 23's target: the best pack against raw Ray Tune with actor reuse
BASE = {"digits": 3, "hidden": 16, "iters": 20, "eval_every": 10, "eval_size": 100, "batch_size": 64, "seed": 0}
LR = (1e-4, 1e-1)


def space(trials: int) -> str:
    lines = [f"  {k}: {v}" for k, v in BASE.items()]
    return "\n".join(["name: tiny", f"num_samples: {trials}", "search: {type: random, seed: 0}", "space:",
                      f"  lr: {{loguniform: [{LR[0]}, {LR[1]}]}}", *lines]) + "\n"


RAW = textwrap.dedent("""
    import sys, time
    import ray
    from ray import tune
    from trainables import TrainConfig, train

    BASE, LR, N, STORAGE = {base!r}, {lr!r}, {n}, {storage!r}

    def trainable(config):
        cfg = TrainConfig.from_flat({{**BASE, "lr": config["lr"], "threads": 1}})
        train(cfg, report=lambda m, c: tune.report({{"loss": m["loss"], "exact_acc": m["exact_acc"],
                                                     "iter": m["iter"]}}))

    ray.init(num_cpus={cores}, include_dashboard=False, logging_level="ERROR")
    tuner = tune.Tuner(trainable, param_space={{"lr": tune.loguniform(*LR)}},
                       tune_config=tune.TuneConfig(num_samples=N, reuse_actors=True, metric="exact_acc",
                                                   mode="max"),
                       run_config=tune.RunConfig(storage_path=STORAGE, name="raw", verbose=0))
    grid = tuner.fit()
    print(sum(1 for r in grid if r.error is None))
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # (as the other sections: Ray's own token handling)


def _timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    return wall, p


def run(trials: int = TRIALS, workdir: Optional[Path] = None, cores: Optional[int] = None) -> dict:
    import pyarrow.parquet as pq

    cores = cores or len(os.sched_getaffinity(0))
    workdir = Path(workdir or tempfile.mkdtemp(prefix="pack-study-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tiny.yaml").write_text(space(trials))
    script = workdir / "raw.py"
    script.write_text(RAW.format(base=BASE, lr=LR, n=trials, storage=str(workdir / "raw"), cores=cores))
    rows = []
    wall, p = _timed([sys.executable, str(script)], workdir)
    rows.append({"how": "raw Ray Tune, reuse_actors=True", "pack": None, "wall_s": wall,
                 "trials_ok": int(p.stdout.strip().splitlines()[-1])})
    for k in PACKS:
        name = f"pack{k}"
        wall, _ = _timed([sys.executable, "-m", "orchestrator", "sweep", "tiny.yaml", "--name", name,
                          "--storage", str(workdir / "res"), "--pack", str(k)], workdir)
        table = pq.read_table(workdir / "res" / name / "trials.parquet", columns=["state", "pack"])
        ok = sum(1 for s in table.column("state").to_pylist() if s == "terminated")
        packs = len({p for p in table.column("pack").to_pylist() if p})
        rows.append({"how": f"adder-sweep sweep --pack {k}", "pack": k, "wall_s": wall, "trials_ok": ok,
                     "tune_trials": packs or ok})
    raw = rows[0]["wall_s"]
    for r in rows:
        r["per_trial_ms"] = 1000 * r["wall_s"] / trials
        r["vs_raw"] = raw / r["wall_s"]
    return {"trials": trials, "cores": cores, "config": {**BASE, "lr": f"loguniform{LR}"}, "rows": rows}


def markdown(res: dict) -> list[str]:
    out = [f"{res['trials']} tiny trials ({', '.join(f'{k} {v}' for k, v in res['config'].items())}) on "
           f"{res['cores']} cores; the whole command's wall from outside (Ray's start, and for adder-sweep its "
           "tables and study page, included); speed-up = raw Ray Tune's wall / this wall.", "",
           "| how | Tune trials | trials ok | wall, s | per trial, ms | speed-up vs raw Tune |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        out.append(f"| {r['how']} | {r.get('tune_trials', r['trials_ok'])} | {r['trials_ok']} | {r['wall_s']:.1f} | "
                   f"{r['per_trial_ms']:.1f} | {r['vs_raw']:.2f}x |")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=TRIALS)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = run(args.trials)
    print("\n".join(markdown(res)))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
