"""Samplers draw from the distribution a NumPy formula gives, row by row.

Each test samples many rows of fixed logits in one call, then checks the counts
with a chi-square goodness-of-fit test against the NumPy distribution, checks
that excluded tokens never appear, and checks that the same counts reject a
plausible wrong distribution (so the test has the power to fail).
"""

import numpy as np
import pytest
from keras import ops

from keras_gemma import samplers
from keras_gemma.testing.statistics import chi_square_p_value

# Two rows of distinct logits (no ties), the second a permutation of the first,
# alternated through the batch: a filter must act per row.
LOGITS = np.array(
    [
        [2.0, 1.5, 1.0, 0.7, 0.3, 0.0, -0.4, -0.9, -1.5, -2.2],
        [-0.9, 0.3, -2.2, 1.0, 2.0, -0.4, 0.7, -1.5, 0.0, 1.5],
    ],
    dtype=np.float32,
)
ROWS = 12_000  # Samples per row pattern.
# Tokens already in each row's sequence, for the repetition penalty.
SEEN = np.zeros_like(LOGITS, dtype=bool)
SEEN[0, [0, 2, 8]] = True
SEEN[1, [4, 1, 7]] = True
ACCEPT = 1e-4  # A correct sampler fails with about this probability per check.
REJECT = 1e-6


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def penalized(logits, seen, penalty):
    """CTRL's repetition penalty as HF applies it: seen logits / penalty if > 0, else * penalty."""
    changed = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, changed, logits)


def top_k_probabilities(logits, k):
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return softmax(np.where(logits >= kth, logits, -np.inf))


def top_p_probabilities(logits, p):
    """Smallest set of most likely tokens whose mass reaches p (HF's nucleus)."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, axis=-1)
    sorted_probabilities = np.take_along_axis(probabilities, order, axis=-1)
    mass_before = np.cumsum(sorted_probabilities, axis=-1) - sorted_probabilities
    keep_sorted = mass_before < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    return softmax(np.where(keep, logits, -np.inf))


def min_p_probabilities(logits, p):
    probabilities = softmax(logits)
    keep = probabilities >= p * probabilities.max(axis=-1, keepdims=True)
    return softmax(np.where(keep, logits, -np.inf))


def draw(sampler, seen=None, seed=7):
    """Counts `[2, vocabulary]` of `ROWS` draws from each logits row."""
    batch = np.tile(LOGITS, (ROWS, 1))
    seen_batch = None if seen is None else ops.convert_to_tensor(np.tile(seen, (ROWS, 1)))
    tokens = ops.convert_to_numpy(sampler(ops.convert_to_tensor(batch), seed=seed, seen=seen_batch))
    assert tokens.shape == (2 * ROWS,)
    assert tokens.dtype == np.int32
    vocabulary = LOGITS.shape[-1]
    return np.stack([np.bincount(tokens[row::2], minlength=vocabulary) for row in range(2)])


def assert_follows(counts, expected, wrong):
    for row in range(2):
        excluded = expected[row] == 0
        assert counts[row][excluded].sum() == 0, (
            f"row {row}: drew excluded tokens {np.flatnonzero(excluded & (counts[row] > 0))}"
        )
        p_value = chi_square_p_value(counts[row], expected[row])
        assert p_value > ACCEPT, f"row {row}: counts {counts[row]} vs {expected[row]}: p={p_value}"
    # The same counts tell the wrong distribution apart (on either row).
    assert min(chi_square_p_value(counts[row], wrong[row]) for row in range(2)) < REJECT


def test_greedy_is_the_argmax_of_the_penalized_logits():
    batch = ops.convert_to_tensor(LOGITS)
    tokens = ops.convert_to_numpy(samplers.GreedySampler()(batch))
    np.testing.assert_array_equal(tokens, LOGITS.argmax(axis=-1))
    # A penalty of 10 moves both rows off their top token (seen, positive logit 2.0 -> 0.2).
    sampler = samplers.GreedySampler(repetition_penalty=10.0)
    tokens = ops.convert_to_numpy(sampler(batch, seen=ops.convert_to_tensor(SEEN)))
    np.testing.assert_array_equal(tokens, penalized(LOGITS, SEEN, 10.0).argmax(axis=-1))
    assert list(tokens) == [1, 9]


def test_greedy_ties_go_to_the_lowest_token_id():
    logits = ops.convert_to_tensor(np.array([[0.5, 3.0, 3.0, 1.0]], dtype=np.float32))
    assert ops.convert_to_numpy(samplers.GreedySampler()(logits)).tolist() == [1]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_random_sampler_draws_softmax_of_logits_over_temperature(temperature):
    counts = draw(samplers.RandomSampler(temperature=temperature))
    wrong_temperature = 1.0 if temperature != 1.0 else 2.0
    assert_follows(counts, softmax(LOGITS / temperature), wrong=softmax(LOGITS / wrong_temperature))


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (3, 1.0), (5, 0.7)])
def test_top_k_draws_among_the_k_largest_renormalised(k, temperature):
    counts = draw(samplers.TopKSampler(k=k, temperature=temperature))
    expected = top_k_probabilities(LOGITS / temperature, k)
    if k == 1:
        np.testing.assert_array_equal(counts.argmax(axis=-1), LOGITS.argmax(axis=-1))
        assert (counts.max(axis=-1) == ROWS).all()
        return
    assert_follows(counts, expected, wrong=top_k_probabilities(LOGITS / temperature, k + 1))


@pytest.mark.parametrize("p, temperature", [(0.5, 1.0), (0.8, 1.0), (0.9, 1.6)])
def test_top_p_draws_from_the_nucleus_renormalised(p, temperature):
    counts = draw(samplers.TopPSampler(p=p, temperature=temperature))
    expected = top_p_probabilities(LOGITS / temperature, p)
    # Wrong: the nucleus with one more token (a boundary off by one), or the whole softmax.
    kept = int((expected[0] > 0).sum())
    wrong = top_k_probabilities(LOGITS / temperature, kept + 1)
    assert_follows(counts, expected, wrong=wrong)


def test_top_p_with_k_considers_only_the_k_most_likely_first():
    counts = draw(samplers.TopPSampler(p=0.95, k=3))
    top_three = np.where(top_k_probabilities(LOGITS, 3) > 0, LOGITS, -np.inf)
    expected = top_p_probabilities(top_three, 0.95)
    assert_follows(counts, expected, wrong=top_p_probabilities(LOGITS, 0.95))


@pytest.mark.parametrize("p, temperature", [(0.1, 1.0), (0.3, 1.0), (0.1, 0.6)])
def test_min_p_keeps_tokens_above_p_times_the_top_probability(p, temperature):
    counts = draw(samplers.MinPSampler(p=p, temperature=temperature))
    expected = min_p_probabilities(LOGITS / temperature, p)
    assert_follows(counts, expected, wrong=softmax(LOGITS / temperature))


@pytest.mark.parametrize("penalty", [1.3, 2.0])
def test_repetition_penalty_then_temperature(penalty):
    sampler = samplers.RandomSampler(temperature=0.8, repetition_penalty=penalty)
    counts = draw(sampler, seen=SEEN)
    expected = softmax(penalized(LOGITS, SEEN, penalty) / 0.8)
    # Wrong: the penalty ignored.
    assert_follows(counts, expected, wrong=softmax(LOGITS / 0.8))


def test_repetition_penalty_with_top_k_filters_the_penalized_logits():
    sampler = samplers.TopKSampler(k=3, repetition_penalty=2.0)
    counts = draw(sampler, seen=SEEN)
    expected = top_k_probabilities(penalized(LOGITS, SEEN, 2.0), 3)
    assert_follows(counts, expected, wrong=top_k_probabilities(LOGITS, 3))


def test_same_seed_same_tokens_other_seed_other_tokens():
    sampler = samplers.RandomSampler(temperature=1.0)
    batch = ops.convert_to_tensor(np.tile(LOGITS, (64, 1)))
    first = ops.convert_to_numpy(sampler(batch, seed=3))
    np.testing.assert_array_equal(first, ops.convert_to_numpy(sampler(batch, seed=3)))
    assert (first != ops.convert_to_numpy(sampler(batch, seed=4))).any()


def test_chi_square_helper_against_known_values():
    # Exact chi-square survival values (scipy.stats.chi2.sf) for the statistic the
    # counts give: 9 categories uniform, statistic 20.0 at 8 degrees -> 0.01034.
    counts = np.array([100] * 9)
    assert chi_square_p_value(counts, np.full(9, 1 / 9)) == pytest.approx(1.0, abs=0.02)
    expected = np.full(9, 1 / 9)
    # Move counts so that sum((o - e)^2 / e) = 20 with e = 100: 2 cells off by +-sqrt(1000).
    offset = np.sqrt(1000.0)
    skewed = np.array([100 + offset, 100 - offset] + [100] * 7)
    assert chi_square_p_value(skewed, expected) == pytest.approx(0.01034, rel=0.05)
    with pytest.raises(ValueError, match="must have the same shape"):
        chi_square_p_value([1, 2], [0.5, 0.25, 0.25])
