# keras-hub's keras_hub/src/models/gemma3/gemma3_backbone_test.py (Apache 2.0,
# The KerasHub Authors), imports renamed to keras_gemma. Text only: the
# vision encoder (`Gemma3Vit`) is not part of keras_gemma, so setUp builds the
# text kwargs only, and the vision tests (disabled in keras-hub too,
# "until the vision release") are left out.
import numpy as np
import pytest
from keras import ops
from keras_hub_test_case import TestCase

from keras_gemma import Gemma3Backbone


class Gemma3BackboneTest(TestCase):
    def setUp(self):
        self.batch_size = 2
        self.vocabulary_size = 256
        self.text_sequence_length = 64
        self.image_size = 16

        self.text_init_kwargs = {
            # vocabulary
            "vocabulary_size": self.vocabulary_size,
            # image
            "image_size": self.image_size,
            # model
            "num_layers": 6,
            "num_query_heads": 2,
            "num_key_value_heads": 1,
            "hidden_dim": 8,
            "intermediate_dim": 16,
            "head_dim": 4,
            # other model args
            "query_head_dim_normalize": True,
            "use_query_key_norm": True,
            "use_post_ffw_norm": True,
            "use_post_attention_norm": True,
            "final_logit_soft_cap": None,
            "attention_logit_soft_cap": None,
            "use_sliding_window_attention": True,
            "sliding_window_size": 1024,
        }
        dummy_text_token_ids = np.random.rand(self.batch_size, self.text_sequence_length)
        self.text_backbone_input_data = {
            "token_ids": dummy_text_token_ids,
            "padding_mask": np.ones(
                (self.batch_size, self.text_sequence_length),
                dtype="int32",
            ),
        }

    def test_text_only_backbone_basics(self):
        self.run_backbone_test(
            cls=Gemma3Backbone,
            init_kwargs=self.text_init_kwargs,
            input_data=self.text_backbone_input_data,
            expected_output_shape=(
                self.batch_size,
                self.text_sequence_length,
                8,
            ),
            variable_length_data=[self.text_backbone_input_data],
            run_quantization_check=False,
        )

    def test_text_only_backbone_interleaved_attention(self):
        backbone = Gemma3Backbone(**self.text_init_kwargs)
        for i, layer in enumerate(backbone.transformer_layers):
            expected_sliding = i % 6 < 5
            self.assertEqual(
                layer.use_sliding_window_attention,
                expected_sliding,
                f"Layer {i} mismatch: expected sliding={expected_sliding}, but "
                "got {layer.use_sliding_window_attention}",
            )

    @pytest.mark.large
    def test_saved_text_model(self):
        self.run_model_saving_test(
            cls=Gemma3Backbone,
            init_kwargs=self.text_init_kwargs,
            input_data=self.text_backbone_input_data,
        )

    @pytest.mark.kaggle_key_required
    @pytest.mark.extra_large
    def test_smallest_preset(self):
        self.run_preset_test(
            cls=Gemma3Backbone,
            preset="gemma3_instruct_1b",
            input_data={
                "token_ids": ops.array([[651, 4320, 8426, 25341, 235265]]),
                "padding_mask": ops.ones((1, 5), dtype="int32"),
            },
            expected_output_shape=(1, 5, 2048),
            expected_partial_output=ops.array([1.073359, 0.262374, 0.170238, 0.605402, 2.336161]),
        )

    @pytest.mark.kaggle_key_required
    @pytest.mark.extra_large
    def test_all_presets(self):
        for preset in Gemma3Backbone.presets:
            self.run_preset_test(
                cls=Gemma3Backbone,
                preset=preset,
                input_data=self.input_data,
            )

    def test_text_architecture_characteristics(self):
        model = Gemma3Backbone(**self.text_init_kwargs)
        self.assertEqual(model.count_params(), 5752)
        self.assertEqual(len(model.layers), 10)
