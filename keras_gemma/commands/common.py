"""What every subcommand shares with the entry point: its error type and status lines.

Free of Keras: `keras_gemma.cli` imports it before the backend is chosen.
"""

import sys


class CommandError(Exception):
    """A user error the command line reports as one `error: ...` line."""


def say(message):
    """A status line on stderr (stdout stays clean for the generated text)."""
    print(message, file=sys.stderr, flush=True)


def one_line(error):
    """An exception's message on one line (its type's name when it has none)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
