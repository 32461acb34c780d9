"""LoRA: trainable counts, fit on strings, merge, adapter files, int8 base,
gradient checkpointing, agreement across backends and PEFT export."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_gemma.models import lora
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.models.gemma_causal_lm_preprocessor import GemmaCausalLMPreprocessor
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.test_case import TestCase

VOCABULARY_SIZE = 400
TRAIN_TEXT = [
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
    "<start_of_turn>model\nParis.<end_of_turn>",
    "<start_of_turn>user\nWhat is the capital of Italy?<end_of_turn>\n"
    "<start_of_turn>model\nRome.<end_of_turn>",
]


def random_base_weights(backbone, seed=0):
    """Deterministic NumPy weights, identical on every backend."""
    generator = np.random.default_rng(seed)
    weights = []
    for variable in backbone.weights:
        if "embeddings" in variable.path:
            spread = 1.0  # Large enough that the frozen tied head can express confident logits.
        elif "scale" in variable.path:
            spread = 0.5
        else:
            spread = 1.0 / np.sqrt(np.prod(variable.shape[:-1]))
        weights.append(generator.normal(0.0, spread, variable.shape).astype("float32"))
    return weights


def set_random_adapters(backbone, seed=1, scale=0.05):
    """Non-zero adapters (Keras initializes `b` to zeros)."""
    generator = np.random.default_rng(seed)
    for _, _, _, layer in lora.target_layers(backbone, lora.lora_state(backbone).target_names):
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variable.assign(generator.normal(0.0, scale, variable.shape).astype("float32"))


def adapter_values(backbone):
    return [keras.ops.convert_to_numpy(v) for v in backbone.trainable_weights]


def make_causal_lm(tokenizer=None, family="gemma3", **overrides):
    backbone = GemmaBackbone(**tiny_config(family, vocabulary_size=VOCABULARY_SIZE, **overrides))
    backbone.set_weights(random_base_weights(backbone))
    preprocessor = (
        None if tokenizer is None else GemmaCausalLMPreprocessor(tokenizer, sequence_length=32)
    )
    return GemmaCausalLM(backbone, preprocessor)


def token_inputs(batch=2, length=10, seed=0):
    generator = np.random.default_rng(seed)
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[0, -3:] = 0
    return {
        "token_ids": generator.integers(3, VOCABULARY_SIZE, (batch, length)).astype("int32"),
        "padding_mask": padding_mask,
    }


class TestLoraSetup(TestCase):
    @pytest.mark.parametrize(
        "target_names",
        [("query", "value"), "attention", "all", ("ffw_linear", "key")],
    )
    def test_trainable_count_is_closed_form(self, target_names):
        config = tiny_config("gemma3", vocabulary_size=VOCABULARY_SIZE)
        backbone = GemmaBackbone(**config)
        total = backbone.count_params()
        backbone.enable_lora(3, target_names=target_names)
        trainable = sum(int(np.prod(v.shape)) for v in backbone.trainable_weights)
        assert trainable == lora.lora_parameter_count(config, 3, target_names)
        # Embeddings and norms are frozen too: every trainable weight is an adapter.
        assert all("lora_kernel" in v.path for v in backbone.trainable_weights)
        assert backbone.count_params() == total + trainable
        lines = []
        backbone.summary(print_fn=lambda line, **kwargs: lines.append(line))
        assert f"{trainable:,}" in "".join(lines)

    def test_closed_form_for_gemma3_270m_query_value(self):
        # 18 layers x [q: 4*640*8 + 8*256, v: 1*640*8 + 8*256].
        config = {
            "num_layers": 18,
            "hidden_dim": 640,
            "intermediate_dim": 2048,
            "head_dim": 256,
            "num_query_heads": 4,
            "num_key_value_heads": 1,
        }
        assert lora.lora_parameter_count(config, 8) == 18 * (20480 + 2048 + 5120 + 2048)

    def test_bad_arguments(self):
        backbone = GemmaBackbone(**tiny_config("gemma", vocabulary_size=VOCABULARY_SIZE))
        with pytest.raises(ValueError, match="Valid names.*'attention_output'.*'ffw_linear'"):
            backbone.enable_lora(2, target_names=("query", "q_proj"))
        for rank in (0, -1, 1.5, True, "4"):
            with pytest.raises(ValueError, match="`rank` must be an integer >= 1"):
                backbone.enable_lora(rank)
        with pytest.raises(ValueError, match="`alpha`"):
            backbone.enable_lora(2, alpha=0)
        with pytest.raises(ValueError, match="not enabled"):
            backbone.merge_lora_weights()
        backbone.enable_lora(2)
        with pytest.raises(ValueError, match="already enabled"):
            backbone.enable_lora(2)


class TestLoraTraining(TestCase):
    def test_fit_save_load_merge(self, tokenizer, tmp_path):
        causal_lm = make_causal_lm(tokenizer)
        base_weights = causal_lm.backbone.get_weights()
        causal_lm.enable_lora(4, alpha=8, target_names="all")
        causal_lm.compile(optimizer=keras.optimizers.Adam(5e-2))
        history = causal_lm.fit(TRAIN_TEXT * 2, batch_size=2, epochs=8, verbose=0)
        losses = history.history["loss"]
        assert losses[-1] < 0.5 * losses[0], losses
        inputs = token_inputs()
        logits = causal_lm.predict(inputs, verbose=0)

        # Save → load into a fresh model with the same base: identical logits.
        path = str(tmp_path / "adapter.lora.h5")
        causal_lm.save_lora_weights(path)
        assert os.path.getsize(path) < 200_000
        restored = make_causal_lm(tokenizer)
        restored.backbone.set_weights(base_weights)
        restored.load_lora_weights(path)  # enables LoRA from the file
        state = lora.lora_state(restored.backbone)
        assert (state.rank, state.alpha, state.target_names) == (4, 8.0, lora.VALID_TARGETS)
        np.testing.assert_array_equal(restored.predict(inputs, verbose=0), logits)

        # Merge: same logits, adapter variables gone, generation and presets work.
        causal_lm.merge_lora_weights()
        assert not any("lora" in v.path for v in causal_lm.backbone.weights)
        assert len(causal_lm.backbone.weights) == len(base_weights)
        self.assert_all_close(causal_lm.predict(inputs, verbose=0), logits, atol=1e-5, rtol=1e-5)
        assert isinstance(causal_lm.generate("What is", max_new_tokens=2), str)
        preset = str(tmp_path / "preset")
        causal_lm.save_to_preset(preset)
        reloaded = GemmaCausalLM.from_preset(preset)
        self.assert_all_close(reloaded.predict(inputs, verbose=0), logits, atol=1e-5, rtol=1e-5)

    def test_adapter_file_checks(self, tmp_path):
        causal_lm = make_causal_lm()
        causal_lm.enable_lora(2)
        set_random_adapters(causal_lm.backbone)
        h5_path, safetensors_path = str(tmp_path / "a.lora.h5"), str(tmp_path / "a.safetensors")
        causal_lm.save_lora_weights(h5_path)
        causal_lm.save_lora_weights(safetensors_path)
        expected = adapter_values(causal_lm.backbone)

        other = make_causal_lm()
        other.enable_lora(2)
        other.load_lora_weights(safetensors_path)
        for actual, wanted in zip(adapter_values(other.backbone), expected):
            np.testing.assert_array_equal(actual, wanted)

        wrong_rank = make_causal_lm()
        wrong_rank.enable_lora(3)
        with pytest.raises(ValueError, match="rank=2.*rank=3"):
            wrong_rank.load_lora_weights(h5_path)
        wrong_targets = make_causal_lm()
        wrong_targets.enable_lora(2, target_names="all")
        with pytest.raises(ValueError, match="targets"):
            wrong_targets.load_lora_weights(h5_path)
        wrong_shape = GemmaBackbone(
            **tiny_config("gemma3", vocabulary_size=VOCABULARY_SIZE, head_dim=4)
        )
        with pytest.raises(ValueError, match="shape"):
            wrong_shape.load_lora_weights(h5_path)
        with pytest.raises(ValueError, match="must end in"):
            causal_lm.save_lora_weights(str(tmp_path / "adapter.h5"))

    def test_failed_save_keeps_previous_file(self, tmp_path, monkeypatch):
        import h5py

        backbone = make_causal_lm().backbone
        backbone.enable_lora(2)
        path = str(tmp_path / "a.lora.h5")
        backbone.save_lora_weights(path)
        before = open(path, "rb").read()
        set_random_adapters(backbone)

        def fail(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(h5py.File, "create_dataset", fail)
        with pytest.raises(OSError, match="disk full"):
            backbone.save_lora_weights(path)
        assert open(path, "rb").read() == before
        assert os.listdir(tmp_path) == ["a.lora.h5"]

    def test_lora_on_int8_base(self):
        causal_lm = make_causal_lm()
        inputs = token_inputs()
        labels = np.roll(inputs["token_ids"], -1, axis=1)
        causal_lm.backbone(inputs)  # Builds the weightless sublayers before quantizing.
        causal_lm.backbone.quantize("int8")
        causal_lm.enable_lora(4, target_names="all")
        config = tiny_config("gemma3", vocabulary_size=VOCABULARY_SIZE)
        trainable = sum(int(np.prod(v.shape)) for v in causal_lm.trainable_weights)
        assert trainable == lora.lora_parameter_count(config, 4, "all")
        causal_lm.compile(optimizer=keras.optimizers.Adam(5e-2))
        history = causal_lm.fit(
            inputs, labels, sample_weight=inputs["padding_mask"], epochs=8, verbose=0
        )
        losses = history.history["loss"]
        assert losses[-1] < 0.9 * losses[0], losses

    def test_gradient_checkpointing_gives_the_same_training(self):
        inputs = token_inputs()
        labels = np.roll(inputs["token_ids"], -1, axis=1)
        losses = []
        for checkpointing in (False, True):
            causal_lm = make_causal_lm()
            if checkpointing:
                causal_lm.enable_gradient_checkpointing()
            causal_lm.enable_lora(2)
            set_random_adapters(causal_lm.backbone)
            causal_lm.compile(
                optimizer=keras.optimizers.SGD(0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            losses.append(causal_lm.fit(inputs, labels, epochs=3, verbose=0).history["loss"])
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
        assert losses[0][-1] < losses[0][0]

    def test_gradient_checkpointing_rematerializes_with_the_same_gradients(self, monkeypatch):
        """One SGD step's LoRA update (its gradient, scaled) is the same with and
        without rematerialization; only training calls `keras.remat`, once a block."""
        remat_calls = []
        real_remat = keras.remat

        def counting_remat(function):
            remat_calls.append(function)
            return real_remat(function)

        monkeypatch.setattr(keras, "remat", counting_remat)
        inputs = token_inputs()
        labels = np.roll(inputs["token_ids"], -1, axis=1)
        updates = []
        for enable_count in (0, 2):  # Enabling twice is the same as once.
            causal_lm = make_causal_lm()
            causal_lm.enable_lora(2)
            set_random_adapters(causal_lm.backbone)
            for _ in range(enable_count):
                causal_lm.enable_gradient_checkpointing()
            blocks = causal_lm.backbone.transformer_layers
            assert [block.rematerialize for block in blocks] == [enable_count > 0] * len(blocks)
            before = adapter_values(causal_lm.backbone)
            remat_calls.clear()
            causal_lm.backbone(inputs)  # Inference: no rematerialization.
            assert remat_calls == []
            causal_lm.backbone(inputs, training=True)
            assert len(remat_calls) == (len(blocks) if enable_count else 0)
            causal_lm.compile(
                optimizer=keras.optimizers.SGD(1.0),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            causal_lm.fit(inputs, labels, batch_size=2, epochs=1, shuffle=False, verbose=0)
            after = adapter_values(causal_lm.backbone)
            updates.append([a - b for a, b in zip(after, before)])
            remat_calls.clear()
            prompt = {
                "token_ids": inputs["token_ids"][:1, :4],
                "padding_mask": np.ones((1, 4), "int32"),
            }
            causal_lm.generate(prompt, max_new_tokens=3, stop_token_ids=None)
            assert remat_calls == []  # The cached decode path never rematerializes.
        assert max(float(np.abs(update).max()) for update in updates[0]) > 1e-4
        for with_remat, without in zip(updates[1], updates[0]):
            np.testing.assert_allclose(with_remat, without, rtol=1e-5, atol=1e-7)


# Run with `python -c` under another backend: the same fine-tune, losses as JSON.
CROSS_BACKEND_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, {test_dir!r})
from lora_test import cross_backend_losses
print("LOSSES=" + json.dumps(cross_backend_losses()))
"""


def cross_backend_losses():
    """Fine-tunes a tiny model from NumPy-drawn weights; returns per-step losses."""
    causal_lm = make_causal_lm(family="gemma")
    causal_lm.enable_lora(2, target_names=("query", "value", "ffw_linear"))
    set_random_adapters(causal_lm.backbone, seed=3, scale=0.1)
    causal_lm.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    inputs = token_inputs(batch=4, length=8, seed=5)
    labels = np.roll(inputs["token_ids"], -1, axis=1)
    history = causal_lm.fit(inputs, labels, batch_size=4, epochs=6, shuffle=False, verbose=0)
    return [float(loss) for loss in history.history["loss"]]


def test_same_fine_tune_on_two_backends_ends_at_close_losses():
    here = keras.config.backend()
    other = "torch" if here != "torch" else "jax"
    script = CROSS_BACKEND_SCRIPT.format(test_dir=os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ, KERAS_BACKEND=other)
    environment["PYTHONPATH"] = os.pathsep.join([os.getcwd(), environment.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ours = cross_backend_losses()
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    theirs = json.loads(stdout.split("LOSSES=")[-1])
    assert ours[-1] < 0.95 * ours[0], ours
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, err_msg=f"{here} vs {other}")


class TestPeftExport(TestCase):
    @pytest.mark.parametrize("family", ["gemma2", "gemma3"])
    def test_peft_round_trip(self, family, tmp_path):
        torch = pytest.importorskip("torch")
        peft = pytest.importorskip("peft")
        pytest.importorskip("transformers")
        from keras_gemma.testing.transformers_checkpoints import make_transformers_model
        from keras_gemma.testing.transformers_checkpoints import save_transformers_checkpoint
        from keras_gemma.testing.transformers_checkpoints import transformers_logits

        config = tiny_config(family, vocabulary_size=VOCABULARY_SIZE)
        hf_model = make_transformers_model(config, seed=0)
        checkpoint = str(tmp_path / "hf")
        save_transformers_checkpoint(hf_model, checkpoint)
        backbone = GemmaBackbone.from_preset(checkpoint)
        causal_lm = GemmaCausalLM(backbone)
        backbone.enable_lora(2, alpha=6, target_names="all")
        set_random_adapters(backbone, scale=0.2)
        inputs = token_inputs()
        ours = causal_lm.predict(inputs, verbose=0)

        adapter = str(tmp_path / "peft")
        backbone.export_lora_to_peft(adapter)
        assert sorted(os.listdir(adapter)) == ["adapter_config.json", "adapter_model.safetensors"]
        peft_model = peft.PeftModel.from_pretrained(hf_model, adapter).eval()
        theirs = transformers_logits(peft_model, inputs["token_ids"], inputs["padding_mask"])
        real = inputs["padding_mask"].astype(bool)
        with torch.no_grad(), peft_model.disable_adapter():
            base = transformers_logits(peft_model, inputs["token_ids"], inputs["padding_mask"])
        # The adapter matters, and PEFT reproduces it.
        assert np.abs(theirs[real] - base[real]).max() > 1e-2
        np.testing.assert_allclose(ours[real], theirs[real], atol=2e-4, rtol=2e-4)
