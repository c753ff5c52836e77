"""Helpers shared by the benchmark scripts: machine facts, interleaved timing, markdown tables.

Timing here is for comparisons made in one process and one run: cases are interleaved round by round and the
median of the rounds is reported, so a slow spell (another process on the cores, frequency changes) lands on
every case alike instead of on whichever ran last. Nothing here knows about the adder model.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from orchestrator.studydir.records import command_line, package_versions


# -- machine and versions ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_build() -> dict[str, str]:
    """The math libraries torch was built with, as torch itself reports them."""
    info = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for line in torch.__config__.show().splitlines():
        line = line.strip(" -")
        if "Math Kernel Library" in line:
            info["mkl"] = line.split("Version", 1)[-1].strip()
        elif line.startswith(("Intel(R) MKL-DNN", "oneDNN")):
            info["onednn"] = line.split(" ", 2)[-1].strip()
    return info


def machine_info() -> dict[str, Any]:
    """Everything a reader needs to judge a number from this run: CPU, cores, threads, versions, command."""
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        **torch_build(),
        **package_versions(),
        "command": command_line(),
    }


# -- other processes on the cores ---------------------------------------------------------------------------
def _machine_busy_seconds() -> Optional[float]:
    """CPU-seconds all processes have spent busy since boot, from /proc/stat (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CoreShare:
    """How many cores other processes kept busy while a block ran (``with CoreShare() as s: ...; s.others``).

    The machine's busy CPU-seconds minus this process's own, divided by the wall time: 0.0 means the run had the
    machine to itself, 1.0 means another process used one full core throughout. ``include_children`` also counts
    as "own" the children this process has waited for meanwhile (a benchmark run as a subprocess); processes
    that are still running or that nobody in this tree reaped count as others."""

    include_children: bool = False
    others: Optional[float] = None
    wall_s: float = 0.0
    _t0: float = field(default=0.0, repr=False)
    _busy0: Optional[float] = field(default=None, repr=False)
    _self0: float = field(default=0.0, repr=False)

    def __enter__(self) -> "CoreShare":
        self._t0, self._busy0 = time.perf_counter(), _machine_busy_seconds()
        self._self0 = _self_cpu_seconds(self.include_children)
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        busy1 = _machine_busy_seconds()
        if self._busy0 is not None and busy1 is not None and self.wall_s > 0:
            mine = _self_cpu_seconds(self.include_children) - self._self0
            self.others = max(0.0, (busy1 - self._busy0 - mine) / self.wall_s)


def _self_cpu_seconds(include_children: bool = False) -> float:
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if include_children else 0.0)


# -- timing -------------------------------------------------------------------------------------------------
def calls_for(fn: Callable[[], Any], target_s: float, max_calls: int = 1000) -> int:
    """Calls of ``fn`` that take about ``target_s`` seconds, from one timed call after one warm-up call."""
    fn()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return max(1, min(max_calls, round(target_s / max(dt, 1e-9))))


def interleaved(cases: dict[Any, Callable[[], Any]], repeats: int, calls: dict[Any, int],
                setup: Optional[dict[Any, Callable[[], None]]] = None,
                sync: Callable[[], None] = lambda: None) -> dict[Any, list[float]]:
    """Seconds per call of each case, one sample per round and case.

    Every round runs each case ``calls[name]`` times back to back; the order rotates by one case per round,
    so with two cases it alternates A B, B A, A B, ... ``setup[name]`` (untimed) runs before each block, for
    process-wide settings such as the thread count; ``sync`` waits for queued device work (a no-op on CPU).
    """
    setup = setup or {}
    names = list(cases)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            fn, n = cases[name], calls[name]
            if name in setup:
                setup[name]()
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / n)
    return samples


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def spread(xs: Sequence[float]) -> float:
    """Relative spread of the samples: (max - min) / median."""
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else float("nan")


# -- markdown ------------------------------------------------------------------------------------------------
Column = tuple[str, str, str]  # (row key, header, format spec such as ".1f"; "" for str())


def markdown_table(rows: Iterable[dict], columns: Sequence[Column]) -> str:
    """A GitHub markdown table of ``rows``; a missing or None value prints as an en dash."""
    def cell(value: Any, spec: str) -> str:
        if value is None:
            return "–"
        if spec and isinstance(value, (int, float)):
            return format(value, spec)
        return str(value)

    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" if not spec else "---:" for _, _, spec in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines)


def machine_markdown(info: dict[str, Any], keys: Sequence[str] = (
        "cpu", "usable_cores", "torch_threads", "cpu_capability", "mkl", "onednn", "torch", "numpy",
        "python", "platform", "command")) -> str:
    """The machine facts as a bullet list."""
    return "\n".join(f"- {k}: `{info[k]}`" for k in keys if k in info)
