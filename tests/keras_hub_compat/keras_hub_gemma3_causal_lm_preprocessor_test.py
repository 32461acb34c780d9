# keras-hub's keras_hub/src/models/gemma3/gemma3_causal_lm_preprocessor_test.py
# (Apache 2.0, The KerasHub Authors), imports renamed to keras_gemma. The
# vision tests (disabled in keras-hub, "until the vision release") are left out.
import os

import pytest
from keras_hub_test_case import TestCase

from keras_gemma import Gemma3CausalLMPreprocessor
from keras_gemma import Gemma3Tokenizer


class Gemma3CausalLMPreprocessorTest(TestCase):
    def setUp(self):
        self.tokenizer = Gemma3Tokenizer(
            proto=os.path.join(self.get_test_data_dir(), "gemma3_test_vocab.spm")
        )

        # === Text Preprocessor ===
        self.init_text_kwargs = {
            "tokenizer": self.tokenizer,
            "image_converter": None,
            "sequence_length": 8,
            "max_images_per_prompt": 0,
            "num_vision_tokens_per_image": 0,
        }
        self.text_preprocessor = Gemma3CausalLMPreprocessor(
            tokenizer=self.tokenizer,
            image_converter=None,
            sequence_length=100,
            max_images_per_prompt=0,
            num_vision_tokens_per_image=0,
        )

    def test_text_preprocessor_basics(self):
        input_data = {
            "prompts": ["the quick brown fox"],
            "responses": ["round"],
        }
        self.run_preprocessing_layer_test(
            cls=Gemma3CausalLMPreprocessor,
            init_kwargs=self.init_text_kwargs,
            input_data=input_data,
            expected_output=(
                {
                    "token_ids": [[1, 9, 14, 10, 12, 15, 2, 0]],
                    "padding_mask": [[1, 1, 1, 1, 1, 1, 1, 0]],
                },
                [[9, 14, 10, 12, 15, 2, 0, 0]],  # Labels shifted.
                [[0, 0, 0, 0, 1, 1, 0, 0]],  # Zero out unlabeled examples.
            ),
        )

    def test_text_no_start_end_token(self):
        input_data = {
            "prompts": ["the quick brown fox"] * 4,
            "responses": ["round"] * 4,
        }

        preprocessor = Gemma3CausalLMPreprocessor(
            **self.init_text_kwargs,
            add_start_token=False,
            add_end_token=False,
        )
        x, y, sw = preprocessor(input_data)
        self.assertAllEqual(x["token_ids"], [[9, 14, 10, 12, 15, 0, 0, 0]] * 4)
        self.assertAllEqual(x["padding_mask"], [[1, 1, 1, 1, 1, 0, 0, 0]] * 4)
        self.assertAllEqual(y, [[14, 10, 12, 15, 0, 0, 0, 0]] * 4)
        self.assertAllEqual(sw, [[0, 0, 0, 1, 0, 0, 0, 0]] * 4)

    def test_text_generate_preprocess(self):
        input_data = "the quick brown fox"
        preprocessor = Gemma3CausalLMPreprocessor(**self.init_text_kwargs)
        x = preprocessor.generate_preprocess(input_data)
        self.assertAllEqual(x["token_ids"], [1, 9, 14, 10, 12, 0, 0, 0])
        self.assertAllEqual(x["padding_mask"], [1, 1, 1, 1, 1, 0, 0, 0])

    def test_text_generate_postprocess(self):
        input_data = {
            "token_ids": [1, 9, 14, 10, 12, 0, 0, 0],
            "padding_mask": [1, 1, 1, 1, 1, 0, 0, 0],
        }
        preprocessor = Gemma3CausalLMPreprocessor(**self.init_text_kwargs)
        x = preprocessor.generate_postprocess(input_data)
        self.assertAllEqual(x, "the quick brown fox")

    @pytest.mark.kaggle_key_required
    @pytest.mark.extra_large
    def test_all_presets(self):
        for preset in Gemma3CausalLMPreprocessor.presets:
            self.run_preset_test(
                cls=Gemma3CausalLMPreprocessor,
                preset=preset,
                input_data=self.input_data,
            )
