"""Text in, text out: generation on top of a `GemmaCausalLM`-like object.

Modules, from the user-facing end down:

- `generate`: `generate()` and `score()` (text in, text out, argument checks).
- `chat_session`: `ChatSession`, a conversation whose KV cache survives turns.
- `beam_search`: beam search over the compiled decode steps.
- `batch`: `DecodeBatch`, rows of sequences decoding together (admit,
  run, release, grow): what `generate`, chat and a server share.
- `engine`: `CompiledGenerator`, the fixed set of compiled programs; the one
  module that branches on the Keras backend.
- `decode_loop`: `Rows` and the backend-neutral prefill and decode programs.
- `decoding`: the model fed tokens at per-row slots (`feed`, `next_logits`).
- `kv_cache`: `KVCache` / `RingKVCache`, one per layer, rows at their own slots.
- `settings`: `generate`'s sampling keywords and seeds.
- `prompts`: prompt ids, padding and budgets; `is_text` / `text_list`.
- `stopping`: stop-token resolution and the one stop-token truncation.
- `detokenizer`: `IncrementalDetokenizer`, text pieces for streaming.

generation/ works on the objects it is handed (`causal_lm.backbone`,
`causal_lm.preprocessor`, `causal_lm.generator`) and imports only `layers/`
and `samplers/`, never `models/` or `formats/`.
"""
