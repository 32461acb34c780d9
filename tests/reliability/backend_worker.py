"""Run by consistency_test.py in a subprocess with another `KERAS_BACKEND`.

    KERAS_BACKEND=torch python backend_worker.py PRESET_DIR OUT_DIR

Loads the preset and writes its logits on `keras_gemma.testing.models.ragged_inputs()`,
then saves a second tiny model (weights from NumPy seed 7) as a preset with
its logits, all under OUT_DIR/<backend>/.
"""

import json
import os
import sys

import keras

from keras_gemma.models.gemma_causal_lm import GemmaCausalLM
from keras_gemma.testing.models import logits_of
from keras_gemma.testing.models import random_backbone

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
