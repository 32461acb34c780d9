"""Goodness-of-fit statistics for tests of random behaviour (samplers), NumPy only."""

import math

import numpy as np


def chi_square_p_value(counts, expected_probabilities):
    """P-value of Pearson's chi-square test that `counts` follow the probabilities.

    Categories with zero expected probability are left out of the statistic
    (check separately that they were never drawn). The chi-square survival
    function uses the Wilson-Hilferty cube-root normal approximation, within
    a few percent of the exact value for the p-values tests use (1e-6..1e-2)
    at 2 or more degrees of freedom.

    Args:
        counts: int array `[categories]`, how often each category was drawn.
        expected_probabilities: float array `[categories]`, summing to 1.

    Returns:
        float, the probability of a statistic at least this large if the
        counts come from `expected_probabilities`.
    """
    counts = np.asarray(counts, dtype=np.float64)
    probabilities = np.asarray(expected_probabilities, dtype=np.float64)
    if counts.shape != probabilities.shape:
        raise ValueError(
            f"`counts` {counts.shape} and `expected_probabilities` {probabilities.shape} "
            "must have the same shape."
        )
    support = probabilities > 0
    total = counts.sum()
    expected = total * probabilities[support]
    statistic = float(np.sum((counts[support] - expected) ** 2 / expected))
    degrees = int(support.sum()) - 1
    if degrees < 1:
        return 1.0  # One possible outcome: nothing to test.
    scale = 2.0 / (9.0 * degrees)
    z = ((statistic / degrees) ** (1.0 / 3.0) - (1.0 - scale)) / math.sqrt(scale)
    return 0.5 * math.erfc(z / math.sqrt(2.0))
