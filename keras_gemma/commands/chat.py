"""`keras-gemma chat`: a multi-turn conversation over stdin (`/reset`, `/exit`)."""

import sys

from keras_gemma.commands.common import one_line
from keras_gemma.commands.common import say
from keras_gemma.commands.options import build_sampler
from keras_gemma.commands.options import load_causal_lm
from keras_gemma.formats import registry as preset_registry

EXIT_COMMANDS = ("/exit", "/quit")
DEFAULT_CHAT_PRESET = "gemma3_instruct_270m"


def pretrained_warning(preset):
    """A note for a registered preset that is not instruction-tuned, else None."""
    if not preset_registry.is_registered(preset):
        return None
    if preset_registry.preset_info(preset).get("metadata", {}).get("instruction_tuned", True):
        return None
    instruct = preset.replace("gemma3_", "gemma3_instruct_").replace("gemma2_", "gemma2_instruct_")
    suggestion = instruct if preset_registry.is_registered(instruct) else DEFAULT_CHAT_PRESET
    return (
        f"note: {preset} is a pretrained model, not instruction-tuned: it continues text "
        f"rather than answering, so chat replies read as gibberish. For chat, use an "
        f"instruction-tuned preset: keras-gemma chat --preset {suggestion}"
    )


def run(args):
    sampler = build_sampler(args)
    lm = load_causal_lm(args)
    warning = pretrained_warning(args.preset)
    if warning:
        say(warning)
    session = lm.chat_session(max_length=args.max_length, sampler=sampler)
    interactive = sys.stdin.isatty()
    if interactive:
        say("Chatting with the model. /reset starts over, /exit (or Ctrl-D) quits.")
    turn = 0
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        message = line.strip()
        if not message:
            continue
        if message in EXIT_COMMANDS:
            break
        if message == "/reset":
            session.reset()
            say("(conversation reset)")
            continue
        seed = None if args.seed is None else args.seed + turn
        try:
            pieces = session.send(
                message, max_new_tokens=args.max_new_tokens or 256, stream=True, seed=seed
            )
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as error:
            # The conversation is full: say so, the user can /reset.
            if interactive:
                say(f"error: {one_line(error)}")
                continue
            raise
        sys.stdout.write("\n")
        sys.stdout.flush()
        turn += 1
    return 0
