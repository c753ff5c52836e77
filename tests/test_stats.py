"""Statistics over replicates (orchestrator/results/stats.py) on hand-made tables whose answers are known."""
import math

import pandas as pd
import pytest

from orchestrator.results import stats


def test_t_interval_of_three_seeds():
    e = stats.estimate([1000, 1200, 1400])
    # mean 1200, s = 200, t(0.975, 2) = 4.303: half-width 4.303 * 200 / sqrt(3)
    assert e.mean == 1200 and e.std == pytest.approx(200) and e.n == 3
    assert e.half == pytest.approx(4.303 * 200 / math.sqrt(3))
    assert e.text() == "1200 ± 497"


def test_t_quantiles():
    assert stats.t975(1) == 12.706 and stats.t975(2) == 4.303 and stats.t975(30) == 2.042
    assert 2.021 < stats.t975(35) < 2.042 and stats.t975(10_000) == pytest.approx(1.96, abs=0.01)


def test_one_value_has_no_interval_and_nans_are_dropped():
    e = stats.estimate([0.5, float("nan")])
    assert e.n == 1 and e.mean == 0.5 and math.isnan(e.half) and e.text() == "0.5"


def test_never_solved_is_censored_not_dropped():
    # two seeds solved at 1000 and 1400, one never solved within its 3000 iterations
    e = stats.censored_estimate([1000, 1400, None], [3000, 3000, 3000])
    assert e.n == 3 and e.solved == 2 and e.mean == pytest.approx(1800)  # a lower bound: 3000 counted for the third
    assert e.text() == "≥ 1800 (2/3 solved)"
    none = stats.censored_estimate([None, None], [500, 500])
    assert none.text() == "> 500 (0/2 solved)"
    all_solved = stats.censored_estimate([100, 200, 300], [3000] * 3)
    assert all_solved.text() == "200 ± 248 (3/3 solved)"


def test_group_estimates_and_ranking_put_solved_fraction_first():
    t = pd.DataFrame({
        "cell": ["rnn"] * 3 + ["gru"] * 3 + ["lstm"] * 3,
        "iters_to_solve": [300, 350, None, 900, 1000, 1100, 500, 500, 500],
        "iters": [3000] * 9,
    })
    g = stats.group_estimates(t, ["cell"], "iters_to_solve")
    by = {row.cell: row.estimate for row in g.itertuples()}
    assert by["rnn"].solved == 2 and by["rnn"].mean == pytest.approx(1216.67, abs=0.01)
    ranked = stats.rank(g, "iters_to_solve", lower_is_better=True)
    # lstm and gru solved every seed; rnn (lower mean bound, but a seed never solved) comes last
    assert list(ranked["cell"]) == ["lstm", "gru", "rnn"]


def test_paired_differences_match_seeds():
    a = pd.DataFrame({"cell": ["rnn"] * 3 + ["gru"] * 2, "seed": [0, 1, 2, 0, 1], "v": [10, 20, 30, 5, 5]})
    b = pd.DataFrame({"cell": ["rnn"] * 3 + ["gru"] * 2, "seed": [0, 1, 3, 0, 1], "v": [12, 23, 99, 6, 8]})
    d = stats.paired_differences(a, b, ["cell"], "v").set_index("cell")
    # rnn pairs seeds 0 and 1 only: differences 2 and 3
    assert d.loc["rnn", "pairs"] == 2 and d.loc["rnn", "seeds"] == "0,1"
    assert d.loc["rnn", "diff"].mean == 2.5
    assert d.loc["rnn", "diff"].half == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))
    assert d.loc["gru", "diff"].mean == 2.0


def test_interval_text_rounds_mean_and_half_width_alike():
    assert stats.plus_minus(241.6667, 35.86) == "242 ± 36"
    assert stats.plus_minus(0.95312, 0.01234) == "0.953 ± 0.012"
    assert stats.plus_minus(0.5, 0.25) == "0.50 ± 0.25"
    assert stats.estimate([0.9, 0.95, 1.0]).text() == "0.95 ± 0.12"


def test_equal_means_are_ordered_by_the_tiebreak():
    groups = pd.DataFrame({"k": ["a", "b", "c"], "mean": [1.0, 1.0, 0.9], "n": [3, 3, 3], "solved": [None] * 3})
    ranked = stats.rank(groups, "best_exact_acc", lower_is_better=False, tiebreak=pd.Series([900.0, 250.0, 10.0]))
    assert ranked["k"].tolist() == ["b", "a", "c"]
    assert stats.rank(groups, "best_exact_acc", lower_is_better=False)["k"].tolist() == ["a", "b", "c"]
