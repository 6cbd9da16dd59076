"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a year
above 32. Corrupted start year 1701. Metric: probability mass on the years above YY minus the mass
on the years at or below it."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import TaskError
from .base import BuiltinTask, Example, Lexicon
from .words import EVENTS

TEMPLATES = (
    "The {event} lasted from the year {century}{yy} to the year {century}",
    "The {event} started in the year {century}{yy} and ended in the year {century}",
)
CENTURY = "17"


@dataclass(frozen=True)
class GreaterThan(BuiltinTask):
    def words(self) -> list[str]:
        return list(self.templates) + EVENTS + [CENTURY] + [f"{y:02d}" for y in range(100)]

    def _years(self, lex: Lexicon) -> list[int]:
        """The two-digit years that are one token right after the century (as GPT-2 splits " 1732")."""
        if lex.tokenizer is None:
            return list(range(100))
        century = lex.encode(" " + CENTURY)
        ok = []
        for y in range(100):
            ids = lex.encode(f" {CENTURY}{y:02d}")
            if len(ids) == len(century) + 1 and ids[:len(century)] == century and not lex.bad_id(ids[-1]):
                ok.append(y)
        return ok

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        rng = self._rng(seed)
        events = lex.keep(EVENTS, 1, self.name, "event nouns")
        years = self._years(lex)
        if 1 not in years or not any(2 <= y <= 98 for y in years):
            raise TaskError(f"task '{self.name}': this tokenizer does not split years as '{CENTURY}' + two digits "
                            f"(e.g. '{CENTURY}01'); this task cannot be built for this model")
        starts = [y for y in years if 2 <= y <= 98]
        out = []
        for _ in range(n):
            template = self.templates[rng.randrange(len(self.templates))]
            yy, event = rng.choice(starts), rng.choice(events)
            fill = lambda y: template.format(event=event, century=CENTURY, yy=f"{y:02d}")  # noqa: E731
            out.append(Example(clean=fill(yy), corrupted=fill(1),
                               answer=[f"{y:02d}" for y in years if y > yy],
                               wrong=[f"{y:02d}" for y in years if y <= yy]))
        return out


TASK = GreaterThan(name="greater-than", templates=TEMPLATES, metric="prob_diff", reference="Hanna et al. 2023",
                   description="'The war lasted from the year 1732 to the year 17' -> a year above 32; corrupted "
                               "start year 1701")
