"""`keras-gemma generate`: completes one prompt, streaming the text to stdout."""

import sys

from keras_gemma.commands.common import CommandError
from keras_gemma.commands.options import build_sampler
from keras_gemma.commands.options import load_causal_lm


def run(args):
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin.isatty():
            raise CommandError("no prompt: pass one as an argument or pipe it on stdin")
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt:
        raise CommandError("the prompt is empty")
    sampler = build_sampler(args)
    lm = load_causal_lm(args)
    options = dict(
        max_new_tokens=args.max_new_tokens or 64,
        strip_prompt=args.strip_prompt,
        sampler=sampler,
        seed=args.seed,
    )
    if args.no_stream:
        print(lm.generate(prompt, **options), flush=True)
        return 0
    for piece in lm.generate(prompt, stream=True, **options):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
