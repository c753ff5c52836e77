"""The GPU benchmark: one command, within 4 minutes on one GPU, each section capped in time and its JSON written
as soon as it ends (a run cut short keeps what it measured). Writes ``gpu.json`` and ``gpu.md`` to ``--out``.

Sections:
* ``step``        -- one trial's training step, GPU vs CPU (1 thread): rnn, lstm, gru at 11 and 100 digits.
* ``determinism`` -- two CUDA runs with ``deterministic: true`` end with equal weights; the same with ``false``;
                     the cost of the deterministic kernels (step time, both settings).
* ``context``     -- what one process's CUDA context costs in GPU memory (what a CPU trial that asked CUDA for its
                     RNG state paid, before trainables/device.py; what each of K fractional trials pays).
* ``fractional``  -- Ray fractional GPUs: K = 1, 2, 4, 8, 16 trials sharing one GPU (``--gpus-per-trial 1/K``):
                     total samples/s, GPU memory and utilisation from ``nvidia-smi`` sampled meanwhile.
* ``packed``      -- K = 1, 4, 16, 64 members of one pack (one process, one batched model) beside ``fractional``'s K
                     processes: total samples/s and the ratio to K lone trials (target >= 0.8 K at K = 64).

``--dry-run`` runs every section at tiny sizes on the CPU (the fractional section on a `ray start --num-gpus 1`
cluster of logical GPUs, training on the CPU): the suite runs it, so the script works before it meets a GPU.

    python benchmarks/gpu.py --out /tmp/gpu            # on a GPU machine
    python benchmarks/gpu.py --dry-run --out /tmp/gpu  # anywhere
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

BUDGET_S = {"step": 50, "determinism": 30, "context": 15, "fractional": 100, "packed": 25}  # 220 s of 240


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- one trial's step ---------------------------------------------------------------------------------------------
def step_time(cell: str, digits: int, device: str, steps: int, deterministic: bool = True) -> float:
    """Seconds per training step (median of ``steps`` after two warm-up steps) of the default model."""
    import torch

    from trainables.config import TrainConfig
    from trainables.loop import _Run, prepare_device

    cfg = TrainConfig.from_flat({"cell": cell, "digits": digits, "device": device, "threads": 1, "eval_size": 10,
                                 "deterministic": deterministic})
    dev, _ = prepare_device(cfg, None, None, None)
    run = _Run(cfg, dev)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = run.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        float(loss)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def section_step(dry: bool, deadline: float) -> dict:
    import torch

    gpu = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    rows = []
    for cell in ("rnn", "lstm", "gru"):
        for digits in ((11,) if dry else (11, 100)):
            if time.monotonic() > deadline:
                return {"rows": rows, "cut": "time budget reached"}
            steps = 3 if dry else 20
            cpu = step_time(cell, digits, "cpu", steps)
            acc = step_time(cell, digits, gpu, steps)
            rows.append({"cell": cell, "digits": digits, "cpu_ms": cpu * 1e3, "device_ms": acc * 1e3,
                         "speedup": cpu / acc, "samples_per_s": 200 / acc})
    return {"device": gpu, "rows": rows}


# -- determinism --------------------------------------------------------------------------------------------------
def _weights_after(deterministic: bool, device: str, iters: int):
    from trainables import TrainConfig, train

    cfg = TrainConfig.from_flat({"cell": "lstm", "digits": 11, "iters": iters, "eval_every": iters, "eval_size": 100,
                                 "device": device, "deterministic": deterministic, "threads": 1, "target": 2})
    t0 = time.perf_counter()
    out = train(cfg)
    return {k: v.detach().cpu().clone() for k, v in out["model"].state_dict().items()}, time.perf_counter() - t0


def section_determinism(dry: bool, deadline: float) -> dict:
    import torch

    device = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    iters = 10 if dry else 200
    out: dict[str, Any] = {"device": device, "iters": iters}
    for det in (True, False):
        if time.monotonic() > deadline:
            out["cut"] = "time budget reached"
            break
        a, ta = _weights_after(det, device, iters)
        b, tb = _weights_after(det, device, iters)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        out["deterministic" if det else "nondeterministic"] = {"equal": diff == 0.0, "max_abs_diff": diff,
                                                               "wall_s": (ta + tb) / 2}
    if "deterministic" in out and "nondeterministic" in out:
        out["cost"] = out["deterministic"]["wall_s"] / out["nondeterministic"]["wall_s"]
    return out


# -- a CUDA context -----------------------------------------------------------------------------------------------
def nvidia_smi() -> Optional[dict]:
    """Used memory (MiB) and utilisation (%) of GPU 0, or None without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    p = subprocess.run([exe, "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                       capture_output=True, text=True, timeout=10)
    try:
        used, util = (float(x) for x in p.stdout.strip().split(","))
    except ValueError:
        return None
    return {"memory_mib": used, "util_pct": util}


CONTEXT_PROBE = "import torch, time; torch.cuda.get_rng_state_all(); print('ready', flush=True); time.sleep(8)"


def section_context(dry: bool, deadline: float) -> dict:
    import torch

    if dry or not torch.cuda.is_available():
        return {"skipped": "no CUDA device (dry run): a context's memory is measured on a GPU only"}
    before = nvidia_smi()
    proc = subprocess.Popen([sys.executable, "-c", CONTEXT_PROBE], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    time.sleep(1)
    during = nvidia_smi()
    proc.wait(timeout=30)
    if not before or not during:
        return {"skipped": "nvidia-smi did not answer"}
    return {"context_mib": during["memory_mib"] - before["memory_mib"],
            "what": "GPU memory of one process that only asked torch.cuda.get_rng_state_all() (a CUDA context)"}


# -- Ray fractional GPUs ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LogicalGpuCluster:
    """`ray start --head --num-gpus 1` on loopback (dry run: logical GPUs on a CPU machine), in its own group."""

    def __init__(self, cpus: int):
        self.port = _free_port()
        self.temp = tempfile.mkdtemp(prefix="adgpu", dir="/tmp")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="disabled")
        ray = Path(sys.executable).parent / "ray"
        self.proc = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
             "--num-cpus", str(cpus), "--num-gpus", "1", "--temp-dir", self.temp, "--include-dashboard", "false",
             "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port()),
             "--ray-client-server-port", str(_free_port()), "--metrics-export-port", str(_free_port())],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


class SmiSampler(threading.Thread):
    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            s = nvidia_smi()
            if s:
                self.samples.append(s)
            self.stopped.wait(self.every)


def _fractional_run(k: int, dry: bool, work: Path, address: Optional[str], env: dict) -> dict:
    from orchestrator.results.report import load_study

    iters = 40 if dry else 300
    space = (f"# {k} trials sharing one GPU\nname: frac{k}\nrepeats: {k}\nmax_concurrent: {k}\n"
             f"resources: {{cpu: {min(1.0, (os.cpu_count() or 1) / k):g}, gpu: {1 / k:g}}}\n"
             f"space: {{cell: lstm, digits: {11 if dry else 100}, layers: 2, iters: {iters}, eval_every: {iters}, "
             f"eval_size: 100, target: 2{', device: cpu' if dry else ''}}}\n")
    path = work / f"frac{k}.yaml"
    path.write_text(space)
    cmd = [sys.executable, "-m", "orchestrator", "sweep", str(path), "--storage", str(work / "res"), "--name",
           f"frac{k}"] + (["--address", address] if address else [])
    smi = SmiSampler()
    smi.start()
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    wall = time.monotonic() - t0
    smi.stopped.set()
    if p.returncode != 0:
        raise RuntimeError(f"K={k}: the sweep exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    study = load_study(f"frac{k}", str(work / "res"))
    train_s = study.trials["train_s"].astype(float)
    samples = k * iters * 200
    return {"k": k, "wall_s": wall, "samples_per_s": samples / float(train_s.max()),
            "per_trial_samples_per_s": float((iters * 200 / train_s).median()),
            "gpu_memory_mib": max((s["memory_mib"] for s in smi.samples), default=None),
            "gpu_util_pct": (sum(s["util_pct"] for s in smi.samples) / len(smi.samples)) if smi.samples else None}


def section_fractional(dry: bool, deadline: float) -> dict:
    import torch

    if not dry and not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    work = Path(tempfile.mkdtemp(prefix="adgpu-frac-"))
    cluster = LogicalGpuCluster(cpus=2) if dry else None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cluster is not None:
        env = {**cluster.env, "PYTHONPATH": str(ROOT)}
    rows, cut = [], None
    try:
        for k in ((1, 2) if dry else (1, 2, 4, 8, 16)):
            if time.monotonic() > deadline:
                cut = f"time budget reached before K={k}"
                break
            log(f"  fractional K={k}")
            rows.append(_fractional_run(k, dry, work, f"127.0.0.1:{cluster.port}" if cluster else None, env))
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        r["vs_one"] = r["samples_per_s"] / rows[0]["samples_per_s"]
    return {"rows": rows, **({"cut": cut} if cut else {}), "logical": dry}


def packed_step_time(k: int, cell: str, device: str, steps: int) -> float:
    """Seconds per training step of a pack of ``k`` members of the default model (11 digits, batch 200), each
    with its own seed and learning rate (trainables/pack_loop.py's step: data, forward, backward, clip, Adam)."""
    import torch

    from trainables.config import TrainConfig
    from trainables.loop import prepare_device
    from trainables.pack_loop import _Pack

    cfgs = [TrainConfig.from_flat({"cell": cell, "digits": 11, "device": device, "threads": 1, "eval_size": 10,
                                   "seed": i, "lr": 1e-3 * (1 + i % 4)}) for i in range(k)]
    dev, _ = prepare_device(cfgs[0], None, None, None)
    pack = _Pack(cfgs, dev)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        losses = pack.step(pack.active())
        if dev.type == "cuda":
            torch.cuda.synchronize()
        float(losses.sum())
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def section_packed(dry: bool, deadline: float) -> dict:
    """K = 1, 4, 16, 64 members in one process and one batched model, beside the fractional rows (K processes):
    total samples/s, and against K times one lone trial's (the target: >= 0.8 K at K = 64)."""
    import torch

    gpu = "cuda" if torch.cuda.is_available() and not dry else "cpu"
    cell = "lstm"
    one = 200 / step_time(cell, 11, gpu, 3 if dry else 20)
    rows = []
    for k in ((1, 4) if dry else (1, 4, 16, 64)):
        if time.monotonic() > deadline:
            return {"device": gpu, "cell": cell, "rows": rows, "cut": "time budget reached"}
        t = packed_step_time(k, cell, gpu, 3 if dry else 20)
        rows.append({"k": k, "step_ms": t * 1e3, "samples_per_s": k * 200 / t, "vs_k_lone": k * 200 / t / (k * one)})
    return {"device": gpu, "cell": cell, "lone_samples_per_s": one, "rows": rows}


SECTIONS: dict[str, Callable[[bool, float], dict]] = {
    "step": section_step, "determinism": section_determinism, "context": section_context,
    "fractional": section_fractional, "packed": section_packed}


# -- report -------------------------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v):
        return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(cell(v) for v in r) + " |" for r in rows)]


def markdown(results: dict) -> str:
    out = [f"# GPU benchmark ({'DRY RUN on the CPU: tiny sizes, not results' if results['dry_run'] else 'measured'})",
           "", f"Device: {results.get('device')}; torch {results.get('torch')}; {results.get('at')}.", ""]
    for name in SECTIONS:
        res = results["sections"].get(name)
        out += [f"## {name}", ""]
        if res is None:
            out += ["not run", ""]
            continue
        if "error" in res or "skipped" in res:
            out += [res.get("error") or res["skipped"], ""]
            continue
        if name == "step":
            dev = res["device"]
            out += _table(["cell", "digits", "CPU ms/step (1 thread)", f"{dev} ms/step", "speed-up", "samples/s"],
                          [[r["cell"], r["digits"], r["cpu_ms"], r["device_ms"], r["speedup"], r["samples_per_s"]]
                           for r in res["rows"]])
        elif name == "determinism":
            out += _table(["setting", "two runs equal", "max |diff|", "wall s"],
                          [[k, res[k]["equal"], res[k]["max_abs_diff"], res[k]["wall_s"]]
                           for k in ("deterministic", "nondeterministic") if k in res])
            if "cost" in res:
                out += ["", f"Deterministic kernels cost {res['cost']:.2f}x the wall of the default ones "
                            f"({res['device']}, lstm, 11 digits, {res['iters']} iterations)."]
        elif name == "context":
            out += [f"{res['context_mib']:.0f} MiB: {res['what']}."]
        elif name == "fractional":
            out += _table(["K trials", "total samples/s", "vs K=1", "per trial samples/s", "GPU MiB", "GPU util %"],
                          [[r["k"], r["samples_per_s"], r["vs_one"], r["per_trial_samples_per_s"],
                            r["gpu_memory_mib"], r["gpu_util_pct"]] for r in res["rows"]])
        elif name == "packed":
            out += [f"One pack of K members of the default {res['cell']} model (11 digits, batch 200) on "
                    f"{res['device']}, one process; a lone trial there: {res['lone_samples_per_s']:.0f} samples/s.",
                    ""]
            out += _table(["K members", "ms/step", "total samples/s", "vs K lone trials"],
                          [[r["k"], r["step_ms"], r["samples_per_s"], r["vs_k_lone"]] for r in res["rows"]])
        if res.get("cut"):
            out += ["", f"Cut short: {res['cut']}."]
        out.append("")
    return "\n".join(out)


def run(dry: bool, out: Optional[Path] = None, names: Optional[list[str]] = None) -> dict:
    """Every section (or ``names``), each within its budget; with ``out``, gpu.json and gpu.md are rewritten as
    each section ends."""
    import torch

    results: dict[str, Any] = {"dry_run": dry, "torch": torch.__version__, "at": time.strftime("%Y-%m-%d %H:%M"),
                               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                               "sections": {}}
    for name in names or list(SECTIONS):
        log(f"== {name} ==")
        t0 = time.monotonic()
        try:
            results["sections"][name] = SECTIONS[name](dry, t0 + BUDGET_S[name])
        except Exception as exc:  # one broken section must not cost the others their run
            results["sections"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        results["sections"][name]["wall_s"] = time.monotonic() - t0
        if out is not None:
            (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str) + "\n")  # as soon as it ends
            (out / "gpu.md").write_text(markdown(results))
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--out", default=str(HERE), help="folder for gpu.json and gpu.md (default: benchmarks/)")
    p.add_argument("--only", help=f"comma-separated sections from {','.join(SECTIONS)}")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = run(args.dry_run, out, args.only.split(",") if args.only else None)
    print(markdown(results))
    failed = [n for n, r in results["sections"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
