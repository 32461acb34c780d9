"""The model and sampler that the shared `--preset`/`--dtype` and sampling options describe."""

import keras

from keras_gemma import samplers
from keras_gemma.commands.common import CommandError
from keras_gemma.commands.common import say
from keras_gemma.formats import loader
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM


def backend_name():
    return keras.config.backend()


def load_causal_lm(args, sequence_length=1024):
    loader.resolve(args.preset)  # A bad handle fails here, before any output.
    say(f"Loading {args.preset} ({backend_name()} backend)...")
    return GemmaCausalLM.from_preset(args.preset, dtype=args.dtype, sequence_length=sequence_length)


def build_sampler(args):
    """The `keras_gemma.samplers` instance the sampling options describe."""
    name = args.sampler
    if name is None:
        if args.top_k is not None and args.top_p is None:
            name = "top_k"
        elif args.top_p is not None:
            name = "top_p"
        elif args.min_p is not None:
            name = "min_p"
        elif args.temperature is not None:
            name = "random"
        else:
            name = "greedy"
    allowed = {
        "greedy": set(),
        "random": {"temperature"},
        "top_k": {"temperature", "top_k"},
        "top_p": {"temperature", "top_p", "top_k"},
        "min_p": {"temperature", "min_p"},
    }[name]
    for option in ("temperature", "top_k", "top_p", "min_p"):
        if getattr(args, option) is not None and option not in allowed:
            flags = ["--" + allowed_option.replace("_", "-") for allowed_option in sorted(allowed)]
            raise CommandError(
                f"--{option.replace('_', '-')} does not apply to --sampler {name}; "
                f"it takes {', '.join(flags) or 'no options'}"
            )
    common = {}
    if args.repetition_penalty is not None:
        common["repetition_penalty"] = args.repetition_penalty
    if name == "greedy":
        return samplers.GreedySampler(**common)
    common["temperature"] = args.temperature if args.temperature is not None else 1.0
    if name == "random":
        return samplers.RandomSampler(**common)
    if name == "top_k":
        return samplers.TopKSampler(k=args.top_k or 5, **common)
    if name == "top_p":
        return samplers.TopPSampler(p=args.top_p or 0.9, k=args.top_k, **common)
    return samplers.MinPSampler(p=args.min_p or 0.05, **common)
