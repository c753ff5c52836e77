"""Ray Tune's FIFO, ASHA and median-stopping schedulers, with the next trial to start chosen in time that does not
grow with the study.

Ray's ``FIFOScheduler.choose_trial_to_run`` -- which ASHA and the median rule inherit -- returns the first PENDING
trial of the controller's list, else the first PAUSED one, by scanning the whole list, finished trials included, at
every step of Tune's loop: in a 10,000-trial study that scan was a quarter of the driver's time by its last
thousands of trials (py-spy, benchmarks/scale.py). These classes return the same trial from the first one that has
not ended: the trials before it are TERMINATED or ERROR, and within one run of a controller an ended trial never
starts again (a trial retried after a failure is set back to PENDING in the same call that set it ERROR, before the
scheduler is asked again; a resumed study builds a new controller and list). HyperBand and PBT choose by their own
rules and are left as Ray has them.
"""
from __future__ import annotations

from itertools import islice
from typing import Optional

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

_ENDED = (Trial.TERMINATED, Trial.ERROR)


class _FromFirstOpenTrial:
    """The choice of ``FIFOScheduler.choose_trial_to_run``, scanning from the first trial not ended."""

    _ended_prefix: Optional[tuple[list, int]] = None  # (the controller's trial list, how many lead it ended)

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        trials = tune_controller.get_trials()
        known, start = self._ended_prefix or (None, 0)
        if known is not trials or start > len(trials) or (start and trials[start - 1].status not in _ENDED):
            start = 0  # another controller's list, or one that changed in a way this does not follow: from the top
        while start < len(trials) and trials[start].status in _ENDED:
            start += 1
        self._ended_prefix = (trials, start)
        for trial in islice(trials, start, None):
            if trial.status == Trial.PENDING:
                return trial
        for trial in islice(trials, start, None):
            if trial.status == Trial.PAUSED:
                return trial
        return None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_ended_prefix", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class FifoScheduler(_FromFirstOpenTrial, FIFOScheduler):
    pass


class AshaScheduler(_FromFirstOpenTrial, AsyncHyperBandScheduler):
    pass


class MedianScheduler(_FromFirstOpenTrial, MedianStoppingRule):
    pass
