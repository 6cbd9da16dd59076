"""Induction: a random token sequence S followed by its own beginning, S + S[:k] -> S[k]. Corrupted:
the first copy resampled, S' + S[:k], which points to S'[k] instead. Metric: logit of S[k] minus
logit of S'[k]. Tokens are drawn from the model's whole vocabulary, special tokens excluded."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import TaskError
from .base import BuiltinTask, Example, Lexicon

SEGMENT = 10  # tokens in S; the repeat covers 3..SEGMENT-1 of them


@dataclass(frozen=True)
class Induction(BuiltinTask):
    def words(self) -> list[str]:
        return []

    def _pool(self, lex: Lexicon) -> tuple[list[int], list[int]]:
        """Token ids to draw from, and the special prefix (e.g. BOS) the tokenizer puts before text."""
        tok = lex.tokenizer
        if tok is None:
            if lex.vocab_size is None:
                raise TaskError(f"task '{self.name}' draws random tokens from a model's vocabulary; give a model "
                                f"(--model)")
            return list(range(lex.vocab_size)), []
        size = len(tok) if lex.vocab_size is None else min(len(tok), lex.vocab_size)
        special = set(tok.all_special_ids)
        with_special, plain = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
        prefix = list(with_special[:len(with_special) - len(plain)]) if with_special[-len(plain):] == plain else []
        return [i for i in range(size) if i not in special], prefix

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        rng = self._rng(seed)
        pool, prefix = self._pool(lex)
        if len(pool) < 2 * SEGMENT:
            raise TaskError(f"task '{self.name}': the vocabulary has {len(pool)} ordinary tokens, "
                            f"{2 * SEGMENT} are needed")
        show = (lambda ids: " ".join(lex.tokenizer.convert_ids_to_tokens(ids))) if lex.tokenizer else str  # noqa: E731
        out = []
        for _ in range(n):
            s = rng.sample(pool, SEGMENT)  # distinct tokens: the next token after each is unambiguous
            k = rng.randrange(3, SEGMENT)
            s2 = rng.sample([t for t in pool if t not in s], SEGMENT)  # S' shares no token with S
            clean, corrupted = prefix + s + s[:k], prefix + s2 + s[:k]
            out.append(Example(clean=show(clean), corrupted=show(corrupted), answer=[show([s[k]])],
                               wrong=[show([s2[k]])], ids=(clean, corrupted, [s[k]], [s2[k]])))
        return out


TASK = Induction(name="induction", token_level=True, metric="logit_diff", reference="Olsson et al. 2022",
                 description="repeated random tokens S + S[:k] -> S[k]; corrupted resamples the first copy")
