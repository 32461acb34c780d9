"""Gemma's special pieces: `<pad>`, `<bos>`, `<eos>` and their ids in a vocabulary."""

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"


class VocabularySize(int):
    """An int that returns itself when called (`tokenizer.vocabulary_size()`)."""

    def __call__(self):
        return int(self)


def special_token_ids(processor):
    """`{piece: id}` of `<pad>`, `<bos>`, `<eos>`: from the trainer spec, else the pieces.

    A proto whose trainer spec leaves an id unset (-1) but holds the piece
    uses the piece's id; a vocabulary with neither cannot be packed for Gemma.
    """
    ids = {}
    for piece, spec_id in (
        (PAD_TOKEN, processor.pad_id()),
        (BOS_TOKEN, processor.bos_id()),
        (EOS_TOKEN, processor.eos_id()),
    ):
        if spec_id < 0:
            index = processor.piece_to_id(piece)
            is_piece = 0 <= index < processor.get_piece_size()
            spec_id = index if is_piece and processor.id_to_piece(index) == piece else -1
        ids[piece] = spec_id
    missing = [piece for piece, index in ids.items() if index < 0]
    if missing:
        raise ValueError(
            f"The SentencePiece vocabulary has no {', '.join(missing)} piece and its trainer "
            "spec sets no id for it. Gemma's tokenizer and preprocessor need `<pad>`, `<bos>` "
            "and `<eos>`: use a Gemma vocabulary, or train yours with "
            "`--pad_id/--bos_id/--eos_id` (or user-defined pieces with those names)."
        )
    return ids
