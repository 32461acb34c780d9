"""Sampling with runtime parameters: one compiled program serves every setting.

Each row of a batch carries its own settings as tensors (`SamplingTensors`):
temperature (0 means greedy), top-k (0 means off), top-p (1 means off),
min-p (0 means off), repetition penalty (1 means off) and a seed. The order
is HF transformers': repetition penalty, temperature, top-k, top-p over the
top-k survivors (renormalised), min-p against the most likely token.

Randomness is counter based: a row's draw for the token at slot `s` is a hash
of `(seed, s, token id)` (MurmurHash3's 32-bit finalizer on int32 with
wrap-around) turned into Gumbel noise, and the token is
`argmax(filtered logits + noise)` (the Gumbel-max trick: an exact draw from
the softmax). So a seeded row gives the same tokens whatever rows it shares
a batch with, on every backend, with no random state to carry.

Costs are paid only where used: an all-greedy batch is one `argmax`
(`ops.cond` skips the rest inside compiled loops); top-k / top-p sort only the
`CANDIDATES` largest logits unless a row asks for more (a larger top-k, or a
nucleus those candidates do not cover), which falls back to a full sort.
"""

from typing import Any
from typing import NamedTuple

import numpy as np
from keras import ops

# Logits a row's filters rule out.
EXCLUDED = -1e30
# Logits sorted for top-k / top-p before falling back to a full sort.
CANDIDATES = 256


class SamplingTensors(NamedTuple):
    """Per-row sampling settings, each `[rows]`.

    Attributes:
        temperature: float32; 0 for greedy.
        top_k: int32; 0 for no top-k.
        top_p: float32; 1 for no nucleus.
        min_p: float32; 0 for no min-p.
        repetition_penalty: float32; 1 for none.
        seed: int32.
    """

    temperature: Any
    top_k: Any
    top_p: Any
    min_p: Any
    repetition_penalty: Any
    seed: Any


def _logical_right_shift(x, bits):
    mask = (1 << (32 - bits)) - 1
    return ops.bitwise_and(ops.right_shift(x, bits), mask)


def _as_int32(value):
    """A uint32 constant as the int32 with the same bits."""
    return int(np.array(value, dtype=np.uint32).view(np.int32))


_MIX_1 = _as_int32(0x85EBCA6B)
_MIX_2 = _as_int32(0xC2B2AE35)
_GOLDEN = _as_int32(0x9E3779B9)


def mix(x):
    """MurmurHash3's 32-bit finalizer on int32 tensors (bijective, wraps around)."""
    x = ops.bitwise_xor(x, _logical_right_shift(x, 16))
    x = x * _MIX_1
    x = ops.bitwise_xor(x, _logical_right_shift(x, 13))
    x = x * _MIX_2
    return ops.bitwise_xor(x, _logical_right_shift(x, 16))


def uniform_bits(seed, counter, size):
    """int32 `[rows, size]`: 32 hashed bits of `(seed, counter, index)` per entry."""
    row_key = mix(ops.bitwise_xor(mix(ops.cast(seed, "int32")), ops.cast(counter, "int32")))
    index = ops.arange(size, dtype="int32") * _GOLDEN
    return mix(row_key[:, None] + index[None, :])


def gumbel_noise(seed, counter, size):
    """float32 `[rows, size]` Gumbel(0, 1) noise from `uniform_bits`."""
    bits = _logical_right_shift(uniform_bits(seed, counter, size), 8)  # 24 bits.
    uniform = (ops.cast(bits, "float32") + 0.5) * (1.0 / (1 << 24))  # In (0, 1).
    return -ops.log(-ops.log(uniform))


def apply_repetition_penalty(logits, seen, penalty):
    """HF's (CTRL) penalty: seen tokens' positive logits / penalty, negative ones x penalty."""
    penalty = penalty[:, None]
    penalized = ops.where(logits > 0, logits / penalty, logits * penalty)
    return ops.where(seen, penalized, logits)


def _thresholds(candidates, scaled, settings):
    """`(top_k threshold, top_p threshold, covered)` `[rows]` from sorted `candidates`.

    `candidates` `[rows, m]` are the `m` largest of `scaled` `[rows, V]`,
    descending. `covered` says whether they decide every row's nucleus.
    """
    m = candidates.shape[-1]
    uses_k = settings.top_k > 0
    uses_p = settings.top_p < 1.0
    k = ops.where(uses_k, ops.minimum(settings.top_k, m), m)  # (rows,)
    in_k = ops.arange(m, dtype="int32")[None, :] < k[:, None]  # (rows, m)
    kth = ops.take_along_axis(candidates, ops.maximum(k - 1, 0)[:, None], axis=-1)[:, 0]
    top_k_threshold = ops.where(uses_k, kth, EXCLUDED)
    # The nucleus is taken over the top-k survivors, renormalised (HF's order).
    full_normalizer = ops.logsumexp(scaled, axis=-1)
    kept = ops.where(in_k, candidates, EXCLUDED)
    normalizer = ops.where(uses_k, ops.logsumexp(kept, axis=-1), full_normalizer)
    probabilities = ops.where(in_k, ops.exp(candidates - normalizer[:, None]), 0.0)
    mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
    keep = ops.logical_and(mass_before < settings.top_p[:, None], in_k)
    nucleus = ops.min(ops.where(keep, candidates, -EXCLUDED), axis=-1)
    top_p_threshold = ops.where(uses_p, nucleus, EXCLUDED)
    decided = ops.logical_or(ops.sum(probabilities, axis=-1) >= settings.top_p, uses_k)
    covered = ops.all(ops.logical_or(ops.logical_not(uses_p), decided))
    covered = ops.logical_and(covered, ops.all(settings.top_k <= m))
    return top_k_threshold, top_p_threshold, covered


def _sort_thresholds(scaled, settings):
    """`(top_k, top_p)` thresholds, sorting only `CANDIDATES` logits when that decides them."""
    size = scaled.shape[-1]
    few = min(CANDIDATES, size)
    candidates = ops.top_k(scaled, few)[0]
    top_k_threshold, top_p_threshold, covered = _thresholds(candidates, scaled, settings)
    if few == size:
        return top_k_threshold, top_p_threshold

    def decided():
        return top_k_threshold, top_p_threshold

    def full_sort():
        everything = ops.top_k(scaled, size)[0]
        return _thresholds(everything, scaled, settings)[:2]

    return ops.cond(covered, decided, full_sort)


def filtered_logits(logits, settings):
    """Temperature-scaled logits with top-k / top-p / min-p exclusions `[rows, V]`."""
    greedy = settings.temperature <= 0
    temperature = ops.where(greedy, 1.0, settings.temperature)
    scaled = logits / temperature[:, None]
    threshold = ops.where(
        settings.min_p > 0,
        ops.max(scaled, axis=-1) + ops.log(ops.maximum(settings.min_p, 1e-30)),
        EXCLUDED,
    )
    filters = ops.logical_or(settings.top_k > 0, settings.top_p < 1.0)

    def sorted_thresholds():
        top_k_threshold, top_p_threshold = _sort_thresholds(scaled, settings)
        return ops.maximum(top_k_threshold, top_p_threshold)

    def no_thresholds():
        return ops.full_like(threshold, EXCLUDED)

    threshold = ops.maximum(threshold, ops.cond(ops.any(filters), sorted_thresholds, no_thresholds))
    return ops.where(scaled >= threshold[:, None], scaled, EXCLUDED)


def sample(logits, settings, seen, counter, custom_filter=None):
    """Next token `[rows]` int32 for each row of `logits` `[rows, V]`.

    Args:
        logits: float `[rows, V]`.
        settings: `SamplingTensors`.
        seen: bool `[rows, V]`, tokens already in each row's sequence.
        counter: int32 `[rows]`, the slot the sampled token will occupy
            (the random draw's counter).
        custom_filter: optional `logits -> logits` of a user's sampler
            subclass, applied instead of temperature / top-k / top-p / min-p.
    """
    logits = ops.cast(logits, "float32")

    def greedy_only():
        return ops.cast(ops.argmax(logits, axis=-1), "int32")

    def general():
        penalized = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
        if custom_filter is not None:
            filtered = ops.cast(custom_filter(penalized), "float32")
        else:
            filtered = filtered_logits(penalized, settings)
        noise = gumbel_noise(settings.seed, counter, logits.shape[-1])
        drawn = ops.cast(ops.argmax(filtered + noise, axis=-1), "int32")
        best = ops.cast(ops.argmax(penalized, axis=-1), "int32")
        return ops.where(settings.temperature <= 0, best, drawn)

    if custom_filter is not None:
        return general()
    plain = ops.logical_and(settings.temperature <= 0, settings.repetition_penalty == 1.0)
    return ops.cond(ops.all(plain), greedy_only, general)
