"""The trials a study plans, resolved in the driver: configurations, their replicates, and their identity.

A **configuration** is one setting of every training key but ``seed``; a **replicate** is the same configuration
with another seed. For grid and random search the driver resolves every trial itself, instead of letting Tune's
searcher sample:

* grid keys are crossed in file order;
* random keys are drawn per configuration from a generator seeded by (the search seed, the configuration's grid
  point, the sample index) -- so the replicates of a configuration share its draws, and adding grid values, seeds
  or samples later never changes a configuration that already ran;
* seeds come from ``repeats: N`` (s..s+N-1 from the space's ``seed``, 0 unless set) or a ``seed`` grid; either
  way they are replicates.

A study that grew (``adder-sweep extend``) keeps each configuration's draws from the generation where it first
appeared, so a wider random range changes only the samples drawn after it.

Optuna studies sample in Optuna; their replicates come from Tune's ``Repeater`` (``__trial_index__`` -> seed).
Nothing here imports Ray.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .space import Dist, StudySpec

RANDOM_KINDS = ("choice", "uniform", "loguniform", "randint", "quniform", "qrandint")


@dataclass(frozen=True)
class PlannedTrial:
    config: dict  # the swept and constant keys of the study's space, resolved (seed included)
    config_id: str  # identity of the configuration (every identity key but seed)
    seed: int
    grid_point: tuple  # ((key, value), ...) of the grid keys but seed
    sample: int  # index of the random draw within its grid point


def identity_keys(spec: StudySpec) -> list[str]:
    """The keys that tell configurations apart: every key of the space except ``seed``, and except ``iters`` unless
    it is swept (a longer budget continues a configuration; it does not make a new one)."""
    keys = [k for k in spec.space if k != "seed"]
    if "iters" in keys and not isinstance(spec.space["iters"], Dist):
        keys.remove("iters")
    return sorted(keys)


def config_id(config: dict, keys: Iterable[str]) -> str:
    """A short stable id of a configuration: its values of ``keys`` (training-config defaults for absent ones)."""
    from trainables.config import field_specs

    specs = field_specs()
    items = [(k, config.get(k, specs[k].default if k in specs else None)) for k in sorted(keys)]
    return hashlib.blake2b(json.dumps(items, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def seeds(spec: StudySpec) -> list[int]:
    """The replicate seeds of every configuration."""
    s = spec.space.get("seed")
    if isinstance(s, Dist):
        return [int(v) for v in s.args]
    first = int(s) if s is not None else 0
    return list(range(first, first + spec.repeats))


def grid_points(spec: StudySpec) -> list[tuple]:
    """Every combination of the grid keys but seed, in file order (the first key varies slowest)."""
    grids = [(k, v.args) for k, v in spec.space.items() if isinstance(v, Dist) and v.kind == "grid" and k != "seed"]
    if not grids:
        return [()]
    return [tuple(zip([k for k, _ in grids], combo)) for combo in itertools.product(*[vals for _, vals in grids])]


def _rng(search_seed: int, grid_point: tuple, sample: int):
    import numpy as np

    from trainables.seeding import stream_seed

    return np.random.Generator(np.random.PCG64(stream_seed("adder-sweep/sample", search_seed, grid_point, sample)))


def draw(dist: Dist, rng) -> Any:
    """One value of a random distribution (the same rules as Ray Tune's domains)."""
    a = dist.args
    if dist.kind == "choice":
        return a[int(rng.integers(len(a)))]
    if dist.kind == "uniform":
        return float(a[0] + rng.random() * (a[1] - a[0]))
    if dist.kind == "loguniform":
        return float(math.exp(math.log(a[0]) + rng.random() * (math.log(a[1]) - math.log(a[0]))))
    if dist.kind == "randint":  # hi exclusive
        return int(rng.integers(a[0], a[1]))
    if dist.kind == "quniform":
        return float(round((a[0] + rng.random() * (a[1] - a[0])) / a[2]) * a[2])
    if dist.kind == "qrandint":  # hi inclusive, as Tune's
        return int(round(int(rng.integers(a[0], a[1] + 1)) / a[2]) * a[2])
    raise ValueError(dist.kind)


def _draws(spec: StudySpec, grid_point: tuple, sample: int) -> dict:
    rng = _rng(spec.search["seed"], grid_point, sample)
    return {k: draw(v, rng) for k, v in sorted(spec.space.items())
            if isinstance(v, Dist) and v.kind in RANDOM_KINDS}


def _contains(spec: StudySpec, grid_point: tuple) -> bool:
    for k, value in grid_point:
        v = spec.space.get(k)
        if isinstance(v, Dist) and v.kind == "grid":
            if value not in v.args:
                return False
        elif v != value:
            return False
    return True


def plan(spec: StudySpec, history: Sequence[StudySpec] = ()) -> list[PlannedTrial]:
    """Every trial of ``spec`` (grid or random search), in launch order: grid points, then samples, then seeds.
    ``history``: the specs of the study's earlier generations, oldest first; a (grid point, sample) that one of
    them had keeps the draws it got there. Identical (configuration, seed) pairs run once."""
    if spec.search["type"] == "optuna":
        raise ValueError("an Optuna study samples in Optuna; it has no plan")
    keys = identity_keys(spec)
    constants = {k: v for k, v in spec.space.items() if not isinstance(v, Dist)}
    out, seen = [], set()
    for point in grid_points(spec):
        for j in range(spec.num_samples):
            origin = next((h for h in history if _contains(h, point) and j < h.num_samples
                           and h.search["seed"] == spec.search["seed"]), spec)
            values = {**constants, **dict(point), **_draws(origin, point, j)}
            cid = config_id(values, keys)
            for s in seeds(spec):
                if (cid, s) in seen:
                    continue
                seen.add((cid, s))
                out.append(PlannedTrial({**values, "seed": s}, cid, s, point, j))
    return out


def pack_groups(configs: Sequence[dict], size: int) -> list[list[int]]:
    """The indices of ``configs`` (trial configs: space keys, seed, driver keys) in packs of up to ``size`` that
    can train as one batched model -- equal in trainables.config.PACK_SHARED -- in order: each trial joins the
    newest pack of its kind until that one is full."""
    from trainables.config import TrainConfig, pack_key
    from trainables.seeding import training_values

    open_packs: dict[tuple, list[int]] = {}
    out: list[list[int]] = []
    for i, config in enumerate(configs):
        key = pack_key(TrainConfig.from_flat(training_values(config)))
        group = open_packs.get(key)
        if group is None or len(group) >= size:
            group = open_packs[key] = []
            out.append(group)
        group.append(i)
    return out


def num_trials(spec: StudySpec) -> int:
    if spec.search["type"] == "optuna":
        return spec.num_samples * len(seeds(spec))
    return len(plan(spec))
