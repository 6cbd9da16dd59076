"""Tokenizers built locally for tests: a word-level one over a word list (as the toy models use) and a
small byte-level BPE trained on the built-in tasks' own text (GPT-2's kind: leading-space tokens)."""

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from discovery.task_library import TASKS, sample_rows, vocabulary


def wordlevel(words=None, drop=()):
    words = [w for w in (vocabulary() if words is None else words) if w not in set(drop)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>"] + words)},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Split(Regex(r"\d\d"), "isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>")


@lru_cache(maxsize=None)
def bpe(vocab_size=1500):
    corpus = [r["clean"] + r["answer"][0] for name, spec in TASKS.items() if not spec.token_level
              for r in sample_rows(name, 300, seed=1)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
