"""The held-out accuracy's confidence interval (Wilson score, 95 %)."""

import pytest

from tinyzero.analysis.evaluate import wilson_interval


@pytest.mark.parametrize(
    "successes, n, low, high",
    [(64, 128, 0.4147, 0.5853), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (83, 128, 0.5625, 0.7257)],
)
def test_wilson_interval_matches_published_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_interval_narrows_with_more_problems_and_holds_the_rate():
    widths = []
    for n in (16, 128, 1024):
        low, high = wilson_interval(0.6 * n, n)
        assert low < 0.6 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(0, 0) == (0.0, 1.0)
