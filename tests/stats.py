"""Bounds for statistical tests: tolerances from the distribution, never ad hoc.

Each helper asserts that an observed statistic lies within ``sigmas`` standard deviations of its
expectation. With sigmas=6 a correct implementation fails with probability below 2e-9 per check, and
the seeds are fixed, so these tests never flake.
"""

from __future__ import annotations

import math


def assert_fraction_close(
    observed: int | float, n: int, p: float, sigmas: float = 6.0, what: str = "fraction"
) -> None:
    """``observed`` successes out of ``n`` Bernoulli(p) trials (or an observed fraction if float < 1
    and n > 1): |k - n p| <= sigmas * sqrt(n p (1 - p)) (+0.5 continuity)."""
    k = observed * n if isinstance(observed, float) and observed <= 1.0 and n > 1 else observed
    sd = math.sqrt(n * p * (1.0 - p))
    assert abs(k - n * p) <= sigmas * sd + 0.5, (
        f"{what}: observed {k}/{n} = {k / n:.6f}, expected {p:.6f} ± {sigmas * sd / n:.6f} ({sigmas}σ)"
    )


def assert_mean_close(
    sample_mean: float, mean: float, std: float, n: int, sigmas: float = 6.0, what: str = "mean"
) -> None:
    """A sample mean of n i.i.d. draws with the given mean and standard deviation."""
    tol = sigmas * std / math.sqrt(n)
    assert abs(sample_mean - mean) <= tol, (
        f"{what}: {sample_mean:.6f} vs {mean:.6f} ± {tol:.6f} ({sigmas}σ)"
    )


def assert_variance_close(
    sample_var: float,
    var: float,
    n: int,
    kurtosis: float = 3.0,
    sigmas: float = 6.0,
    what: str = "variance",
) -> None:
    """A sample variance of n i.i.d. draws: sd ≈ var * sqrt((kurtosis - 1) / n) for large n."""
    tol = sigmas * var * math.sqrt((kurtosis - 1.0) / n)
    assert abs(sample_var - var) <= tol, (
        f"{what}: {sample_var:.6f} vs {var:.6f} ± {tol:.6f} ({sigmas}σ)"
    )
