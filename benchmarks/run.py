"""``make bench``: every benchmark of issue 7 in one run, written to ``benchmarks/RESULTS.md``.

Sections, in this order (``--only`` picks some): step (throughput vs the assignment's loop, matmul rate, MFU;
``benchmarks/step.py``), threads, startup, overhead, schedulers (``benchmarks/sweep_bench.py``), gpu
(``benchmarks/gpu.py``, only with CUDA), memory (peak RSS of the trial workers of every sweep above), analysis
(start-up of the commands that do not train, loading a 1,000-trial study: ``benchmarks/analysis_bench.py``) and
scale (one study of 10,000 tiny trials, 1,000 with --quick: ``benchmarks/scale.py``). Each section prints its
wall time; a section that fails is reported as failed and the run goes on. The "Targets" table compares the measurements with the issue's
targets and says plainly why one is not met.

    python benchmarks/run.py            # the full run: about 40 minutes on 2 idle cores (scale: 25 of them)
    python benchmarks/run.py --quick    # smoke check, about a minute; writes benchmarks/RESULTS-quick.md

This file only measures and reports; it changes nothing in the project.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling modules, whether run as a script or with -m

import torch  # noqa: E402

import analysis_bench  # noqa: E402
import gpu as gpu_bench  # noqa: E402
import pack_step  # noqa: E402
import pack_study  # noqa: E402
import scale  # noqa: E402
import step  # noqa: E402
import sweep_bench as sb  # noqa: E402
from common import CoreShare, machine_info, machine_markdown, markdown_table, usable_cores  # noqa: E402

SECTIONS = ("step", "threads", "startup", "overhead", "schedulers", "gpu", "memory", "analysis", "packed",
            "pack_study", "scale")
BUSY = 0.25  # other processes' cores above which a section is flagged as contended
UNSTEADY = 0.5  # spread of the rounds ((max - min) / median) above which a timing cannot decide a target

# Issue 7's targets on a 2-core CPU machine.
T_SPEEDUP_11, T_SPEEDUP_100 = 1.3, 1.0
T_MFU_100 = 0.60
T_OVERHEAD_S, T_TRAIN_FRACTION = 0.5, 0.90
T_FIRST_REPORT_S = 8.0
T_RSS_MB = 500.0


# -- running the sections ---------------------------------------------------------------------------------------
def run_sections(names: list[str], quick: bool, repeats: int, workdir: Path) -> tuple[dict, list[dict]]:
    cores = usable_cores()
    results: dict[str, Any] = {}
    timing: list[dict] = []
    jobs: dict[str, Callable[[], Any]] = {
        "step": lambda: step.run(repeats, quick),
        "threads": lambda: sb.threads_section(quick, cores),
        "startup": lambda: sb.startup(quick, workdir),
        "overhead": lambda: sb.sweep_overhead(quick, workdir, cores),
        "schedulers": lambda: sb.schedulers(quick, workdir, cores),
        "gpu": lambda: gpu_bench.run(dry=False) if torch.cuda.is_available() else {"skipped": "no GPU: skipped "
                                                                                   "(benchmarks/gpu.py)"},
        "memory": lambda: sb.memory([sw for r in results.values() if isinstance(r, dict)
                                     for sw in r.get("sweeps", [])]),
        "analysis": lambda: {"startup": analysis_bench.startup(3 if quick else 7),
                             "load": analysis_bench.load(200 if quick else 1000)},
        "packed": lambda: pack_step.run(quick),
        "pack_study": lambda: pack_study.run(pack_study.QUICK_TRIALS if quick else pack_study.TRIALS,
                                             workdir / "pack_study", cores),
        "scale": lambda: scale.run(scale.QUICK_TRIALS if quick else scale.TRIALS, workdir / "scale"),
    }
    for name in names:
        sb.log(f"== {name} ==")
        with CoreShare(include_children=True) as share:
            try:
                results[name] = jobs[name]()
                error = None
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken section should not cost the other fourteen minutes
                traceback.print_exc()
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                results[name] = {"error": error}
        skipped = isinstance(results[name], dict) and results[name].get("skipped")
        timing.append({"section": name, "wall_s": share.wall_s, "others_cores": share.others,
                       "status": "failed: " + error if error else str(skipped) if skipped else "ok"})
        sb.log(f"== {name}: {share.wall_s:.0f} s ==")
    return results, timing


# -- targets --------------------------------------------------------------------------------------------------
def _contended(others: Optional[float]) -> str:
    return f"; contended: other processes kept {others:.2f} cores busy meanwhile" if others and others > BUSY else ""


def targets(results: dict, quick: bool) -> list[dict]:
    rows: list[dict] = []

    def add(target: str, measured: str, met: Optional[bool], reason: str = "", unsteady: str = "") -> None:
        """``unsteady``: why the measurement cannot decide the target (then met reads "unclear")."""
        if unsteady:
            rows.append({"target": target, "measured": measured, "met": "unclear", "reason": unsteady})
            return
        rows.append({"target": target, "measured": measured,
                     "met": "–" if met is None else ("yes" if met else "no"), "reason": "" if met else reason})

    def steady(*spreads: float) -> str:
        worst = max(spreads)
        return (f"the rounds spread {worst:.0%} (max - min over median): too unsteady to judge; rerun on idle "
                f"cores" + others if worst > UNSTEADY else "")

    st = results.get("step", {})
    if "steps" in st:
        # Targets are judged at 1 torch thread: what every trial runs with by default (one CPU per trial), and
        # the faster setting per core here (see the Threads section). The all-cores rows are in the table.
        others = _contended(st.get("others_cores"))
        judged = [r for r in st["steps"] if r["threads"] == 1] or st["steps"]
        wide = {(r["cell"], r["digits"]): r for r in st["steps"] if r["threads"] != judged[0]["threads"]}
        peak = step.peak_gflops(st["matmul"], judged[0]["threads"])
        peak_spread = next((r["spread"] for r in st["matmul"] if r["shape"].startswith("large")
                            and r["threads"] == judged[0]["threads"]), 0.0)

        def kernels(r: dict, key: str, fmt: str, unit: str = "") -> str:
            """The default kernel's value, and the fused kernel's beside it where there is one."""
            fused = r.get("fused_" + key)
            torch_v = r["speedup"] if key == "speedup" else r.get("project_" + key)
            if torch_v is None:
                return "–"
            return format(torch_v, fmt) + unit + ("" if fused is None else f" (fused: {format(fused, fmt)}{unit})")

        for r in judged:
            goal = T_SPEEDUP_11 if r["digits"] == 11 else T_SPEEDUP_100 if r["digits"] == 100 else None
            if goal is None:
                continue
            kernel, best, _ = step.best_kernel(r)
            extra = r["reference_ms"] - r["project_ms"]
            if extra > 0:
                why = (f"the two steps share model, loss and Adam and differ only in the data code and the per-step "
                       f"loss.item(), which cost the reference {extra:.2f} ms of its {r['reference_ms']:.2f} ms step")
            else:
                why = (f"the project's step took longer ({r['project_ms']:.2f} vs {r['reference_ms']:.2f} ms) though "
                       f"it does less work: noise (round spread {r['project_spread']:.0%} / "
                       f"{r['reference_spread']:.0%})")
            spreads = [r["project_spread"], r["reference_spread"]]
            spreads += [r["fused_spread"]] if "fused_spread" in r else []
            add(f"step {r['cell']} {r['digits']} digits >= {goal:.1f}x reference ({r['threads']} thread)",
                kernels(r, "speedup", ".2f", "x"), best >= goal,
                why + others, unsteady=steady(*spreads))
        for r in judged:
            if r["digits"] != 100:
                continue
            kernel, _, mfu = step.best_kernel(r)
            target = f"MFU {r['cell']} 100 digits >= {T_MFU_100:.0%} ({r['threads']} thread)"
            measured = "–" if r.get("project_mfu") is None else kernels(r, "mfu", ".1%")
            spreads = [r["project_spread"], peak_spread] + ([r["fused_spread"]] if "fused_spread" in r else [])
            unsteady = steady(*spreads)
            if unsteady and mfu is not None:
                add(target, measured, None,
                    unsteady=unsteady.replace("the rounds spread", "the step's rounds or the matmul rate's spread"))
                continue
            if mfu is not None and mfu > 1:
                add(target, measured + " (invalid)", None,
                    f"the step's matmul GFLOP/s exceed the {peak:.0f} GFLOP/s measured for a "
                    f"large matmul in this run, so that rate is wrong (measured while slowed)" + others)
                continue
            w = wide.get((r["cell"], r["digits"]))
            wide_txt = (f"; at {w['threads']} threads: {kernels(w, 'mfu', '.1%')}" if w and w.get("project_mfu")
                        is not None else "")
            gflops = r["fused_gflops"] if kernel == "fused" else r["project_gflops"]
            add(target, measured, None if mfu is None else mfu >= T_MFU_100,
                f"the {kernel} step does {gflops:.1f} GFLOP/s of matmul work against {peak:.0f} GFLOP/s for a "
                f"large fp32 matmul on {r['threads']} thread: the rest of its time goes to moving every time step's "
                f"activations through memory (beyond the caches), the time loop's sequential small matmuls (one "
                f"per time step and layer forward, two backward), the embedding, the loss and Adam (see "
                f"docs/PERFORMANCE.md){wide_txt}" + others)
    elif "step" in results:
        add("step throughput and MFU", "section failed", False, results["step"].get("error", ""))

    ov = results.get("overhead", {})
    if "summary" in ov:
        s, r0 = ov["summary"], ov["rounds"][0]
        n, cores = r0["trials"], r0["cores"]
        others = _contended(max((r["others_cores_sweep"] or 0) for r in ov["rounds"]))
        startup_part = (s["startup_s"] or 0) * cores / n
        rest = s["overhead_per_trial_after_startup_s"]
        why = (f"{n} trials of {r0['sweep_train_s'] / n:.1f} s training each on {cores} cores: start-up "
               f"({s['startup_s']:.1f} s before the first trial trains, x{cores} cores) is {startup_part:.2f} s per "
               "trial; " + (f"the other {rest:.2f} s per trial is Ray scheduling, worker/trial set-up, reports, "
                            "checkpoints, shutdown and cores left idle" if rest > 0.05 else
                            "what remains after start-up is within noise") + others)
        add(f"sweep overhead <= {T_OVERHEAD_S} s per trial", f"{s['overhead_per_trial_s']:.2f} s",
            s["overhead_per_trial_s"] <= T_OVERHEAD_S, why)
        add(f"core-seconds in training >= {T_TRAIN_FRACTION:.0%}", f"{s['train_fraction']:.1%}",
            s["train_fraction"] >= T_TRAIN_FRACTION, why)
    elif "overhead" in results:
        add("sweep overhead", "section failed", False, results["overhead"].get("error", ""))

    su = results.get("startup", {})
    if "summary" in su:
        s = su["summary"]
        others = _contended(max((r.get("others_cores") or 0) for r in su["rows"]))
        add(f"first report <= {T_FIRST_REPORT_S:.0f} s after `sweep`", f"{s['first_report_s']:.1f} s",
            s["first_report_s"] <= T_FIRST_REPORT_S,
            f"`import ray` + `ray.init` alone take {s['import_ray_s'] + s['ray_init_s']:.1f} s "
            f"({s['import_ray_s']:.1f} + {s['ray_init_s']:.1f}) and a worker's `import ray.tune` + `import torch` "
            f"{s['import_tune_s'] + s['import_torch_s']:.1f} s more; the rest is the CLI's own imports, Tune's "
            f"set-up, starting the worker process, and {s['first_report_train_s']:.2f} s of training to the first "
            f"report" + others)
    elif "startup" in results:
        add("start-up", "section failed", False, results["startup"].get("error", ""))

    mem = results.get("memory", {})
    if mem.get("worker_peak_mb") is not None:
        worst = max(mem["rows"], key=lambda r: r["worker_peak_mb"])
        add(f"peak RSS per worker <= {T_RSS_MB:.0f} MB", f"{mem['worker_peak_mb']:.0f} MB",
            mem["worker_peak_mb"] <= T_RSS_MB,
            f"largest in study {worst['study']} ({worst['workers']} workers, median {worst['worker_median_mb']:.0f} "
            f"MB): a Ray worker holds Ray, torch and pyarrow before the model's few MB, torch.optim imports "
            f"torch._dynamo, and the tuned allocator keeps the heap pages of the "
            f"largest step a reused worker ran (docs/PERFORMANCE.md, Memory)")
    elif "memory" in results:
        add("peak RSS per worker", "not measured", False,
            results["memory"].get("error") or "no sweep ran in this run (memory reads the sweeps' workers)")
    an = results.get("analysis", {})
    if "startup" in an:
        for cmd in ("adder-sweep --help", "adder-sweep validate quick.yaml"):
            v = an["startup"][cmd]
            add(f"`{cmd}` starts in < {analysis_bench.T_STARTUP_S:g} s", f"{v:.2f} s", v < analysis_bench.T_STARTUP_S,
                "the command imports something heavy: tests/test_cli_startup.py names which")
        ld = an["load"]
        add(f"load_study of {ld['trials']} trials < {analysis_bench.T_LOAD_S:g} s",
            f"{ld['from_files_s']:.2f} s from the trial files, {ld['from_tables_s']:.2f} s from the tables",
            max(ld["from_files_s"], ld["from_tables_s"]) < analysis_bench.T_LOAD_S, "")
    ps = results.get("pack_study", {})
    if "rows" in ps:
        best = max(ps["rows"][1:], key=lambda r: r["vs_raw"])
        add(f"{ps['trials']} tiny trials >= {pack_study.T_VS_RAW:g}x faster than raw Ray Tune with reuse_actors",
            f"{best['vs_raw']:.2f}x at pack {best['pack']} ({best['wall_s']:.0f} s against "
            f"{ps['rows'][0]['wall_s']:.0f} s)", best["vs_raw"] >= pack_study.T_VS_RAW,
            "per-pack cost (a Ray trial, its evaluation rounds, one report line holding every member) is paid "
            "once per pack, but the members' steps are not faster than single steps at this size on a CPU "
            "(the packed section)")
    sc = results.get("scale", {})
    if "wall_s" in sc:
        for target, measured, met, reason in scale.targets(sc):
            add(target, measured, met, reason)
    if quick:
        for r in rows:
            if r["met"] in ("no", "unclear"):
                r["reason"] += "; quick run (reduced sizes): rerun without --quick before judging"
    return rows


# -- markdown ---------------------------------------------------------------------------------------------------
def _section_error(name: str, res: dict) -> Optional[str]:
    if "error" in res:
        return f"**Section failed:** `{res['error']}` (traceback on stderr of the run)."
    if "skipped" in res:
        return res["skipped"]
    return None


def md_step(res: dict) -> list[str]:
    out = [f"{res['repeats']} interleaved rounds per case (project, fused, reference in rotating order), median "
           "reported; at 1 torch thread (a trial's default) and at all usable cores. project = the default step "
           "(`kernel: torch`), fused = `kernel: fused` (rnn, gru; lstm runs oneDNN either way). MFU = matmul "
           "FLOPs of forward + backward per "
           "second over the large-square fp32 `torch.mm` rate at the same thread count (measured in this run).",
           "", markdown_table(res["matmul"], step.MATMUL_COLUMNS), "",
           markdown_table(res["steps"], step.STEP_COLUMNS)]
    return out


THREAD_COLUMNS = [("cell", "cell", ""), ("digits", "digits", "d"), ("layers", "layers", "d"),
                  ("two_single_samples_s", "2 procs x 1 thread, samples/s", ",.0f"),
                  ("one_double_samples_s", "1 proc x 2 threads, samples/s", ",.0f"),
                  ("ratio", "ratio (2x1 / 1x2)", ".2f"),
                  ("two_single_spread", "2x1 spread", ".0%"), ("one_double_spread", "1x2 spread", ".0%")]


def md_threads(res: dict) -> list[str]:
    return [f"The project's training step (batch 200) in separate processes, no Ray: two 1-thread processes "
            f"running at once vs one 2-thread process; {res['rounds']} rounds of {res['block_s']:g} s blocks, "
            "alternating, median of total samples/s. A ratio above 1 favours one thread per trial (the default: a "
            "trial's threads follow its CPUs, 1).", "", markdown_table(res["rows"], THREAD_COLUMNS)]


STARTUP_COLUMNS = [("repeat", "#", "d"), ("first_report_s", "sweep -> first report, s", ".2f"),
                   ("first_report_train_s", "of which training, s", ".2f"),
                   ("sweep_exit_s", "sweep -> exit, s", ".2f"), ("import_ray_s", "import ray, s", ".2f"),
                   ("ray_init_s", "ray.init, s", ".2f"), ("import_tune_s", "then import ray.tune, s", ".2f"),
                   ("import_torch_s", "then import torch, s", ".2f"),
                   ("import_adapter_s", "then import the adapter, s", ".2f"),
                   ("others_cores", "others' cores", ".2f")]


def md_startup(res: dict) -> list[str]:
    s = res["summary"]
    space = ", ".join(f"{k}={v}" for k, v in res["space"].items())
    return [f"A 1-trial study ({space}) launched as `adder-sweep sweep` with its own `--storage`; the first report "
            "is when the trial's first `result.json` line reached the study folder (polled every 20 ms). Beside "
            "it, alternating, a fresh process times the pieces one after another: `import ray`, `ray.init` (as "
            "the CLI calls it), then what a trial worker imports as well (`ray.tune`, `torch`, the adapter).", "",
            markdown_table(res["rows"], STARTUP_COLUMNS), "",
            f"Median: first report {s['first_report_s']:.2f} s after the command (spread "
            f"{s['first_report_spread']:.0%}); `import ray` {s['import_ray_s']:.2f} s + `ray.init` "
            f"{s['ray_init_s']:.2f} s, then `import ray.tune` {s['import_tune_s']:.2f} s, `import torch` "
            f"{s['import_torch_s']:.2f} s, the adapter {s['import_adapter_s']:.2f} s; the command exits after "
            f"{s['sweep_exit_s']:.2f} s."]


OVERHEAD_COLUMNS = [("round", "round", "d"), ("sweep_wall_s", "sweep wall, s", ".1f"),
                    ("sequential_wall_s", "sequential wall, s", ".1f"), ("wall_ratio", "wall ratio", ".2f"),
                    ("sweep_train_s", "sweep: sum time_s", ".1f"), ("sequential_train_s", "seq.: sum time_s", ".1f"),
                    ("overhead_per_trial_s", "overhead/trial, s", ".2f"),
                    ("overhead_per_trial_after_startup_s", "of which after start-up, s", ".2f"),
                    ("train_fraction", "core-s in training", ".1%"), ("startup_s", "start-up, s", ".1f"),
                    ("shutdown_s", "last report -> exit, s", ".1f"),
                    ("sweep_cpu_s", "sweep CPU-s used", ".1f"),
                    ("sequential_overhead_per_trial_s", "seq. overhead/trial, s", ".2f"),
                    ("others_cores_sweep", "others' cores (sweep)", ".2f")]


def md_overhead(res: dict) -> list[str]:
    s, r0 = res["summary"], res["rounds"][0]
    space = ", ".join(f"{k}={v}" for k, v in res["space"].items())
    return [f"{r0['trials']} trials ({space}) through `adder-sweep sweep` (embedded Ray, {r0['cores']} cores, 1 CPU "
            "per trial, the project's defaults) vs the same configs one after another in one fresh process "
            "(`trainables.loop.train`, 1 thread); walls from launch to exit. Sides alternate round by round.",
            "",
            f"- overhead per trial = (sweep wall x {r0['cores']} cores - sum of the trials' `time_s`) / "
            f"{r0['trials']}; `time_s` is the loop's own training + evaluation seconds (no Ray, set-up, reports "
            "or checkpoints);",
            "- core-s in training = sum of `time_s` / (sweep wall x cores);",
            "- start-up = launch to the first trial's training start (its first report's arrival less its "
            "`time_s`); \"after start-up\" removes it, x cores, from the overhead;",
            f"- wall ratio = sweep wall / sequential wall (ideal {r0['ideal_ratio']:.2f} on {r0['cores']} cores).",
            "", markdown_table(res["rounds"], OVERHEAD_COLUMNS), "",
            f"Median over rounds: wall ratio {s['wall_ratio']:.2f}, overhead {s['overhead_per_trial_s']:.2f} s per "
            f"trial ({s['overhead_per_trial_after_startup_s']:.2f} s after start-up), "
            f"{s['train_fraction']:.1%} of core-seconds in training."]


SCHED_COLUMNS = [("scheduler", "scheduler", ""), ("trials", "trials", "d"),
                 ("first_solve_s", "first solve, s", ".1f"), ("first_solve_core_s", "core-s to first solve", ".1f"),
                 ("first_solve_train_s", "training core-s to first solve", ".1f"),
                 ("first_solver", "first solver", ""), ("wall_s", "study wall, s", ".1f"),
                 ("total_core_s", "study core-s", ".1f"), ("total_train_s", "study training core-s", ".1f"),
                 ("outcomes", "outcomes", ""), ("others_cores", "others' cores", ".2f")]


def md_schedulers(res: dict) -> list[str]:
    space = ", ".join(f"{k}={v}" for k, v in res["space"].items())
    asha = ", ".join(f"{k}={v}" for k, v in res["asha"].items() if k != "type")
    ratio = res["asha_over_fifo_first_solve"]
    return [f"The same grid ({space}) as two studies, FIFO and ASHA ({asha}, on `iter`), each run to its end. "
            "Core-s to first solve = cores x seconds from the command to the first report with status `solved`; "
            "training core-s = sum of the trials' `time_s` reported by then.", "",
            markdown_table(res["rows"], SCHED_COLUMNS), "",
            ("ASHA / FIFO core-seconds to the first solve: " + (f"{ratio:.2f}" if ratio else "– (no solve)")
             + f"; for the whole study: {res['asha_over_fifo_total']:.2f}.")]


MEMORY_COLUMNS = [("study", "study", ""), ("workers", "worker pids", "d"),
                  ("worker_peak_mb", "largest worker peak RSS, MB", ".0f"),
                  ("worker_median_mb", "median worker peak RSS, MB", ".0f"),
                  ("driver_peak_mb", "driver peak RSS, MB", ".0f"),
                  ("session_rss_mb", "all sweep processes, peak sum of RSS, MB", ".0f")]


def md_memory(res: dict) -> list[str]:
    return ["VmHWM from `/proc/<pid>/status`, polled every 0.2 s while each sweep ran, of every trial worker "
            "(the pids named in the reports and every process of the sweep's session that Ray titles "
            "`ray::ImplicitFunc`) and of the "
            "`adder-sweep` driver; a peak reached after the last poll of a pid is missed. The last column sums "
            "VmRSS over all the sweep's processes (driver, Ray's GCS, raylet and helpers, workers) at one poll.", "",
            markdown_table(res["rows"], MEMORY_COLUMNS)]



def md_gpu(res: dict) -> list[str]:
    return gpu_bench.markdown(res).split("\n")[2:]  # without its title: the section has one


def md_analysis(res: dict) -> list[str]:
    st, ld = res["startup"], res["load"]
    rows = [{"what": k, "s": v} for k, v in st.items() if k != "runs"]
    return [f"Commands that do not train, median of {st['runs']} runs (`benchmarks/analysis_bench.py`); "
            "tests/test_cli_startup.py checks they import none of torch, ray and pandas:", "",
            markdown_table(rows, [("what", "command", ""), ("s", "seconds", ".2f")]), "",
            f"`orchestrator.load_study` of a synthetic {ld['trials']}-trial study (30 reports each): "
            f"{ld['from_files_s']:.2f} s built from the trial files (no tables yet), {ld['from_tables_s']:.2f} s "
            "from the Parquet tables (checked current against the trial files)."]


RENDER = {"step": ("Step throughput, machine limit, MFU", md_step), "threads": ("Threads", md_threads),
          "startup": ("Start-up", md_startup), "overhead": ("Sweep overhead", md_overhead),
          "schedulers": ("Schedulers: ASHA vs FIFO", md_schedulers), "gpu": ("GPU", md_gpu),
          "memory": ("Memory", md_memory), "analysis": ("Reading studies: start-up and loading", md_analysis),
          "packed": ("Packed members: one batched step against K single steps (benchmarks/pack_step.py)",
                     pack_step.markdown),
          "pack_study": ("Packed study: many tiny trials at pack 1, 16, 64 against raw Ray Tune "
                         "(benchmarks/pack_study.py)", pack_study.markdown),
          "scale": ("Scale: one study of many tiny trials (benchmarks/scale.py)", scale.markdown)}

TARGET_COLUMNS = [("target", "target", ""), ("measured", "measured", ""), ("met", "met", ""), ("reason", "reason", "")]
TIMING_COLUMNS = [("section", "section", ""), ("wall_s", "wall, s", ".0f"), ("others_cores", "others' cores", ".2f"),
                  ("status", "status", "")]


def markdown(results: dict, timing: list[dict], info: dict, quick: bool, total_s: float) -> str:
    title = "# Benchmark results" + (" (QUICK: reduced sizes, a smoke check, not results)" if quick else "")
    parts = [title, "",
             f"Written by `benchmarks/run.py` on {datetime.now().strftime('%Y-%m-%d %H:%M')} in {total_s:.0f} s. "
             "\"others' cores\" is how many cores other processes kept busy on average during a section (from "
             f"`/proc/stat`); above {BUSY} the section's absolute numbers measure the contention as much as the code.",
             "", "## Machine", "", machine_markdown(info), "",
             "## Targets", "", markdown_table(targets(results, quick), TARGET_COLUMNS), "",
             "## Sections run", "", markdown_table(timing, TIMING_COLUMNS)]
    for name in SECTIONS:
        if name not in results:
            continue
        heading, render = RENDER[name]
        parts += ["", f"## {heading}", ""]
        res = results[name]
        note = _section_error(name, res)
        parts += [note] if note else render(res)
    return "\n".join(parts) + "\n"


def _plain(obj: Any) -> Any:
    """JSON-ready copy: sweep runs become their summaries (reports are many and large)."""
    if isinstance(obj, sb.SweepRun):
        return {"name": obj.name, "wall_s": obj.wall_s, "first_report_s": obj.first_report_s,
                "train_s": obj.train_s(), "cpu_s": obj.cpu_s, "worker_hwm_mb": obj.worker_hwm_mb,
                "driver_hwm_mb": obj.driver_hwm_mb, "others_cores": obj.others_cores, "outcomes": obj.outcomes()}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes, about a minute: a smoke check")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds of the step benchmark (>= 5 for results)")
    p.add_argument("--only", help=f"comma-separated sections to run, from {','.join(SECTIONS)} (default: all)")
    p.add_argument("--out", type=Path, help="markdown output (default benchmarks/RESULTS.md; with --quick "
                                            "benchmarks/RESULTS-quick.md, so a smoke check never overwrites results)")
    p.add_argument("--json", type=Path, help="also write the measurements as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary study folders and logs")
    args = p.parse_args(argv)
    names = list(SECTIONS) if not args.only else [s for s in args.only.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        p.error(f"--only: unknown section(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(SECTIONS)}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    out = args.out or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    workdir = Path(tempfile.mkdtemp(prefix="adder-bench-"))
    t0 = time.monotonic()
    try:
        info = machine_info()
        results, timing = run_sections(names, args.quick, args.repeats, workdir)
    finally:
        if args.keep:
            sb.log(f"study folders and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.monotonic() - t0
    text = markdown(results, timing, info, args.quick, total)
    out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(_plain({"machine": info, "timing": timing, "results": results,
                                                "quick": args.quick, "total_s": total}), indent=1, default=str))
    sb.log("")
    sb.log(markdown_table(timing, TIMING_COLUMNS))
    sb.log(f"\ntotal {total:.0f} s; wrote {out}")
    print(text.split("## Sections run")[0].split("## Targets")[1].strip())
    return 1 if any(t["status"].startswith("failed") for t in timing) else 0


if __name__ == "__main__":
    sys.exit(main())
