"""`keras-gemma finetune`: LoRA fine-tuning on a `.jsonl` or text file."""

import json
import math
import os
import sys
import time

import keras

from keras_gemma.commands.common import CommandError
from keras_gemma.commands.common import say
from keras_gemma.commands.options import load_causal_lm


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


def progress_line(step, steps, epoch, epochs, loss, elapsed):
    """`epoch 1/2 [=====>    ] 5/10 - loss: 2.3456 - ETA: 12s` for the training status."""
    done = (epoch - 1) * steps + step
    remaining = elapsed / done * (epochs * steps - done) if done else 0.0
    width = 20
    filled = width * step // steps
    bar = "=" * max(filled - 1, 0) + (">" if 0 < filled < width else "=" * (filled == width))
    return (
        f"epoch {epoch}/{epochs} [{bar.ljust(width)}] {step}/{steps} - loss: {loss:.4f} - "
        f"ETA: {remaining:.0f}s"
    )


class Progress(keras.callbacks.Callback):
    """Training progress on stderr (stdout stays free): a bar with loss and ETA.

    On a terminal the line is redrawn in place; otherwise (a pipe, a log) a
    line is written at most every 2 seconds and at the end of each epoch.
    """

    def __init__(self, steps, epochs):
        super().__init__()
        self.steps, self.epochs = steps, epochs
        self.interactive = sys.stderr.isatty()
        self.start = self.last = None
        self.epoch = 1

    def on_train_begin(self, logs=None):
        self.start = self.last = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        step = batch + 1
        if not self.interactive and step < self.steps and now - self.last < 2.0:
            return
        self.last = now
        loss = float((logs or {}).get("loss", float("nan")))
        line = progress_line(step, self.steps, self.epoch, self.epochs, loss, now - self.start)
        end = "\n" if not self.interactive or step == self.steps else ""
        print(("\r" if self.interactive else "") + line, end=end, file=sys.stderr, flush=True)


def run(args):
    examples = read_examples(args.data)
    output = args.output
    if not output.endswith((".lora.h5", ".safetensors")):
        raise CommandError(f"--output must end in .lora.h5 or .safetensors, got {output!r}")
    lm = load_causal_lm(args, sequence_length=args.sequence_length)
    if lm.preprocessor is None:
        raise CommandError(f"preset {args.preset!r} has no tokenizer; fine-tuning needs one")
    if not hasattr(lm.backbone, "enable_lora") or not hasattr(lm.backbone, "save_lora_weights"):
        raise CommandError("this keras_gemma has no LoRA support (GemmaBackbone.enable_lora)")
    lm.preprocessor.truncate = args.truncate
    texts = _render_examples(examples, lm.preprocessor.tokenizer)
    lm.backbone.enable_lora(rank=args.rank, alpha=args.alpha)
    trainable = sum(int(keras.ops.size(w)) for w in lm.trainable_weights)
    say(
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
        verbose=0,
        callbacks=[Progress(math.ceil(len(texts) / args.batch_size), args.epochs)],
    )
    losses = history.history.get("loss", [])
    if losses:
        say(f"final loss: {losses[-1]:.4f}")
    lm.backbone.save_lora_weights(output)
    say(f"Saved the LoRA adapter to {output} (load it with backbone.load_lora_weights)")
    return 0
