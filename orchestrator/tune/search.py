"""A StudySpec as Ray Tune's objects: its distributions as Tune domains, its scheduler and its searcher (the
spec itself, orchestrator/spec/, knows nothing of Ray). Metric and mode go to TuneConfig only: Ray refuses them
twice."""
from __future__ import annotations

from trainables.config import TrainConfig

from ..errors import UserError
from ..spec.space import Dist, StudySpec


def tune_domain(dist: Dist):
    from ray import tune

    a = dist.args
    return {
        "grid": lambda: tune.grid_search(list(a)),
        "choice": lambda: tune.choice(list(a)),
        "uniform": lambda: tune.uniform(a[0], a[1]),
        "loguniform": lambda: tune.loguniform(a[0], a[1]),
        "randint": lambda: tune.randint(a[0], a[1]),
        "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
        "qrandint": lambda: tune.qrandint(a[0], a[1], a[2]),
    }[dist.kind]()


def param_space(spec: StudySpec) -> dict:
    """Every training-config key (defaults filled in), so each trial's config is complete and self-describing."""
    full = {**TrainConfig().to_flat(), **spec.space}
    return {k: (tune_domain(v) if isinstance(v, Dist) else v) for k, v in full.items()}


def make_scheduler(spec: StudySpec):
    from ray.tune import schedulers as S

    from .schedulers import AshaScheduler, FifoScheduler, MedianScheduler

    s = dict(spec.scheduler)
    kind = s.pop("type")
    if kind == "fifo":
        return FifoScheduler()
    if kind == "asha":
        return AshaScheduler(time_attr="iter", **s)
    if kind == "hyperband":
        return S.HyperBandScheduler(time_attr="iter", **s)
    if kind == "median":
        return MedianScheduler(time_attr="iter", **s)
    if kind == "pbt":
        muts = {k: tune_domain(Dist(*next(iter(v.items())))) for k, v in s.pop("hyperparam_mutations").items()}
        return S.PopulationBasedTraining(time_attr="iter", hyperparam_mutations=muts, **s)
    raise ValueError(kind)


def make_searcher(spec: StudySpec):
    if spec.search["type"] == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("search: optuna needs the optuna package: pip install 'adder-sweep[optuna]'") from None
        return OptunaSearch(seed=spec.search["seed"])
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search["seed"])
