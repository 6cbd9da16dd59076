"""A word-level tokenizer for the toy models, built locally with the `tokenizers` library.

Every word piece is one token. Text is split like `discovery.task_library.base.pieces`: runs of word
characters or of punctuation (`Whitespace()`, i.e. `\\w+|[^\\w\\s]+`), then every pair of digits on its
own ("1732" -> "17" "32"). Special tokens come first: `<pad>` 0, `<unk>` 1, `<bos>` 2; `<bos>` is also
the end-of-text token and is put before every encoded text (like Llama's tokenizer), so each prompt
starts with a token the model can attend to when nothing else fits. Decoding joins tokens with spaces.
"""

from __future__ import annotations

SPECIAL = ("<pad>", "<unk>", "<bos>")
PAD, UNK, BOS = SPECIAL


def build_tokenizer(words: list[str]):
    """A `PreTrainedTokenizerFast` over `SPECIAL + words` (ids in that order; duplicates dropped)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in (*SPECIAL, *words):
        if not isinstance(w, str) or not w or any(c.isspace() for c in w):
            raise ValueError(f"vocabulary entry {w!r} is not a non-empty word without spaces")
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    # no decoder: `tokenizers` joins decoded tokens with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=BOS,
        clean_up_tokenization_spaces=False, model_max_length=1_000_000)
