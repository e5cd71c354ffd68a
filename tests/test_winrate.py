import dataclasses
import math

import numpy as np
import pytest

from seal_core.evaluation.winrate import WinRateSummary, summarize


def test_hand_made_preferences_exact():
    s = summarize([1, 0, 0.5, 1])
    assert s.win_rate == pytest.approx(62.5)
    assert (s.n_wins, s.n_losses, s.n_ties, s.n_total) == (2, 1, 1, 4)
    assert s.discrete_win_rate == pytest.approx(62.5)
    # mean 0.625; squared deviations .140625 + .390625 + .015625 + .140625 = .6875; var = .6875 / 3
    assert s.standard_error == pytest.approx(100 * math.sqrt(0.6875 / 3) / 2)


def test_soft_preferences_and_discrete_rate_differ():
    s = summarize([0.9, 0.6, 0.2, 0.5, 0.5])
    assert s.win_rate == pytest.approx(100 * 2.7 / 5)
    assert (s.n_wins, s.n_losses, s.n_ties) == (2, 1, 2)
    assert s.discrete_win_rate == pytest.approx(100 * (2 + 1) / 5)
    assert s.standard_error == pytest.approx(100 * np.std([0.9, 0.6, 0.2, 0.5, 0.5], ddof=1) / math.sqrt(5))


def test_fields_are_exactly_the_documented_names_and_frozen():
    names = [f.name for f in dataclasses.fields(WinRateSummary)]
    assert names == [
        "win_rate", "standard_error", "n_wins", "n_losses", "n_ties", "discrete_win_rate", "n_total", "ci_low", "ci_high"
    ]
    s = summarize([1, 0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.win_rate = 3.0  # type: ignore[misc]


def test_tie_tolerance_absorbs_rounding_of_both_order_average():
    p = (0.1 + (1 - 0.1)) / 2  # a tie computed the way judge_both_orders does
    s = summarize([p, 0.5 + 1e-12, 0.5 - 1e-12])
    assert (s.n_wins, s.n_losses, s.n_ties) == (0, 0, 3)


def test_single_preference_has_undefined_standard_error():
    s = summarize([1.0])
    assert math.isnan(s.standard_error)
    assert s.to_dict()["standard_error"] is None
    assert (s.ci_low, s.ci_high) == (100.0, 100.0)
    assert WinRateSummary.from_dict(s.to_dict()).win_rate == 100.0


@pytest.mark.parametrize("bad", [[], [0.2, 1.5], [-0.1], [float("nan")]])
def test_bad_input_raises(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=200)
    a = summarize(p, seed=0)
    b = summarize(p, seed=0)
    c = summarize(p, seed=1, n_bootstrap=500)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.win_rate < a.ci_high
    # The percentile interval is close to the normal one (mean ± 1.96 SE) for n = 200.
    assert a.ci_high - a.ci_low == pytest.approx(2 * 1.96 * a.standard_error, rel=0.15)


def test_bootstrap_matches_a_direct_computation():
    p = np.array([1.0, 0.0, 0.5, 1.0, 0.25])
    s = summarize(p, seed=7, n_bootstrap=300)
    rng = np.random.default_rng(7)
    means = p[rng.integers(0, 5, size=(300, 5))].mean(axis=1)
    assert s.ci_low == pytest.approx(100 * np.quantile(means, 0.025))
    assert s.ci_high == pytest.approx(100 * np.quantile(means, 0.975))
