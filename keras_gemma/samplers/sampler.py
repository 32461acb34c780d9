"""Samplers: pick the next token from logits, inside compiled decoding loops.

A sampler is a set of settings. Generation turns it into per-row tensors
(`sampling_settings()`, see `sampling.py`), so one compiled program serves
every sampler; only a user's subclass with its own `filter_logits` is
compiled into the program.
"""

import numbers

import numpy as np
from keras import ops

from keras_gemma.samplers import sampling

# Logit given to tokens a sampler rules out.
EXCLUDED_LOGIT = -1e9


class Sampler:
    """Base class: `sampler(logits, seed) -> next token ids`.

    Subclasses implement `filter_logits` (temperature, top-k, ...); sampling
    is then categorical over the filtered logits. The repetition penalty
    (CTRL paper, as HF applies it) divides positive logits and multiplies
    negative logits of every token already in the sequence.

    Args:
        temperature: float > 0. Logits are divided by it.
        repetition_penalty: float > 0. 1.0 disables it.
        seed: optional int. The seed `generate` uses when it is given none,
            so a sampler built with a seed samples reproducibly (keras-hub's
            `TopKSampler(k=5, seed=2)`).

    Call arguments:
        logits: float32 `[batch, vocabulary]`.
        seed: optional int; row `i` draws with counter `i` (see `sampling.py`).
        seen: optional bool `[batch, vocabulary]`, tokens already in the sequence.

    Returns:
        int32 `[batch]`.
    """

    is_greedy = False

    def __init__(self, temperature=1.0, repetition_penalty=1.0, seed=None):
        _check_positive("temperature", temperature)
        _check_positive("repetition_penalty", repetition_penalty)
        self.temperature = float(temperature)
        self.repetition_penalty = float(repetition_penalty)
        self.seed = check_seed(seed)

    @property
    def uses_seen_tokens(self):
        return self.repetition_penalty != 1.0

    def apply_repetition_penalty(self, logits, seen):
        if not self.uses_seen_tokens or seen is None:
            return logits
        penalized = ops.where(
            logits > 0,
            logits / self.repetition_penalty,
            logits * self.repetition_penalty,
        )
        return ops.where(seen, penalized, logits)

    def filter_logits(self, logits):
        return logits / self.temperature

    def settings(self):
        """The runtime settings `generate` passes for this sampler (see `sampling.py`)."""
        return {
            "temperature": 0.0 if self.is_greedy else self.temperature,
            "top_k": 0,
            "top_p": 1.0,
            "min_p": 0.0,
            "repetition_penalty": self.repetition_penalty,
        }

    @property
    def custom_filter(self):
        """`filter_logits` of a user's subclass that overrides it, else None."""
        if type(self).filter_logits in _BUILT_IN_FILTERS:
            return None
        return self.filter_logits

    def __call__(self, logits, seed=None, seen=None):
        logits = ops.cast(logits, "float32")
        rows, vocabulary = logits.shape
        seed = self.seed if seed is None else check_seed(seed)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        tensors = settings_tensors([self.settings()] * rows, [seed] * rows)
        if seen is None:
            seen = ops.zeros((rows, vocabulary), dtype="bool")
        counter = ops.arange(rows, dtype="int32")
        return sampling.sample(logits, tensors, seen, counter, self.custom_filter)

    def get_config(self):
        config = {
            "temperature": self.temperature,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.seed is not None:
            config["seed"] = self.seed
        return config

    def cache_key(self):
        """What a compiled program must be specialised on: only a custom filter."""
        if self.custom_filter is None:
            return ("runtime",)
        return (type(self).__name__,) + tuple(sorted(self.get_config().items()))

    def __repr__(self):
        arguments = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


def check_seed(seed):
    """`seed` as an int (NumPy integers too), or None; a clear error otherwise."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"`seed` must be an int or None. Received: seed={seed!r} ({type(seed).__name__})"
        )
    return int(seed) % (2**31)


def settings_tensors(settings, seeds):
    """`SamplingTensors` of one settings dict and one int seed per row."""

    def column(name, dtype):
        return ops.convert_to_tensor(np.array([s[name] for s in settings], dtype=dtype))

    return sampling.SamplingTensors(
        temperature=column("temperature", "float32"),
        top_k=column("top_k", "int32"),
        top_p=column("top_p", "float32"),
        min_p=column("min_p", "float32"),
        repetition_penalty=column("repetition_penalty", "float32"),
        seed=ops.convert_to_tensor(np.array(seeds, dtype="int32")),
    )


def _check_positive(name, value):
    # `numbers.Real` / `numbers.Integral` take NumPy scalars too (np.float32(0.7)).
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")


class GreedySampler(Sampler):
    """Always the most likely token (temperature does not matter)."""

    is_greedy = True

    def __init__(self, repetition_penalty=1.0, seed=None):
        super().__init__(temperature=1.0, repetition_penalty=repetition_penalty, seed=seed)

    def get_config(self):
        return {"repetition_penalty": self.repetition_penalty}


class RandomSampler(Sampler):
    """Samples from the whole distribution, sharpened or flattened by temperature."""


class TopKSampler(Sampler):
    """Samples among the `k` most likely tokens.

    Args:
        k: int >= 1.
        temperature: float > 0.
        repetition_penalty: float > 0.
    """

    def __init__(self, k=5, temperature=1.0, repetition_penalty=1.0, seed=None):
        super().__init__(temperature, repetition_penalty, seed)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"`k` must be an integer >= 1. Received: k={k!r}")
        self.k = int(k)

    def filter_logits(self, logits):
        logits = logits / self.temperature
        k = min(self.k, logits.shape[-1])
        kth_largest = ops.top_k(logits, k)[0][:, -1:]  # (b, 1)
        return ops.where(logits >= kth_largest, logits, EXCLUDED_LOGIT)

    def settings(self):
        return dict(super().settings(), top_k=self.k)

    def get_config(self):
        return dict(super().get_config(), k=self.k)


class TopPSampler(Sampler):
    """Nucleus sampling: the smallest set of tokens whose probability reaches `p`.

    Args:
        p: float in (0, 1].
        k: optional int. Only the `k` most likely tokens are considered first,
            which makes the sort cheap for large vocabularies.
        temperature: float > 0.
        repetition_penalty: float > 0.
    """

    def __init__(self, p=0.9, k=None, temperature=1.0, repetition_penalty=1.0, seed=None):
        super().__init__(temperature, repetition_penalty, seed)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"`p` must be in (0, 1]. Received: p={p!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"`k` must be None or an integer >= 1. Received: k={k!r}")
        self.p = float(p)
        self.k = None if k is None else int(k)

    def filter_logits(self, logits):
        logits = logits / self.temperature
        k = logits.shape[-1] if self.k is None else min(self.k, logits.shape[-1])
        sorted_logits, _ = ops.top_k(logits, k)  # (b, k), descending
        probabilities = ops.softmax(sorted_logits, axis=-1)
        # Probability mass strictly before each candidate; keep while < p.
        mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
        keep = mass_before < self.p
        threshold = ops.min(ops.where(keep, sorted_logits, 1e9), axis=-1, keepdims=True)
        return ops.where(logits >= threshold, logits, EXCLUDED_LOGIT)

    def settings(self):
        return dict(super().settings(), top_p=self.p, top_k=self.k or 0)

    def get_config(self):
        return dict(super().get_config(), p=self.p, k=self.k)


class MinPSampler(Sampler):
    """Keeps tokens whose probability is at least `p` times the top token's.

    Args:
        p: float in (0, 1].
        temperature: float > 0.
        repetition_penalty: float > 0.
    """

    def __init__(self, p=0.05, temperature=1.0, repetition_penalty=1.0, seed=None):
        super().__init__(temperature, repetition_penalty, seed)
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
            raise ValueError(f"`p` must be in (0, 1]. Received: p={p!r}")
        self.p = float(p)

    def filter_logits(self, logits):
        logits = logits / self.temperature
        # p_i >= p * p_max  <=>  logit_i >= logit_max + log(p)
        threshold = ops.max(logits, axis=-1, keepdims=True) + ops.log(self.p)
        return ops.where(logits >= threshold, logits, EXCLUDED_LOGIT)

    def settings(self):
        return dict(super().settings(), min_p=self.p)

    def get_config(self):
        return dict(super().get_config(), p=self.p)


class BeamSampler:
    """Beam search: keeps the `num_beams` most likely sequences.

    Deterministic. `generate` returns the best beam of each prompt.

    Args:
        num_beams: int >= 1.
        length_penalty: float. Scores are `log_prob / length ** length_penalty`
            when finished sequences are compared (HF's convention).
    """

    is_greedy = False
    uses_seen_tokens = False

    def __init__(self, num_beams=4, length_penalty=1.0):
        if (
            isinstance(num_beams, bool)
            or not isinstance(num_beams, numbers.Integral)
            or num_beams < 1
        ):
            raise ValueError(
                f"`num_beams` must be an integer >= 1. Received: num_beams={num_beams!r}"
            )
        self.num_beams = int(num_beams)
        self.length_penalty = float(length_penalty)

    def get_config(self):
        return {"num_beams": self.num_beams, "length_penalty": self.length_penalty}

    def cache_key(self):
        return ("BeamSampler", self.num_beams, self.length_penalty)

    def __repr__(self):
        return f"BeamSampler(num_beams={self.num_beams}, length_penalty={self.length_penalty})"


_BUILT_IN_FILTERS = {
    cls.filter_logits
    for cls in (Sampler, GreedySampler, RandomSampler, TopKSampler, TopPSampler, MinPSampler)
}

SAMPLERS = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "min_p": MinPSampler,
    "beam": BeamSampler,
}


def get(identifier):
    """A sampler from an instance, a name ("greedy", "top_k", ...) or a config dict."""
    if isinstance(identifier, (Sampler, BeamSampler)):
        return identifier
    if isinstance(identifier, str):
        if identifier not in SAMPLERS:
            raise ValueError(
                f"Unknown sampler {identifier!r}. Valid names: {sorted(SAMPLERS)}, or pass a "
                "sampler instance such as `keras_gemma.samplers.TopKSampler(k=40)`."
            )
        return SAMPLERS[identifier]()
    if isinstance(identifier, dict) and identifier.get("class_name") in SAMPLERS:
        return SAMPLERS[identifier["class_name"]](**identifier.get("config", {}))
    raise ValueError(
        f"`sampler` must be a sampler instance or one of {sorted(SAMPLERS)}. "
        f"Received: {identifier!r}"
    )
