"""The `keras-gemma` command line (also `python -m keras_gemma`).

```
keras-gemma generate "The capital of France is"      # streams from gemma3_270m
keras-gemma chat --preset ./my_gemma                  # multi-turn, over stdin
keras-gemma convert ./hf_checkpoint ./my_gemma        # HF dir or .gguf -> Keras preset
keras-gemma finetune data.jsonl --output adapter.lora.h5
keras-gemma presets
keras-gemma --backend torch generate "..."
```

Keras is imported only once a subcommand runs, after `--backend` has set
`KERAS_BACKEND`, so `--help`, argument errors and `presets` stay fast. A
failing command prints one line, `error: ...`, to stderr and exits with
status 1 (argparse's own usage errors exit with 2); set `KERAS_GEMMA_DEBUG=1`
to see the traceback instead.
"""

import argparse
import json
import os
import sys

BACKENDS = ("jax", "torch", "tensorflow")
SAMPLERS = ("greedy", "random", "top_k", "top_p", "min_p")
DEFAULT_PRESET = "gemma3_270m"
DEBUG_ENV = "KERAS_GEMMA_DEBUG"
EXIT_COMMANDS = ("/exit", "/quit")


class CommandError(Exception):
    """A user error the command line reports as one `error: ...` line."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (`--help` still shows usage)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


# === Shared helpers ===


def _say(message):
    """A status line on stderr (stdout stays clean for the generated text)."""
    print(message, file=sys.stderr, flush=True)


def _load_causal_lm(args, sequence_length=1024):
    import keras_gemma
    from keras_gemma.formats import loader

    loader.resolve(args.preset)  # A bad handle fails here, before any output.
    _say(f"Loading {args.preset} ({_backend_name()} backend)...")
    _keep_compiled_functions(loader.cache_dir())
    return keras_gemma.GemmaCausalLM.from_preset(
        args.preset, dtype=args.dtype, sequence_length=sequence_length
    )


def _keep_compiled_functions(cache_root):
    """JAX: XLA executables persist in `<cache_root>/jax` between runs.

    Each `keras-gemma generate` would otherwise compile its prefill and
    decode step again (~3 s of a ~14 s run on Gemma 3 270M, 2-core CPU). Left
    alone when the user chose a cache (`JAX_COMPILATION_CACHE_DIR`). Only the
    command sets this: the library never changes JAX's global configuration.
    """
    if _backend_name() != "jax":
        return
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(cache_root, "jax"))


def _backend_name():
    import keras

    return keras.config.backend()


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
    from keras_gemma import samplers

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


# === generate ===


def run_generate(args):
    prompt = args.prompt
    if prompt is None or prompt == "-":
        if sys.stdin.isatty():
            raise CommandError("no prompt: pass one as an argument or pipe it on stdin")
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt:
        raise CommandError("the prompt is empty")
    sampler = build_sampler(args)
    lm = _load_causal_lm(args)
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


# === chat ===


def run_chat(args):
    sampler = build_sampler(args)
    lm = _load_causal_lm(args)
    session = lm.chat_session(max_length=args.max_length, sampler=sampler)
    interactive = sys.stdin.isatty()
    if interactive:
        _say("Chatting with the model. /reset starts over, /exit (or Ctrl-D) quits.")
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
            _say("(conversation reset)")
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
                _say(f"error: {_one_line(error)}")
                continue
            raise
        sys.stdout.write("\n")
        sys.stdout.flush()
        turn += 1
    return 0


# === convert ===


def run_convert(args):
    import keras_gemma
    from keras_gemma.formats import loader

    source = args.source
    if not source.startswith(("kaggle://", "hf://")) and not os.path.exists(source):
        from keras_gemma.formats import registry as preset_registry

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
    _say(f"[1/{steps}] Reading {source} ({kind}, {_backend_name()} backend)...")
    lm = keras_gemma.GemmaCausalLM.from_preset(source, dtype=args.dtype)
    parameters = lm.backbone.count_params()
    _say(f"[2/{steps}] Loaded {parameters:,} parameters; writing {args.output}...")
    lm.save_to_preset(output)
    size = sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(output) for f in files
    )
    _say(
        f"[3/{steps}] Done: {args.output} ({size / 2**20:,.1f} MiB). "
        f"Load it with --preset {args.output}"
    )
    return 0


# === finetune ===


def read_examples(path):
    """Training texts from a `.jsonl` file or a plain text file.

    JSONL lines are `{"text": ...}` or `{"prompt": ..., "response": ...}`
    (rendered as one user turn and one model turn of Gemma's chat format);
    any other file is one example per non-empty line.
    """
    if not os.path.isfile(path):
        raise CommandError(f"training file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    examples = []
    if path.endswith((".jsonl", ".json")):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CommandError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                examples.append(record["text"])
            elif (
                isinstance(record, dict)
                and isinstance(record.get("prompt"), str)
                and isinstance(record.get("response"), str)
            ):
                examples.append((record["prompt"], record["response"]))
            else:
                raise CommandError(
                    f'{path}:{number}: expected {{"text": ...}} or '
                    '{"prompt": ..., "response": ...} with string values'
                )
    else:
        examples = [line for line in lines if line.strip()]
    if not examples:
        raise CommandError(f"training file {path!r} has no examples")
    return examples


def _render_examples(examples, tokenizer):
    """Strings for `fit`: prompt/response pairs in Gemma's turn format."""
    texts = []
    bos = tokenizer.id_to_token(tokenizer.bos_token_id)
    for example in examples:
        if isinstance(example, tuple):
            prompt, response = example
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                add_generation_prompt=False,
                tokenize=False,
            )
            # The preprocessor adds `<bos>` itself.
            texts.append(text[len(bos) :] if text.startswith(bos) else text)
        else:
            texts.append(example)
    return texts


def run_finetune(args):
    examples = read_examples(args.data)
    output = args.output
    if not output.endswith((".lora.h5", ".safetensors")):
        raise CommandError(f"--output must end in .lora.h5 or .safetensors, got {output!r}")
    lm = _load_causal_lm(args, sequence_length=args.sequence_length)
    if lm.preprocessor is None:
        raise CommandError(f"preset {args.preset!r} has no tokenizer; fine-tuning needs one")
    if not hasattr(lm.backbone, "enable_lora") or not hasattr(lm.backbone, "save_lora_weights"):
        raise CommandError("this keras_gemma has no LoRA support (GemmaBackbone.enable_lora)")
    lm.preprocessor.truncate = args.truncate
    texts = _render_examples(examples, lm.preprocessor.tokenizer)
    import keras

    lm.backbone.enable_lora(rank=args.rank, alpha=args.alpha)
    trainable = sum(int(keras.ops.size(w)) for w in lm.trainable_weights)
    _say(
        f"LoRA rank {args.rank}: {trainable:,} trainable of {lm.count_params():,} parameters; "
        f"{len(texts)} examples, {args.epochs} epoch(s), batch size {args.batch_size}, "
        f"sequence length {args.sequence_length}"
    )
    lm.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=args.learning_rate, weight_decay=0.01)
    )
    history = lm.fit(
        texts,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=1 if sys.stderr.isatty() else 2,
    )
    losses = history.history.get("loss", [])
    if losses:
        _say(f"final loss: {losses[-1]:.4f}")
    lm.backbone.save_lora_weights(output)
    _say(f"Saved the LoRA adapter to {output} (load it with backbone.load_lora_weights)")
    return 0


# === presets ===


def _human(count):
    if count >= 0.995e9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.0f}M"


def run_presets(args):
    from keras_gemma.formats import registry as preset_registry

    rows = []
    for name, metadata in preset_registry.list_presets().items():
        sources = preset_registry.preset_info(name).get("sources", {})
        params = int(metadata.get("params", 0))
        rows.append(
            (
                name,
                _human(params),
                f"{params * 2 / 2**30:.1f} GiB",
                "yes" if metadata.get("instruction_tuned") else "no",
                "embedded (offline)" if sources.get("embedded_gguf") else "download",
            )
        )
    header = ("name", "params", "bf16 size", "instruct", "weights")
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


# === Parser and entry point ===


def build_parser():
    parser = _ArgumentParser(
        prog="keras-gemma",
        description="Gemma 1/2/3 text models on Keras 3 (JAX, PyTorch, TensorFlow).",
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
    generate.set_defaults(func=run_generate)

    chat = subparsers.add_parser("chat", help="multi-turn chat over stdin (/exit or EOF quits)")
    _add_model_arguments(chat)
    _add_sampling_arguments(chat)
    chat.add_argument(
        "--max-length", type=_positive_int, default=4096, help="conversation capacity in tokens"
    )
    chat.set_defaults(func=run_chat)

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
    convert.set_defaults(func=run_convert)

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
    finetune.set_defaults(func=run_finetune)

    presets = subparsers.add_parser("presets", help="list the registered presets")
    presets.set_defaults(func=run_presets)
    return parser


def _one_line(error):
    text = " ".join(str(error).split())
    return text or type(error).__name__


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
    try:
        _set_backend(args.backend, argv)
        return args.func(args) or 0
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # Reported as one line; KERAS_GEMMA_DEBUG=1 shows the traceback.
        if os.environ.get(DEBUG_ENV):
            raise
        message = _one_line(error)
        if not isinstance(
            error, (CommandError, ValueError, FileNotFoundError, ImportError, ConnectionError)
        ):
            message = f"{type(error).__name__}: {message}"
        _say(f"error: {message}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
