"""orchestrator/tune/schedulers.py: the next trial to start, chosen as Ray's FIFOScheduler chooses it."""
import random

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler

from orchestrator.tune.schedulers import AshaScheduler, FifoScheduler, MedianScheduler

ENDED = (Trial.TERMINATED, Trial.ERROR)


class _Trial:
    def __init__(self, k):
        self.k, self.status = k, Trial.PENDING


class _Controller:
    """What choose_trial_to_run reads of Tune's controller: its one list of trials."""

    def __init__(self):
        self.trials = []

    def get_trials(self):
        return self.trials


def test_the_choice_is_rays_in_every_run_of_a_random_study():
    """Trials are added, started, paused, ended and retried (Tune moves a retried trial to the end, PENDING) in
    random order; after each change the next trial chosen is the one Ray's FIFOScheduler chooses."""
    ray_choice = FIFOScheduler()
    for seed in range(30):
        rng = random.Random(seed)
        controller = _Controller()
        ours = [FifoScheduler(), AshaScheduler(time_attr="iter"), MedianScheduler(time_attr="iter")]
        for step in range(400):
            trials = controller.trials
            live = [t for t in trials if t.status not in ENDED]
            move = rng.random()
            if move < 0.25 or not live:
                trials.append(_Trial(len(trials)))
            elif move < 0.4:
                t = rng.choice(live)
                t.status = Trial.PENDING  # retried after a failure: Tune puts it last
                trials.remove(t)
                trials.append(t)
            else:
                rng.choice(live).status = rng.choice([Trial.RUNNING, Trial.PAUSED, Trial.TERMINATED, Trial.ERROR])
            want = ray_choice.choose_trial_to_run(controller)
            for scheduler in ours:
                assert scheduler.choose_trial_to_run(controller) is want, (seed, step, type(scheduler).__name__)
    assert ours[0]._ended_prefix[1] > 0  # it did skip ended trials


def test_a_new_controller_is_scanned_from_its_first_trial():
    """The skipped prefix belongs to one controller's list: a new list (a resumed study) is read from the top,
    and the prefix is not pickled with the scheduler (Tune keeps it in tuner.pkl)."""
    import pickle

    scheduler = FifoScheduler()
    first = _Controller()
    first.trials = [_Trial(k) for k in range(5)]
    for t in first.trials[:4]:
        t.status = Trial.TERMINATED
    assert scheduler.choose_trial_to_run(first) is first.trials[4]
    second = _Controller()
    second.trials = [_Trial(k) for k in range(5)]
    assert scheduler.choose_trial_to_run(second) is second.trials[0]
    assert "_ended_prefix" not in pickle.loads(pickle.dumps(scheduler)).__dict__
