"""The `keras-gemma` command line (also `python -m keras_gemma`).

```
keras-gemma generate "The capital of France is"      # streams from gemma3_270m
keras-gemma chat --preset ./my_gemma                  # multi-turn, over stdin
keras-gemma convert ./hf_checkpoint ./my_gemma        # HF dir or .gguf -> Keras preset
keras-gemma finetune data.jsonl --output adapter.lora.h5
keras-gemma serve --port 8000 --max-batch 8             # OpenAI-compatible API
keras-gemma presets
keras-gemma --backend torch generate "..."
```

Each subcommand lives in `keras_gemma.commands`, one module with a `run(args)`
each; only the one named is imported, after `--backend` has set
`KERAS_BACKEND`. (`import keras_gemma` itself imports Keras on the backend it
chooses, so a different `--backend` on a real command line restarts the
process with the variable set: see `_set_backend`.) A failing command prints
one line, `error: ...`, to stderr and exits with status 1 (argparse's own
usage errors exit with 2); set `KERAS_GEMMA_DEBUG=1` to see the traceback
instead.
"""

import argparse
import contextlib
import os
import re
import sys
import tempfile

from keras_gemma.commands.common import CommandError
from keras_gemma.commands.common import one_line
from keras_gemma.commands.common import say

BACKENDS = ("jax", "torch", "tensorflow")
SAMPLERS = ("greedy", "random", "top_k", "top_p", "min_p")
DEFAULT_PRESET = "gemma3_270m"
DEBUG_ENV = "KERAS_GEMMA_DEBUG"
EXAMPLES = """examples:
  keras-gemma generate "The capital of France is"          # gemma3_270m, offline
  keras-gemma generate "Once upon a time" --sampler top_p --top-p 0.9 --seed 1
  keras-gemma chat --preset gemma3_instruct_270m           # instruction-tuned, for chat
  keras-gemma finetune data.jsonl --rank 8 --epochs 1 --output adapter.lora.h5
  keras-gemma convert ./gemma-3-1b-it ./gemma3_1b_keras     # transformers dir or .gguf
  keras-gemma presets                                       # registered names and sizes
  keras-gemma --backend torch generate "Hello"              # any command, another backend

`keras-gemma COMMAND --help` lists a command's options."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (`--help` still shows usage)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# === Argument types and shared options ===


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_model_arguments(parser):
    parser.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        help="preset name, Keras preset dir, transformers dir, .gguf file, kaggle:// or hf:// "
        f"handle "
        f"(default: {DEFAULT_PRESET}, bundled with keras-gemma[embedded])",
    )
    parser.add_argument(
        "--dtype", default=None, help="weights dtype, e.g. float32 or bfloat16 (default: float32)"
    )


def _add_sampling_arguments(parser):
    parser.add_argument(
        "--max-new-tokens", type=_positive_int, default=None, help="tokens to generate at most"
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default=None,
        help="decoding strategy (default: greedy, or the one implied by "
        "--top-k/--top-p/--min-p/--temperature)",
    )
    parser.add_argument(
        "--temperature", type=_positive_float, default=None, help="sampling temperature"
    )
    parser.add_argument("--top-k", type=_positive_int, default=None, help="k for the top_k sampler")
    parser.add_argument(
        "--top-p", type=_positive_float, default=None, help="p for the top_p sampler"
    )
    parser.add_argument(
        "--min-p", type=_positive_float, default=None, help="p for the min_p sampler"
    )
    parser.add_argument(
        "--repetition-penalty",
        type=_positive_float,
        default=None,
        help="penalty for tokens already seen (> 1)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


# === Parser and entry point ===


def build_parser():
    parser = _ArgumentParser(
        prog="keras-gemma",
        description="Gemma 1/2/3 text models on Keras 3 (JAX, PyTorch, TensorFlow).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else Keras' configured one; "
        "without TensorFlow installed, jax then torch)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True

    generate = subparsers.add_parser("generate", help="complete a prompt (streams the text)")
    generate.add_argument(
        "prompt", nargs="?", default=None, help="the prompt; read from stdin when omitted or '-'"
    )
    _add_model_arguments(generate)
    _add_sampling_arguments(generate)
    generate.add_argument(
        "--strip-prompt", action="store_true", help="print only the generated text"
    )
    generate.add_argument(
        "--no-stream", action="store_true", help="print the text once it is complete"
    )

    chat = subparsers.add_parser("chat", help="multi-turn chat over stdin (/exit or EOF quits)")
    _add_model_arguments(chat)
    _add_sampling_arguments(chat)
    chat.add_argument(
        "--max-length", type=_positive_int, default=4096, help="conversation capacity in tokens"
    )

    convert = subparsers.add_parser(
        "convert", help="convert a transformers dir or .gguf file to a Keras preset dir"
    )
    convert.add_argument(
        "source", help="transformers checkpoint dir, .gguf file (or any from_preset handle)"
    )
    convert.add_argument("output", help="the Keras preset directory to write")
    convert.add_argument(
        "--dtype", default=None, help="weights dtype to save, e.g. bfloat16 (default: float32)"
    )
    convert.add_argument(
        "--overwrite", action="store_true", help="replace an existing output directory"
    )

    finetune = subparsers.add_parser("finetune", help="LoRA fine-tuning on a .jsonl or text file")
    finetune.add_argument(
        "data", help='.jsonl with {"text"} or {"prompt","response"} lines, or text, one per line'
    )
    _add_model_arguments(finetune)
    finetune.add_argument("--rank", type=_positive_int, default=8, help="LoRA rank (default: 8)")
    finetune.add_argument(
        "--alpha", type=_positive_float, default=None, help="LoRA alpha (default: the rank)"
    )
    finetune.add_argument("--epochs", type=_positive_int, default=1)
    finetune.add_argument("--batch-size", type=_positive_int, default=4)
    finetune.add_argument("--sequence-length", type=_positive_int, default=256)
    finetune.add_argument("--learning-rate", type=_positive_float, default=1e-4)
    finetune.add_argument(
        "--truncate",
        choices=("error", "right", "left"),
        default="error",
        help="what to do with an example longer than --sequence-length (default: error)",
    )
    finetune.add_argument(
        "--output", default="adapter.lora.h5", help="adapter file, .lora.h5 or .safetensors"
    )

    serve = subparsers.add_parser(
        "serve", help="an OpenAI-compatible HTTP server with continuous batching"
    )
    serve.add_argument(
        "preset",
        nargs="?",
        default=DEFAULT_PRESET,
        help="any from_preset handle (default: %(default)s)",
    )
    serve.add_argument(
        "--dtype", default=None, help="weights dtype, e.g. float32 or bfloat16 (default: float32)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    serve.add_argument(
        "--max-batch", type=_positive_int, default=8, help="requests decoding at once (default: 8)"
    )
    serve.add_argument(
        "--context",
        type=_positive_int,
        default=2048,
        help="prompt plus new tokens per request, at most (default: 2048)",
    )
    serve.add_argument(
        "--model-name", default=None, help="the model id clients send (default: PRESET as given)"
    )

    subparsers.add_parser("presets", help="list the registered presets")
    return parser


def _command(name):
    """The `run` function of subcommand `name`, imported only now (after `--backend`)."""
    if name == "generate":
        from keras_gemma.commands import generate as command
    elif name == "chat":
        from keras_gemma.commands import chat as command
    elif name == "convert":
        from keras_gemma.commands import convert as command
    elif name == "finetune":
        from keras_gemma.commands import finetune as command
    elif name == "serve":
        from keras_gemma.commands import serve as command
    else:
        from keras_gemma.commands import presets as command
    return command.run


# TensorFlow / XLA / absl lines printed by native code while a backend is
# imported: `TF_CPP_MIN_LOG_LEVEL` does not reach the ones logged before
# absl is initialized.
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} .*\] |"
    r".*(oneDNN custom operations|cuda drivers|TensorFlow binary is optimized|"
    r"rebuild TensorFlow with the appropriate compiler flags|Unable to register cu))"
)


@contextlib.contextmanager
def _native_log_filter():
    """Drops native TensorFlow/absl log lines written to stderr inside the block.

    Native code writes to file descriptor 2 directly, so it is pointed at a
    temporary file for the block; the other lines are written back after it.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not _NATIVE_NOISE.match(line):
                    print(line, file=sys.stderr)


def torch_thread_count(available_cores, load_average):
    """PyTorch intra-op threads for a command: the cores not already busy, at least 1.

    PyTorch starts one thread per core whatever else runs; measured on a
    2-core machine with another process busy, a generate took 26-81 s with
    the default, 4.3 s with one thread.
    """
    return max(1, min(available_cores, round(available_cores - load_average)))


def _limit_torch_threads(command):
    """Applies `torch_thread_count` unless the user set `OMP_NUM_THREADS`.

    Not for `serve`: a server outlives the load it sees at start (measured:
    started right after another process, it took 1 thread and decoded at 105
    instead of 55 ms a token on 2 cores), so it keeps one thread per core.
    """
    torch = sys.modules.get("torch")
    if torch is None or "OMP_NUM_THREADS" in os.environ or command == "serve":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    torch.set_num_threads(torch_thread_count(cores or 1, load))


def _set_backend(backend, argv):
    """Sets `KERAS_BACKEND` before Keras is imported.

    If Keras is already loaded with another backend (something imported it
    first), a real command line restarts itself with the variable set; a
    `main([...])` call from Python cannot, and says so.
    """
    if backend is None:
        return
    os.environ["KERAS_BACKEND"] = backend
    keras = sys.modules.get("keras")
    if keras is None or keras.config.backend() == backend:
        return
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "keras_gemma", *sys.argv[1:]])
    raise CommandError(
        f"--backend {backend}: Keras is already imported with the "
        f"{keras.config.backend()} backend; "
        f"set KERAS_BACKEND={backend} before importing it"
    )


def main(argv=None):
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        _set_backend(args.backend, argv)
        with _native_log_filter():
            command = _command(args.command)
        _limit_torch_threads(args.command)
        return command(args) or 0
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # Reported as one line; KERAS_GEMMA_DEBUG=1 shows the traceback.
        if os.environ.get(DEBUG_ENV):
            raise
        message = one_line(error)
        if not isinstance(
            error, (CommandError, ValueError, FileNotFoundError, ImportError, ConnectionError)
        ):
            message = f"{type(error).__name__}: {message}"
        say(f"error: {message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
