"""Gemma as a causal language model: backbone plus the tied-embedding head."""

import keras
import numpy as np

from keras_gemma import samplers as sampler_lib
from keras_gemma.formats import keras_preset
from keras_gemma.formats import transformers_export
from keras_gemma.generation import generate as text_generation
from keras_gemma.generation import prompts
from keras_gemma.generation.chat_session import ChatSession
from keras_gemma.generation.engine import CompiledGenerator
from keras_gemma.layers.tied_logits import logits_from_hidden_states
from keras_gemma.models import keras_hub_task
from keras_gemma.models import preset_loading
from keras_gemma.models.gemma_backbone import GemmaBackbone


@keras.saving.register_keras_serializable(package="keras_gemma")
class GemmaCausalLM(keras.Model):
    """A Gemma backbone with its language-model head, generation and training.

    Calling the model maps `{"token_ids", "padding_mask"}` `[batch, seq]` to
    next-token logits `[batch, seq, vocabulary_size]` (float32): the final
    hidden states times the transposed token embedding, soft-capped by
    `final_logit_soft_cap` when the backbone has one (in training too).

    `generate()` decodes with preallocated per-layer KV caches, compiled on
    every backend; `fit()` takes raw strings through the preprocessor.

    Args:
        backbone: a `GemmaBackbone`.
        preprocessor: a `GemmaCausalLMPreprocessor` or None. Needed for string
            inputs to `generate`, `fit`, `predict` and `score`.
        compile: bool. Whether to `compile()` with the defaults right away
            (as keras-hub's task models do), so `fit()` works without a
            `compile()` call. False leaves the model uncompiled.

    Example:
    ```python
    lm = keras_gemma.GemmaCausalLM.from_preset("gemma3_270m")
    lm.generate("The capital of France is", max_new_tokens=16)
    ```
    """

    def __init__(self, backbone, preprocessor=None, compile=True, **kwargs):
        check_vocabulary_fits(backbone, preprocessor)
        # === Functional Model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)
        logits = logits_from_hidden_states(backbone, hidden_states)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.sampler = sampler_lib.GreedySampler()
        self._generator = None
        if compile:
            self.compile()

    def __call__(self, inputs, *args, **kwargs):
        # Keras refuses a dict mixing NumPy arrays and tensors (say, the
        # preprocessor's NumPy ids with an `ops.ones_like` mask).
        if isinstance(inputs, dict) and len({type(value) for value in inputs.values()}) > 1:
            inputs = {
                key: keras.ops.convert_to_tensor(value) if isinstance(value, np.ndarray) else value
                for key, value in inputs.items()
            }
        return super().__call__(inputs, *args, **kwargs)

    # === Training ===

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        weighted_metrics="auto",
        sampler="greedy",
        **kwargs,
    ):
        """Configures training and the default sampler of `generate`.

        Args:
            optimizer: "auto" is AdamW (learning rate 2e-5, weight decay 0.01,
                no decay on norms and embeddings' bias-free scales), or any
                Keras optimizer.
            loss: "auto" is sparse categorical cross-entropy on the logits,
                masked by the preprocessor's sample weights.
            weighted_metrics: "auto" is sparse categorical accuracy.
            sampler: a sampler name ("greedy", "random", "top_k", "top_p",
                "min_p", "beam") or instance: the default for `generate`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(learning_rate=2e-5, weight_decay=0.01)
            optimizer.exclude_from_weight_decay(var_names=["scale"])
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy()]
        self.sampler = sampler_lib.get(sampler)
        self._generator = None  # Generation retraces with the new settings.
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    def _preprocess_for_training(self, x, y, sample_weight):
        if keras_hub_task.is_text_pairs(x):
            x = {key: prompts.text_list(value) for key, value in x.items()}
        elif prompts.is_text(x):
            x = prompts.text_list(x)
        else:
            return x, y, sample_weight
        if self.preprocessor is None:
            raise ValueError(
                "String inputs need a preprocessor: build the model with "
                "`GemmaCausalLM(backbone, preprocessor)` or load it with `from_preset`."
            )
        if y is not None or sample_weight is not None:
            raise ValueError(
                "With string inputs, labels and weights come from the text; pass only `x`."
            )
        return self.preprocessor(x)

    def fit(
        self, x=None, y=None, batch_size=None, sample_weight=None, validation_data=None, **kwargs
    ):
        """`keras.Model.fit`, also on raw strings, lists, NumPy or `tf.data`.

        Strings are packed by the preprocessor (next-token labels, padding
        masked out of the loss); `{"prompts": [...], "responses": [...]}`
        puts the loss on the responses only. A `tf.data.Dataset` of either
        (also of `(x,)` tuples) is mapped through the preprocessor;
        everything else goes to Keras unchanged.
        """
        x, y, sample_weight = self._preprocess_dataset_or_text(x, y, sample_weight)
        if validation_data is not None and prompts.is_text(validation_data):
            validation_data = self._preprocess_for_training(validation_data, None, None)
        return super().fit(
            x,
            y,
            batch_size=batch_size,
            sample_weight=sample_weight,
            validation_data=validation_data,
            **kwargs,
        )

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        x, y, sample_weight = self._preprocess_dataset_or_text(x, y, sample_weight)
        return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x, batch_size=None, **kwargs):
        """`keras.Model.predict`, also on raw strings and `tf.data` of strings.

        Strings are packed by the preprocessor as for `fit()`; the result is
        the logits `[batch, sequence_length, vocabulary_size]`.
        """
        x, _, _ = self._preprocess_dataset_or_text(x, None, None)
        return super().predict(x, batch_size=batch_size, **kwargs)

    def _preprocess_dataset_or_text(self, x, y, sample_weight):
        check_not_empty(x)
        if keras_hub_task.is_text_dataset(x):
            if self.preprocessor is None:
                raise ValueError("A dataset of strings needs a preprocessor.")
            return keras_hub_task.map_text_dataset(x, self.preprocessor), None, None
        return self._preprocess_for_training(x, y, sample_weight)

    # === Generation ===

    @property
    def generate_function(self):
        """The compiled generation programs (`generator`) once built, else None.

        keras-hub's name: it stays the same across `generate()` calls and is
        reset by `compile()`.
        """
        return self._generator

    @property
    def generator(self):
        """The `CompiledGenerator` holding this model's compiled generation programs."""
        if self._generator is None:
            self._generator = CompiledGenerator(self)
        return self._generator

    def generate(
        self,
        inputs,
        max_length=None,
        max_new_tokens=None,
        stop_token_ids="auto",
        strip_prompt=False,
        stream=False,
        sampler=None,
        seed=None,
        temperature=None,
        top_k=None,
        top_p=None,
        min_p=None,
        repetition_penalty=None,
    ):
        """Generates text (or token ids) after one prompt or a batch of prompts.

        Prompts of different lengths decode together, each row at its own
        position, with per-layer KV caches (sliding-window layers keep a ring
        of `sliding_window_size` slots). Two compiled programs (a prefill
        chunk and a decode loop) serve every prompt length and sampler
        setting of a batch-size and cache-capacity bucket, so after the first
        call nothing compiles (`generation/engine.py`).

        Args:
            inputs: a string, a list of strings, or a dict with "token_ids" and
                "padding_mask" `[batch, seq]` (pre-tokenized prompts, start
                token included; any padding).
            max_length: int. Prompt plus generated tokens, at most.
            max_new_tokens: int >= 0. Tokens to generate, at most. When neither
                limit is given, 64 new tokens.
            stop_token_ids: "auto" (`<eos>` and the family's `<end_of_turn>`),
                None (never stop early) or a list of ids. Stop tokens are not
                included in the returned text.
            strip_prompt: bool. Return only the generated part.
            stream: bool. Return an iterator over text pieces as they are
                decoded (one prompt only).
            sampler: a sampler name or instance; defaults to the one given to
                `compile()` (greedy).
            seed: int. Makes sampling reproducible (prompt `i` of a batch
                samples with `seed + i`). Defaults to the sampler's own seed,
                else a random one.
            temperature: float >= 0, for this call (0: greedy). HF
                transformers' keywords: given any of `temperature > 0`,
                `top_k`, `top_p` or `min_p`, a greedy sampler samples (at
                temperature 1 unless given).
            top_k: int >= 0. Sample among the `top_k` most likely (0: off).
            top_p: float in (0, 1]. Nucleus sampling over the top-k
                survivors (1: off).
            min_p: float in [0, 1]. Keep tokens at least `min_p` times as
                likely as the most likely one (0: off).
            repetition_penalty: float > 0. HF's (CTRL) penalty on tokens
                already in the sequence, prompt included (1: off).

        Without `max_length` or `max_new_tokens`, 64 new tokens: keras-hub
        instead fills its preprocessor's `sequence_length`; a fixed default
        here keeps the cost of a call independent of the preprocessor.

        Returns:
            A string (or list of strings) for string inputs; for dict inputs a
            dict with "token_ids" and "padding_mask" of the prompts followed by
            the new tokens (right-padded). With `stream=True`, an iterator of
            strings.
        """
        return text_generation.generate(
            self,
            inputs,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_token_ids,
            strip_prompt=strip_prompt,
            stream=stream,
            sampler=sampler,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
        )

    def chat_session(self, max_length=4096, sampler=None, stop_token_ids="auto"):
        """A multi-turn chat that keeps the KV cache between turns.

        Args:
            max_length: int. Capacity of the conversation in tokens.
            sampler: sampler name or instance (defaults to `compile()`'s).
            stop_token_ids: as in `generate`.

        Returns:
            A `keras_gemma.ChatSession`; call `session.send("...")`.
        """
        return ChatSession(
            self, max_length=max_length, sampler=sampler, stop_token_ids=stop_token_ids
        )

    def score(
        self,
        inputs=None,
        token_ids=None,
        padding_mask=None,
        scoring_mode="logits",
        layer_intercept_fn=None,
        target_ids=None,
    ):
        """Per-token log-likelihoods under the model.

        Args:
            inputs: a string, list of strings (tokenized with the start token),
                or a dict with "token_ids" and "padding_mask".
            token_ids, padding_mask, scoring_mode, target_ids: keras-hub's
                form, used instead of `inputs`: `scoring_mode="logits"`
                returns the logits `[batch, seq, vocabulary_size]`, "loss" the
                cross-entropy of `target_ids` `[batch, seq]` per token.
            layer_intercept_fn: not supported (an error says what to use).

        Returns:
            For strings: a float32 array (or list of arrays) of
            `log p(token_i | tokens_<i)` for every token after the first. For a
            dict: a float32 array `[batch, L - 1]`, where `L` is the length of
            the longest row without its padding (columns past it would be
            padding only), zero where the scored token is padding.
        """
        if token_ids is not None:
            return keras_hub_task.score_tokens(
                self, token_ids, padding_mask, scoring_mode, target_ids, layer_intercept_fn
            )
        return text_generation.score(self, inputs)

    # === Presets ===

    @classmethod
    def from_preset(cls, handle, dtype=None, sequence_length=None, preprocessor=None):
        """Loads a causal LM and, when the preset has a vocabulary, its preprocessor.

        Args:
            handle: a registered preset name (`keras_gemma.list_presets()`), a
                local Keras preset directory (ours or keras-hub's), a local
                transformers checkpoint directory, a `.gguf` file, or a
                `kaggle://` / `hf://` handle.
            dtype: dtype or policy for the weights ("float32", "bfloat16", ...).
            sequence_length: int. The preprocessor's training sequence length;
                by default the preset's own (`preprocessor.json`), else 1024.
            preprocessor: a `GemmaCausalLMPreprocessor` to use instead of the
                preset's (keras-hub's argument); then `sequence_length` must
                be None.
        """
        if preprocessor is not None:
            if sequence_length is not None:
                raise ValueError(
                    "Pass `sequence_length` or `preprocessor`, not both: the preprocessor "
                    "has its own `sequence_length`."
                )
            backbone = GemmaBackbone.from_preset(handle, dtype=dtype)
            return cls(backbone=backbone, preprocessor=preprocessor)
        backbone, preprocessor = preset_loading.load_backbone_and_preprocessor(
            GemmaBackbone, handle, dtype=dtype, sequence_length=sequence_length
        )
        return cls(backbone=backbone, preprocessor=preprocessor)

    def save_to_preset(self, directory, overwrite=False):
        """Writes a Keras preset directory (atomically: a failure keeps the old one).

        Args:
            directory: the folder to write. A previous preset there is
                replaced; a folder holding other files is refused with a
                `FileExistsError` naming them.
            overwrite: bool. Replace the folder and everything in it.
        """
        keras_preset.save_causal_lm(self, directory, overwrite=overwrite)

    def export_to_transformers(self, directory, overwrite=False):
        """Writes a transformers checkpoint (`config.json`, safetensors, tokenizer).

        Like `save_to_preset`, refuses a folder holding other files unless
        `overwrite=True`.
        """
        transformers_export.export_causal_lm(self, directory, overwrite=overwrite)

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("preprocessor") is not None:
            config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)

    # === LoRA (delegates to the backbone) ===

    def _reset_compiled_functions(self):
        # Traced train/predict functions and generation captured the old
        # variables (and whether LoRA was on): retrace on next use.
        self.train_function = self.test_function = self.predict_function = None
        self._generator = None

    def enable_lora(
        self, rank, alpha=None, target_names=("query", "value"), target_layer_names=None
    ):
        """`GemmaBackbone.enable_lora`; call `compile()` afterwards."""
        self.backbone.enable_lora(
            rank, alpha=alpha, target_names=target_names, target_layer_names=target_layer_names
        )
        self._reset_compiled_functions()

    def save_lora_weights(self, path):
        """`GemmaBackbone.save_lora_weights`."""
        self.backbone.save_lora_weights(path)

    def load_lora_weights(self, path):
        """`GemmaBackbone.load_lora_weights`."""
        self.backbone.load_lora_weights(path)
        self._reset_compiled_functions()

    def merge_lora_weights(self):
        """`GemmaBackbone.merge_lora_weights`."""
        self.backbone.merge_lora_weights()
        self._reset_compiled_functions()

    def export_lora_to_peft(self, directory, overwrite=False):
        """`GemmaBackbone.export_lora_to_peft`."""
        self.backbone.export_lora_to_peft(directory, overwrite=overwrite)

    def enable_gradient_checkpointing(self):
        """`GemmaBackbone.enable_gradient_checkpointing`; call `compile()` afterwards."""
        self.backbone.enable_gradient_checkpointing()
        self._reset_compiled_functions()


def check_vocabulary_fits(backbone, preprocessor):
    """`ValueError` when the tokenizer has ids the backbone's embedding has no row for."""
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None or tokenizer.vocabulary_size <= backbone.vocabulary_size:
        return
    raise ValueError(
        f"The tokenizer has {tokenizer.vocabulary_size} pieces, but the backbone's embedding has "
        f"only {backbone.vocabulary_size} rows (`vocabulary_size`): ids from "
        f"{backbone.vocabulary_size} on have no embedding. Use the tokenizer the model was "
        "trained with, or a backbone with a large enough `vocabulary_size`."
    )


def check_not_empty(x):
    """`ValueError` for empty training data (Keras' own error is `pop from an empty set`)."""
    if isinstance(x, (list, tuple, dict)) or hasattr(x, "shape"):
        empty = len(x) == 0 if not hasattr(x, "shape") else (len(x.shape) > 0 and x.shape[0] == 0)
        if empty:
            raise ValueError(
                f"`x` is empty ({type(x).__name__} of length 0): pass at least one example "
                "(a string, a list of strings, a dict of token arrays or a `tf.data.Dataset`)."
            )
