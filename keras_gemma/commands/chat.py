"""`keras-gemma chat`: a multi-turn conversation over stdin (`/reset`, `/exit`)."""

import sys

from keras_gemma.commands.common import one_line
from keras_gemma.commands.common import say
from keras_gemma.commands.options import build_sampler
from keras_gemma.commands.options import load_causal_lm

EXIT_COMMANDS = ("/exit", "/quit")


def run(args):
    sampler = build_sampler(args)
    lm = load_causal_lm(args)
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
