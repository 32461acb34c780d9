"""The vocabulary of a Gemma GGUF file, rebuilt as a SentencePiece model proto.

Tokens that the HF tokenizer config marks "special" are stored as CONTROL by
llama.cpp's converter, and user-defined pieces have their "▁" written as
plain spaces; both are mapped back to SentencePiece's own conventions.

Gemma 1-3 files (`tokenizer.ggml.model` "llama") keep SentencePiece's piece
scores. Gemma 4 files ("gemma4") are written from HF's `tokenizer.json` by
`LlamaHfVocab` (`gguf-py/gguf/vocab.py`): every score is -1000 and the BPE
merges are stored instead (`tokenizer.ggml.merges`, "left right" by rank).
The same BPE runs in SentencePiece with each piece scored minus the rank of
the first merge that makes it: SentencePiece merges the adjacent pair whose
union scores highest, HF the pair of lowest rank, and HF's Gemma merges hold
every split of a piece into two pieces (`SentencePieceExtractor`).
"""

import numpy as np

# `tokenizer.ggml.token_type` values (gguf.TokenType). SentencePiece's
# `ModelProto.SentencePiece.Type` uses the same numbers.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _sentencepiece_type(gguf_type, token_id, special_ids, unknown_id):
    """Maps a llama.cpp token type back to Gemma's SentencePiece piece type.

    llama.cpp's converter relabels every token that the HF tokenizer config
    calls "special" (`<mask>`, `<unusedN>`, `<start_of_turn>`, ...) as CONTROL,
    and `<unk>` with them. In Gemma's own SentencePiece model only `<pad>`,
    `<eos>`, `<bos>` are control symbols and `<unk>` is UNKNOWN; the others are
    user-defined symbols, which SentencePiece matches whole in raw text, so
    that "<start_of_turn>" in a prompt encodes to one id.
    """
    if token_id == unknown_id:
        return _UNKNOWN
    if token_id in special_ids:
        return _CONTROL
    if gguf_type in (_CONTROL, _UNKNOWN):
        return _USER_DEFINED
    if gguf_type in (_NORMAL, _USER_DEFINED, _UNUSED, _BYTE):
        return gguf_type
    return _NORMAL


def build_tokenizer_proto(path, fields):
    """Serialized SentencePiece `ModelProto` of a Gemma GGUF file's vocabulary."""
    from sentencepiece import sentencepiece_model_pb2

    model = fields.get("tokenizer.ggml.model")
    if model not in ("llama", "gemma4"):
        raise ValueError(
            f"GGUF file {path!r} has tokenizer model {model!r}; Gemma files "
            "use 'llama' (SentencePiece, Gemma 1-3) or 'gemma4' (BPE merges, Gemma 4)."
        )
    tokens = fields.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"GGUF file {path!r} has no tokenizer.ggml.tokens.")
    scores = _token_array(path, fields, "tokenizer.ggml.scores", len(tokens), 0.0)
    types = _token_array(path, fields, "tokenizer.ggml.token_type", len(tokens), 1)
    merged = None
    if model == "gemma4":
        merged = _merge_ranks(path, fields)
        # Pieces no merge makes score below every merge (they only ever start as characters).
        scores = [-float(merged.get(token, len(merged))) for token in tokens]

    def special_id(key, default):
        value = fields.get(f"tokenizer.ggml.{key}", default)
        return int(value)

    unknown_id = special_id("unknown_token_id", 3)
    bos_id = special_id("bos_token_id", 2)
    eos_id = special_id("eos_token_id", 1)
    pad_id = special_id("padding_token_id", 0)
    special_ids = {bos_id, eos_id, pad_id}

    proto = sentencepiece_model_pb2.ModelProto()
    piece_type = sentencepiece_model_pb2.ModelProto.SentencePiece
    for token_id, (token, score, gguf_type) in enumerate(zip(tokens, scores, types)):
        kind = _sentencepiece_type(int(gguf_type), token_id, special_ids, unknown_id)
        if merged is not None and kind == _NORMAL and len(token) > 1 and token not in merged:
            # A piece of several characters that no merge makes: `LlamaHfVocab` writes HF's
            # added tokens inside the base vocabulary as NORMAL ("<table>", "<unused0>", ...,
            # user-defined or control in Gemma 3's SentencePiece model); HF matches them whole.
            kind = _USER_DEFINED
        # SentencePiece pieces never hold a raw space: llama.cpp wrote the
        # user-defined whitespace pieces ("▁▁", ...) with plain spaces.
        piece = proto.pieces.add()
        piece.piece = token.replace(" ", "\u2581")
        piece.score = float(score) if kind == _NORMAL else 0.0
        if kind != piece_type.NORMAL:
            piece.type = kind

    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.max_sentencepiece_length = 16
    trainer.unk_id, trainer.bos_id = unknown_id, bos_id
    trainer.eos_id, trainer.pad_id = eos_id, pad_id
    trainer.unk_piece, trainer.bos_piece = tokens[unknown_id], tokens[bos_id]
    trainer.eos_piece, trainer.pad_piece = tokens[eos_id], tokens[pad_id]

    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", False))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return proto.SerializeToString()


def _merge_ranks(path, fields):
    """`{merged piece: rank of the first merge that makes it}` from `tokenizer.ggml.merges`."""
    merges = fields.get("tokenizer.ggml.merges")
    if not merges:
        raise ValueError(
            f"GGUF file {path!r} has tokenizer model 'gemma4' but no 'tokenizer.ggml.merges': "
            "the BPE vocabulary is incomplete. Convert the checkpoint again with llama.cpp's "
            "`convert_hf_to_gguf.py`."
        )
    ranks = {}
    for rank, merge in enumerate(merges):
        # llama.cpp splits at the first space after the first character (`llama-vocab.cpp`).
        split = merge.find(" ", 1)
        if split < 0:
            raise ValueError(
                f"GGUF file {path!r}: tokenizer merge {rank} ({merge!r}) is not two pieces "
                "separated by a space."
            )
        ranks.setdefault(merge[:split] + merge[split + 1 :], rank)
    return ranks


def _token_array(path, fields, name, length, default):
    values = fields.get(name)
    if values is None:
        return [default] * length
    if len(values) != length:
        raise ValueError(
            f"GGUF file {path!r}: {name!r} has {len(values)} entries for {length} tokens."
        )
    return np.asarray(values).tolist()
