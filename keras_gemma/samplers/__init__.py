"""Token samplers for `GemmaCausalLM.generate` and `compile(sampler=...)`."""

from keras_gemma.samplers.sampler import BeamSampler
from keras_gemma.samplers.sampler import GreedySampler
from keras_gemma.samplers.sampler import MinPSampler
from keras_gemma.samplers.sampler import RandomSampler
from keras_gemma.samplers.sampler import Sampler
from keras_gemma.samplers.sampler import TopKSampler
from keras_gemma.samplers.sampler import TopPSampler
from keras_gemma.samplers.sampler import get

__all__ = [
    "BeamSampler",
    "GreedySampler",
    "MinPSampler",
    "RandomSampler",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "get",
]
