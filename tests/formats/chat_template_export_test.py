"""The chat template an export writes renders, in transformers, what ours renders."""

import json

import pytest

from keras_gemma.formats.transformers_export import export_backbone
from keras_gemma.models.gemma_backbone import GemmaBackbone
from keras_gemma.models.gemma_tokenizer import GemmaTokenizer
from keras_gemma.testing.configs import tiny_config
from keras_gemma.testing.vocab import GEMMA4_TURN_TOKENS
from keras_gemma.testing.vocab import build_tiny_vocabulary

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [
        {"role": "system", "content": "You are terse. "},
        {"role": "user", "content": "  the capital of France?  "},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "and of Italy?"},
    ],
    [
        {
            "role": "user",
            "content": [{"type": "text", "text": "part one "}, {"type": "text", "text": " two"}],
        },
        {"role": "model", "content": "a reply\n"},
    ],
    [
        {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": "hi"},
    ],
]


@pytest.fixture(scope="module", params=["gemma3", "gemma4"])
def exported(request, tmp_path_factory):
    """(our tokenizer, transformers' tokenizer from an export of a tiny model with it)."""
    directory = tmp_path_factory.mktemp(f"chat_{request.param}")
    turn_tokens = GEMMA4_TURN_TOKENS if request.param == "gemma4" else None
    vocabulary = build_tiny_vocabulary(
        str(directory), **({"turn_tokens": turn_tokens} if turn_tokens else {})
    )
    tokenizer = GemmaTokenizer(proto=vocabulary)
    backbone = GemmaBackbone(**tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size()))
    export_backbone(backbone, str(directory / "export"), tokenizer=tokenizer)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory / "export"))
    return tokenizer, hf_tokenizer


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_transformers_renders_our_chat_format(exported, index, add_generation_prompt):
    tokenizer, hf_tokenizer = exported
    messages = CONVERSATIONS[index]
    ours = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    theirs = hf_tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert theirs == ours
    assert hf_tokenizer(theirs, add_special_tokens=False)["input_ids"] == tokenizer(ours)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "first"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": [{"type": "image", "url": "x.png"}]}],
        [{"role": "tool", "content": "x"}],
    ],
)
def test_both_refuse_the_same_conversations(exported, messages):
    tokenizer, hf_tokenizer = exported
    with pytest.raises(ValueError):
        tokenizer.apply_chat_template(messages, tokenize=False)
    with pytest.raises(Exception, match="roles must alternate|Only text message parts"):
        hf_tokenizer.apply_chat_template(messages, tokenize=False)


def test_the_template_is_in_tokenizer_config(exported, tmp_path):
    tokenizer, _ = exported
    backbone = GemmaBackbone(**tiny_config("gemma3", vocabulary_size=tokenizer.vocabulary_size()))
    export_backbone(backbone, str(tmp_path / "export"), tokenizer=tokenizer)
    with open(tmp_path / "export" / "tokenizer_config.json") as file:
        template = json.load(file)["chat_template"]
    assert tokenizer.turn_tokens[0] in template
