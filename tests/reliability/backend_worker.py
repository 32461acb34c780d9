"""Run by consistency_test.py in a subprocess with another `KERAS_BACKEND`.

    KERAS_BACKEND=torch python backend_worker.py PRESET_DIR OUT_DIR

Loads the preset and writes its logits on `conftest.fixed_inputs()`, then
saves a second tiny model (weights from NumPy seed 7) as a preset with its
logits, all under OUT_DIR/<backend>/.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from conftest import logits_of  # noqa: E402
from conftest import random_backbone  # noqa: E402

from keras_gemma.models.gemma_causal_lm import GemmaCausalLM  # noqa: E402

SAVED_SEED = 7


def main(preset, out):
    backend = keras.config.backend()
    directory = os.path.join(out, backend)
    os.makedirs(directory, exist_ok=True)
    loaded = GemmaCausalLM.from_preset(preset)
    saved = GemmaCausalLM(random_backbone(seed=SAVED_SEED))
    saved.save_to_preset(os.path.join(directory, "preset"))
    result = {
        "backend": backend,
        "loaded_logits": logits_of(loaded).tolist(),
        "saved_logits": logits_of(saved).tolist(),
    }
    with open(os.path.join(directory, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
