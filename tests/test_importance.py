"""Hyperparameter importance (orchestrator/results/importance.py) on synthetic tables whose answer is known."""
import numpy as np
import pandas as pd

from orchestrator.results.importance import eta_squared, importance


def _synthetic(n=240, seed=1):
    rng = np.random.default_rng(seed)
    t = pd.DataFrame({
        "lr": 10 ** rng.uniform(-4, -1, n),                 # drives the value strongly (log-linear)
        "cell": rng.choice(["rnn", "lstm", "gru"], n),        # a medium effect
        "layers": rng.choice([1, 2, 3], n),                   # no effect at all
    })
    effect = {"rnn": 0.0, "lstm": 0.75, "gru": 1.5}
    # variances: lr's term 0.75, cell's 0.375, noise 0.09 -- so about 0.6 and 0.3 of the total
    t["best_exact_acc"] = 1.0 * np.log10(t["lr"]) + t["cell"].map(effect) + rng.normal(0, 0.3, n)
    return t


def test_known_order_and_intervals():
    result, note = importance(_synthetic(), ["lr", "cell", "layers"], "best_exact_acc", log_keys=("lr",))
    assert note is None
    by = {r.key: r for r in result}
    assert [r.key for r in result] == ["lr", "cell", "layers"]
    assert 0.45 < by["lr"].eta2 < 0.75 and by["lr"].levels == 5  # binned on a log scale
    assert 0.15 < by["cell"].eta2 < 0.45
    assert by["layers"].eta2 < 0.03 and by["layers"].low < 0.01  # no effect: its interval reaches ~0
    assert all(r.low <= r.eta2 <= r.high for r in result)
    assert by["cell"].low > by["layers"].high  # the medium effect is told apart from none


def test_eta_squared_extremes():
    y = np.array([1.0, 1.0, 5.0, 5.0])
    assert eta_squared(y, np.array([0, 0, 1, 1])) == 1.0  # the key explains everything
    assert eta_squared(y, np.array([0, 1, 0, 1])) == 0.0  # nothing
    assert eta_squared(np.ones(4), np.array([0, 1, 0, 1])) == 0.0  # no variance at all


def test_too_few_trials_says_so_and_stopped_trials_count():
    t = _synthetic(n=8)
    result, note = importance(t, ["lr", "cell"], "best_exact_acc")
    assert result == [] and "not meaningful with 8 trials" in note
    # iters_to_solve: a trial that never solved (NaN) counts at its budget instead of being dropped
    t = pd.DataFrame({"cell": ["rnn"] * 6 + ["gru"] * 6, "iters_to_solve": [100.0] * 6 + [np.nan] * 6,
                      "iters": [3000] * 12})
    result, note = importance(t, ["cell"], "iters_to_solve")
    assert note is None and result[0].eta2 == 1.0  # dropping the unsolved would leave one level: no signal
