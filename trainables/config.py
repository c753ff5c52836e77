"""Training configuration: one dataclass per concern, every field documented once.

The CLI flags of ``adder-sweep train``, the keys of search-space YAML files and the config columns of the
result tables are all derived from these fields (their names are unique across the four dataclasses, so a
config can be written flat: ``{"cell": "gru", "digits": 100, "lr": 0.02}``).

Nothing here imports torch or Ray.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import AdderSweepError

CELLS = ("rnn", "lstm", "gru")
KERNELS = ("torch", "fused")
DATA_MODES = ("full", "seed")
SCHEDULES = ("fixed", "plateau")
DEVICES = ("auto", "cpu", "cuda", "mps")
DENORMALS = ("flush", "keep")
DTYPES = ("float32", "float64")

# The assignment's protocol draws 9-digit operands; their sum has up to 10 digits.
SEED_MODE_MIN_DIGITS = 10
MAX_DIGITS = 10_000


class ConfigError(AdderSweepError, ValueError):
    """A configuration is invalid; ``problems`` lists every bad field as ``(field, message)``."""

    def __init__(self, problems: list[tuple[str, str]], source: str = "config"):
        self.problems = problems
        self.source = source
        lines = "; ".join(f"{name}: {msg}" for name, msg in problems)
        super().__init__(f"invalid {source}: {lines}")


@dataclass
class ModelConfig:
    cell: str = "rnn"
    """recurrent cell: rnn, lstm or gru (seed flag --type)"""
    layers: int = 2
    """number of stacked recurrent layers"""
    hidden: int = 64
    """hidden units per recurrent layer"""
    embed: int = 32
    """embedding size of one digit (two operands are concatenated)"""
    kernel: str = "torch"
    """recurrent kernel: torch, or fused (rnn/gru on CPU: a C++ time loop, 1.2-1.6x faster; differs in rounding)"""


@dataclass
class DataConfig:
    mode: str = "full"
    """full: uniform d-digit operands; seed: the assignment's 9-digit operands zero-padded to --digits"""
    digits: int = 11
    """digits per operand (seed flag --len)"""
    batch_size: int = 200
    """training examples per iteration"""
    eval_size: int = 2000
    """examples in the fixed evaluation set (per length)"""
    eval_lengths: list[int] = field(default_factory=list)
    """extra operand lengths evaluated as exact_acc@L (length generalisation)"""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Adam learning rate (initial value with the plateau schedule)"""
    schedule: str = "fixed"
    """learning-rate schedule: fixed or plateau (ReduceLROnPlateau on the training loss, checked per report)"""
    plateau_factor: float = 0.5
    """plateau: factor the lr is multiplied by on a plateau"""
    plateau_patience: int = 10
    """plateau: reports without improvement before the lr is reduced"""
    plateau_threshold: float = 1e-3
    """plateau: relative improvement that counts as progress"""
    plateau_min_lr: float = 1e-3
    """plateau: lower bound of the lr"""
    grad_clip: float = 0.0
    """clip the gradient norm to this value; 0 disables clipping"""


@dataclass
class RunConfig:
    iters: int = 3000
    """training iterations (batches) at most (seed flag --iters)"""
    eval_every: int = 50
    """iterations between evaluations and reports"""
    target: float = 1.0
    """stop as solved once exact_acc reaches this value; above 1 never stops early"""
    seed: int = 0
    """seed of initial weights, training batches and the evaluation set"""
    device: str = "auto"
    """auto, cpu, cuda or mps (auto: cuda if present, else mps, else cpu)"""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default"""
    denormals: str = "flush"
    """CPU floats below 1.2e-38: flush to zero (unstable runs train up to 13x faster; stable runs unchanged) or keep"""
    deterministic: bool = True
    """on CUDA, deterministic cuDNN and cuBLAS kernels: the same numbers for the same seed (false: faster, not repeatable)"""
    dtype: str = "float32"
    """floating-point type of weights and activations: float32, or float64 (slow; to compare runs to rounding)"""


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # -- flat view ---------------------------------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    @classmethod
    def from_flat(cls, values: dict[str, Any], *, source: str = "config", validate: bool = True) -> "TrainConfig":
        """Build a config from flat keys, coercing types; raises ConfigError listing every problem."""
        problems: list[tuple[str, str]] = []
        known = field_specs()
        sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for key, value in values.items():
            if key not in known:
                problems.append((key, f"unknown key{did_you_mean(key, known)}"))
                continue
            spec = known[key]
            try:
                sections[spec.section][key] = coerce(value, spec.type)
            except (TypeError, ValueError) as exc:
                problems.append((key, str(exc)))
        if problems:
            raise ConfigError(problems, source)
        cfg = cls(**{s: SECTIONS[s](**kw) for s, kw in sections.items()})
        if validate:
            cfg.validate(source)
        return cfg

    def replace(self, **flat: Any) -> "TrainConfig":
        return TrainConfig.from_flat({**self.to_flat(), **flat})

    # -- validation --------------------------------------------------------------------------------------
    def problems(self) -> list[tuple[str, str]]:
        m, d, o, r = self.model, self.data, self.optim, self.run
        p: list[tuple[str, str]] = []

        def check(ok: bool, name: str, msg: str) -> None:
            if not ok:
                p.append((name, msg))

        check(m.cell in CELLS, "cell", f"unknown cell {m.cell!r}; choose one of {', '.join(CELLS)}")
        check(m.kernel in KERNELS, "kernel", f"unknown kernel {m.kernel!r}; choose one of {', '.join(KERNELS)}")
        check(m.layers >= 1, "layers", f"must be >= 1, got {m.layers}")
        check(m.hidden >= 1, "hidden", f"must be >= 1, got {m.hidden}")
        check(m.embed >= 1, "embed", f"must be >= 1, got {m.embed}")
        check(d.mode in DATA_MODES, "mode", f"unknown data mode {d.mode!r}; choose one of {', '.join(DATA_MODES)}")
        check(1 <= d.digits <= MAX_DIGITS, "digits", f"must be between 1 and {MAX_DIGITS}, got {d.digits}")
        if d.mode == "seed":
            check(d.digits >= SEED_MODE_MIN_DIGITS, "digits",
                  f"seed mode pads 9-digit operands (sums up to 10 digits): needs >= {SEED_MODE_MIN_DIGITS}, got {d.digits}")
            for L in d.eval_lengths:
                check(L >= SEED_MODE_MIN_DIGITS, "eval_lengths", f"seed mode needs lengths >= {SEED_MODE_MIN_DIGITS}, got {L}")
        check(d.batch_size >= 1, "batch_size", f"must be >= 1, got {d.batch_size}")
        check(d.eval_size >= 1, "eval_size", f"must be >= 1, got {d.eval_size}")
        for L in d.eval_lengths:
            check(1 <= L <= MAX_DIGITS, "eval_lengths", f"each length must be between 1 and {MAX_DIGITS}, got {L}")
        check(o.lr > 0, "lr", f"must be > 0, got {o.lr}")
        check(o.schedule in SCHEDULES, "schedule", f"unknown schedule {o.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        check(0 < o.plateau_factor < 1, "plateau_factor", f"must be in (0, 1), got {o.plateau_factor}")
        check(o.plateau_patience >= 0, "plateau_patience", f"must be >= 0, got {o.plateau_patience}")
        check(o.plateau_threshold >= 0, "plateau_threshold", f"must be >= 0, got {o.plateau_threshold}")
        check(o.plateau_min_lr >= 0, "plateau_min_lr", f"must be >= 0, got {o.plateau_min_lr}")
        check(o.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables), got {o.grad_clip}")
        check(r.iters >= 1, "iters", f"must be >= 1, got {r.iters}")
        check(r.eval_every >= 1, "eval_every", f"must be >= 1, got {r.eval_every}")
        check(0 < r.target, "target", f"must be > 0, got {r.target}")
        check(r.seed >= 0, "seed", f"must be >= 0, got {r.seed}")
        check(r.device in DEVICES, "device", f"unknown device {r.device!r}; choose one of {', '.join(DEVICES)}")
        check(r.threads >= 0, "threads", f"must be >= 0, got {r.threads}")
        check(r.denormals in DENORMALS, "denormals",
              f"unknown setting {r.denormals!r}; choose one of {', '.join(DENORMALS)}")
        check(r.dtype in DTYPES, "dtype", f"unknown dtype {r.dtype!r}; choose one of {', '.join(DTYPES)}")
        return p

    def validate(self, source: str = "config") -> "TrainConfig":
        p = self.problems()
        if p:
            raise ConfigError(p, source)
        return self


# -- field metadata, shared by the CLI, the YAML loader and the tables ------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    name: str
    section: str
    type: Any
    default: Any
    doc: str


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (the litgpt convention), read from the source."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = str(nxt.value.value).strip()  # type: ignore[attr-defined]
    return docs


_SPECS: dict[str, FieldSpec] | None = None


def field_specs() -> dict[str, FieldSpec]:
    """Every flat config key with its section, type, default and one-line doc."""
    global _SPECS
    if _SPECS is None:
        specs = {}
        for section, cls in SECTIONS.items():
            hints = typing.get_type_hints(cls)
            docs = _field_docs(cls)
            for f in dataclasses.fields(cls):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                specs[f.name] = FieldSpec(f.name, section, hints[f.name], default, docs.get(f.name, ""))
        _SPECS = specs
    return _SPECS


def did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, "a list of integers")


def coerce(value: Any, tp: Any) -> Any:
    """Convert ``value`` to the field type ``tp`` strictly: no silent float->int truncation, no bool as number."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # a command-line flag's text
            return value.strip().lower() == "true"
        raise TypeError(f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    # list[int]
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    if isinstance(value, (list, tuple)):
        return [coerce(v, int) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise TypeError(f"expected a list of integers, got {value!r}")


# What a packed step (trainables/pack_loop.py) needs every member to have in common: the shape of the model and of
# a step, and the process-wide settings. Members differ in anything else (lr, seed, schedule and its knobs,
# grad_clip, target, iters).
PACK_SHARED = ("cell", "layers", "hidden", "embed", "kernel", "mode", "digits", "batch_size", "eval_size",
               "eval_lengths", "eval_every", "device", "threads", "denormals", "deterministic", "dtype")


def pack_key(config: TrainConfig) -> tuple:
    """Configurations with equal keys can share a pack."""
    flat = config.to_flat()
    return tuple((k, tuple(flat[k]) if isinstance(flat[k], list) else flat[k]) for k in PACK_SHARED)
