"""Text pieces of a growing token list, for streaming (`generate` and chat)."""


class IncrementalDetokenizer:
    """Text pieces of a growing token list, for streaming (generate and chat).

    A piece that would end inside a multi-byte character (the detokenized
    text ends with U+FFFD) is held back until the character completes;
    `flush()` returns whatever never completed.

    Args:
        tokenizer: a `GemmaTokenizer`.
        prefix: token ids whose text counts as already emitted (`emitted`).
    """

    def __init__(self, tokenizer, prefix=()):
        self.tokenizer = tokenizer
        self.tokens = [int(t) for t in prefix]
        self.emitted = tokenizer.detokenize(self.tokens) if self.tokens else ""

    def add(self, token):
        """Appends `token`; returns the new text ("" while held back)."""
        self.tokens.append(int(token))
        text = self.tokenizer.detokenize(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        if text.startswith(self.emitted):
            piece = text[len(self.emitted) :]
        else:
            piece = text[len(_common_prefix(text, self.emitted)) :]
        self.emitted = text
        return piece

    def flush(self):
        """The held-back end, if any."""
        text = self.tokenizer.detokenize(self.tokens) if self.tokens else ""
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            piece, self.emitted = text[len(self.emitted) :], text
            return piece
        return ""


def _common_prefix(a, b):
    index = 0
    while index < min(len(a), len(b)) and a[index] == b[index]:
        index += 1
    return a[:index]
