"""The resolved space as ``adder-sweep validate`` prints it: the study keys, every training key with its value or
default, and the trials the plan makes of it (orchestrator/spec/plan.py)."""
from __future__ import annotations

from trainables.config import TrainConfig

from .plan import num_trials, seeds
from .space import Dist, StudySpec


def describe(spec: StudySpec) -> str:
    """The resolved space as text, for ``adder-sweep validate``."""
    defaults = TrainConfig().to_flat()
    lines = [f"study {spec.name}: {spec.description}".rstrip(": "), f"  source: {spec.source}"]
    lines.append(f"  metric: {spec.metric} ({spec.mode}); search: {spec.search['type']} (seed {spec.search['seed']}); "
                 f"scheduler: {', '.join(f'{k}={v}' for k, v in spec.scheduler.items())}")
    lines.append(f"  resources per trial: cpu={spec.resources['cpu']:g} gpu={spec.resources['gpu']:g}; "
                 f"max_concurrent: {spec.max_concurrent or 'all that fit'}; checkpoint every {spec.checkpoint_every} "
                 f"reports; max_failures: {spec.max_failures}")
    if spec.stop:
        lines.append(f"  stop: {', '.join(f'{k} >= {v:g}' for k, v in spec.stop.items())}")
    if spec.tracking:
        lines.append(f"  tracking: {', '.join(f'{k} {v}' for k, v in spec.tracking.items())}")
    lines.append("  space:")
    width = max(len(k) for k in defaults)
    for k in defaults:
        if k in spec.space:
            v = spec.space[k]
            lines.append(f"    {k:<{width}}  {v.describe() if isinstance(v, Dist) else repr(v)}")
    lines.append("  defaults for the rest: " + ", ".join(f"{k}={defaults[k]!r}" for k in defaults if k not in spec.space))
    n = num_trials(spec)
    grid = spec.grid_size() // max(1, len(spec.space["seed"].args) if isinstance(spec.space.get("seed"), Dist) else 1)
    reps = seeds(spec)
    lines.append(f"  trials: {n} ({grid} grid point{'s' if grid != 1 else ''} x {spec.num_samples} sample"
                 f"{'s' if spec.num_samples != 1 else ''} x {len(reps)} seed{'s' if len(reps) != 1 else ''}"
                 f" {reps if len(reps) <= 8 else f'[{reps[0]}..{reps[-1]}]'}; replicates of a configuration share "
                 "its sampled values)")
    if spec.pack > 1:
        from .plan import pack_groups, plan

        groups = pack_groups([t.config for t in plan(spec)], spec.pack)
        lines.append(f"  packed: {len(groups)} Ray trial{'s' if len(groups) != 1 else ''} of up to {spec.pack} "
                     f"members each (sizes {', '.join(map(str, sorted({len(g) for g in groups}, reverse=True)))})")
    return "\n".join(lines)
