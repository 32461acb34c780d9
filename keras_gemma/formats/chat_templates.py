"""Jinja chat templates for exports, rendering exactly `GemmaTokenizer.apply_chat_template`.

transformers (`tokenizer.apply_chat_template`, `transformers serve`), vLLM and
llama.cpp's converter read a checkpoint's chat template from
`tokenizer_config.json["chat_template"]`. An export without one cannot
serve chat requests there, so `export_to_transformers` writes the template of
the vocabulary's turn format:

- Gemma 1-3 (`<start_of_turn>` / `<end_of_turn>`): a leading system message
  becomes a prefix of the first user turn, followed by a blank line, as
  Hugging Face's Gemma 3 template does; "assistant" is written "model".
- Gemma 4 (`<|turn>` / `<turn|>`): the system message is its own turn.

Message text is trimmed (each text part of a list content on its own), roles
must alternate user/assistant starting with user, and a non-text part or a
bad role order raises, as ours does. The tests render conversations with
both and compare the strings and the token ids.
"""

# Shared by both formats: the text of a message, trimmed or not.
_MACROS = (
    "{%- macro message_text(message, strip) -%}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] | trim if strip else message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] != 'text' -%}"
    "{{- raise_exception('Only text message parts are supported.') -}}"
    "{%- endif -%}"
    "{{- part['text'] | trim if strip else part['text'] -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)

_ROLE_CHECK = (
    "{%- if message['role'] not in ['user', 'assistant', 'model']"
    " or (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/"
    "assistant/..., with at most one leading system message.') -}}"
    "{%- endif -%}"
)

_ROLE = "('model' if message['role'] == 'assistant' else message['role'])"

GEMMA_CHAT_TEMPLATE = (
    _MACROS + "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = message_text(messages[0], false) ~ '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    + _ROLE_CHECK
    + "{{- '<start_of_turn>' ~ "
    + _ROLE
    + " ~ '\\n'"
    " ~ (first_user_prefix if loop.first else '')"
    " ~ message_text(message, true) ~ '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

GEMMA4_CHAT_TEMPLATE = (
    _MACROS + "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|turn>system\\n' ~ message_text(messages[0], true) ~ '<turn|>\\n' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}" + _ROLE_CHECK + "{{- '<|turn>' ~ " + _ROLE + " ~ '\\n'"
    " ~ message_text(message, true) ~ '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}"
)

_TEMPLATES = {
    ("<start_of_turn>", "<end_of_turn>"): GEMMA_CHAT_TEMPLATE,
    ("<|turn>", "<turn|>"): GEMMA4_CHAT_TEMPLATE,
}


def chat_template(turn_tokens):
    """The template for a vocabulary whose turn markers are `turn_tokens` (start, end)."""
    return _TEMPLATES[tuple(turn_tokens)]
