"""The vocabulary of a Gemma GGUF file, rebuilt as a SentencePiece model proto.

Tokens that the HF tokenizer config marks "special" are stored as CONTROL by
llama.cpp's converter, and user-defined pieces have their "▁" written as
plain spaces; both are mapped back to SentencePiece's own conventions.
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
    from sentencepiece import sentencepiece_model_pb2

    model = fields.get("tokenizer.ggml.model")
    if model != "llama":
        raise ValueError(
            f"GGUF file {path!r} has tokenizer model {model!r}; Gemma files "
            "use 'llama' (SentencePiece)."
        )
    tokens = fields.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError(f"GGUF file {path!r} has no tokenizer.ggml.tokens.")
    scores = _token_array(path, fields, "tokenizer.ggml.scores", len(tokens), 0.0)
    types = _token_array(path, fields, "tokenizer.ggml.token_type", len(tokens), 1)

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


def _token_array(path, fields, name, length, default):
    values = fields.get(name)
    if values is None:
        return [default] * length
    if len(values) != length:
        raise ValueError(
            f"GGUF file {path!r}: {name!r} has {len(values)} entries for {length} tokens."
        )
    return np.asarray(values).tolist()
