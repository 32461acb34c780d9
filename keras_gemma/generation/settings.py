"""`generate`'s sampling keywords (HF transformers' names) and seeds, checked.

`temperature=`, `top_k=`, `top_p=`, `min_p=` and `repetition_penalty=`
override the sampler's own settings for one call. Giving any of
`temperature > 0`, `top_k`, `top_p` or `min_p` to a greedy sampler samples
(at temperature 1 unless given), as a user who passes `top_p=0.9` means;
`temperature=0` is greedy. `top_k=0`, `top_p=1` and `min_p=0` switch a
filter off.
"""

import numbers

import numpy as np

from keras_gemma.samplers.sampler import BeamSampler
from keras_gemma.samplers.sampler import check_seed


def _number(name, value, low, high, low_open, high_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise ValueError(
            f"`{name}` must be in {left}{low}, {high}{right}. Received: {name}={value!r}"
        )
    return float(value)


def check_sampling(temperature=None, top_k=None, top_p=None, min_p=None, repetition_penalty=None):
    """The given keywords as a dict of floats / ints; a clear error for a bad value."""
    given = {}
    if temperature is not None:
        given["temperature"] = _number("temperature", temperature, 0, float("inf"), False, True)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
            raise ValueError(f"`top_k` must be an integer >= 0 (0: off). Received: top_k={top_k!r}")
        given["top_k"] = int(top_k)
    if top_p is not None:
        given["top_p"] = _number("top_p", top_p, 0, 1, True)
    if min_p is not None:
        given["min_p"] = _number("min_p", min_p, 0, 1, False)
    if repetition_penalty is not None:
        given["repetition_penalty"] = _number(
            "repetition_penalty", repetition_penalty, 0, float("inf"), True, True
        )
    return given


def resolve_settings(sampler, **keywords):
    """The runtime settings dict of `sampler` with `generate`'s keywords applied."""
    given = check_sampling(**keywords)
    if isinstance(sampler, BeamSampler):
        if given:
            raise ValueError(
                f"Beam search is deterministic; it takes no sampling keywords. Received: "
                f"{sorted(given)}. Drop them, or pass another sampler."
            )
        return None
    if sampler.custom_filter is not None and set(given) - {"repetition_penalty"}:
        raise ValueError(
            f"{type(sampler).__name__} filters logits itself; only `repetition_penalty=` "
            f"can be given with it. Received: {sorted(given)}."
        )
    settings = sampler.settings()
    if sampler.custom_filter is not None:
        settings["temperature"] = 1.0  # Its own filter scales; rows must sample.
    samples = any(name in given for name in ("top_k", "top_p", "min_p"))
    if settings["temperature"] == 0 and samples and "temperature" not in given:
        settings["temperature"] = 1.0
    settings.update(given)
    return settings


def resolve_seed(seed, sampler=None):
    """`seed`, else the sampler's own seed, else a fresh random one (an int)."""
    seed = check_seed(seed)
    if seed is None and sampler is not None:
        seed = getattr(sampler, "seed", None)
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    return seed
