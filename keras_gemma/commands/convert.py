"""`keras-gemma convert`: a transformers dir or `.gguf` file to a Keras preset dir."""

import os

from keras_gemma.commands.common import CommandError
from keras_gemma.commands.common import say
from keras_gemma.commands.options import backend_name
from keras_gemma.formats import loader
from keras_gemma.formats import registry as preset_registry
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM


def run(args):
    source = args.source
    if not source.startswith(("kaggle://", "hf://")) and not os.path.exists(source):
        if not preset_registry.is_registered(source):
            raise CommandError(
                f"{source!r} does not exist "
                "(expected a transformers checkpoint dir or a .gguf file)"
            )
    output = os.path.abspath(args.output)
    if os.path.isfile(output):
        raise CommandError(f"{args.output!r} is a file; the output must be a directory")
    if os.path.isdir(output) and os.listdir(output) and not args.overwrite:
        raise CommandError(f"{args.output!r} already exists; pass --overwrite to replace it")
    kind = loader.resolve(source)[0]
    steps = 3
    say(f"[1/{steps}] Reading {source} ({kind}, {backend_name()} backend)...")
    lm = GemmaCausalLM.from_preset(source, dtype=args.dtype)
    parameters = lm.backbone.count_params()
    say(f"[2/{steps}] Loaded {parameters:,} parameters; writing {args.output}...")
    lm.save_to_preset(output, overwrite=args.overwrite)
    size = sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(output) for f in files
    )
    say(
        f"[3/{steps}] Done: {args.output} ({size / 2**20:,.1f} MiB). "
        f"Load it with --preset {args.output}"
    )
    return 0
