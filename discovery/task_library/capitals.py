"""Factual recall: "The capital of France is" -> " Paris". Corrupted: another country, whose capital
is the wrong answer. Metric: logit of the right capital minus the other country's capital."""

from __future__ import annotations

from dataclasses import dataclass

from .base import BuiltinTask, Example, Lexicon
from .words import CAPITALS

TEMPLATES = (
    "The capital of {country} is",
    "The capital city of {country} is",
    "The government of {country} is based in the city of",
)


@dataclass(frozen=True)
class Capitals(BuiltinTask):
    def words(self) -> list[str]:
        return list(self.templates) + [w for p in CAPITALS for w in p]

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        rng = self._rng(seed)
        pairs = lex.keep(CAPITALS, 2, self.name, "country/capital pairs")
        out = []
        for _ in range(n):
            template = self.templates[rng.randrange(len(self.templates))]
            (country, capital), (other, other_capital) = rng.sample(pairs, 2)
            out.append(Example(clean=template.format(country=country), corrupted=template.format(country=other),
                               answer=[" " + capital], wrong=[" " + other_capital]))
        return out


TASK = Capitals(name="capital-country", templates=TEMPLATES, metric="logit_diff", reference="Meng et al. 2022",
                description="'The capital of France is' -> Paris; corrupted names another country")
