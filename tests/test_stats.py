"""The statistics the report relies on, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest

from tinyslm.core.stats import holm_adjust, mcnemar_exact, mean, paired_counts, sample_sd, wilson_interval


def test_mcnemar_known_values():
    assert mcnemar_exact(0, 6) == pytest.approx(0.03125)  # 2 * 0.5**6
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # 2 * (1 + 10) / 2**10 ~= 0.0215
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)  # symmetric
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 5 one-sided pairs are not enough at 5%
    assert mcnemar_exact(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pairs: no evidence


def test_mcnemar_large_counts_stay_finite():
    p = mcnemar_exact(400, 600)
    assert 0 < p < 1e-9
    assert math.isfinite(p)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_counts_join_by_id():
    a = {"1": True, "2": True, "3": False, "4": False, "only-a": True}
    b = {"1": True, "2": False, "3": True, "4": False, "only-b": False}
    assert paired_counts(a, b) == (4, 1, 1)


def test_mean_and_sd():
    assert mean([1.0, 2.0, 3.0]) == 2.0
    assert sample_sd([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert sample_sd([5.0]) is None
    with pytest.raises(ValueError):
        mean([])


def test_wilson_interval_contains_estimate():
    lo, hi = wilson_interval(0, 3)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.5615, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi


def test_holm_adjust_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06; input order kept
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]  # 0.5*2 = 1.0 caps, and 0.6 inherits the running max
    assert holm_adjust([0.02, 0.02]) == pytest.approx(
        [0.04, 0.04]
    )  # ties: both get the larger factor's value
    assert holm_adjust([0.03]) == [0.03]  # a family of one is not adjusted
    assert holm_adjust([]) == []
    p = [0.001, 0.2, 0.049, 0.7, 0.01]
    adj = holm_adjust(p)
    assert all(a >= x for a, x in zip(adj, p, strict=True))  # never below the raw p
    order = sorted(range(len(p)), key=p.__getitem__)
    assert [adj[i] for i in order] == sorted(adj)  # monotone in the raw p


def test_holm_adjust_rejects_non_probabilities():
    for bad in ([1.5], [-0.1], [math.nan]):
        with pytest.raises(ValueError, match="p-values"):
            holm_adjust(bad)
