"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store, John gave
a drink to" -> " Mary". Corrupted: the second mention of the subject is a third name, so the prompt
no longer says who the indirect object is. Metric: logit of the IO minus logit of the subject."""

from __future__ import annotations

from dataclasses import dataclass

from .base import BuiltinTask, Example, Lexicon
from .words import NAMES, OBJECTS, PLACES

TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {object} to",
    "After {A} and {B} arrived at the {place}, {S} handed a {object} to",
    "Then, {A} and {B} had a long day at the {place}. {S} gave a {object} to",
    "While {A} and {B} were working at the {place}, {S} passed a {object} to",
    "{A} and {B} went to the {place}. Later, {S} brought a {object} to",
    "The {place} was quiet when {A} and {B} arrived. {S} offered a {object} to",
    "Yesterday {A} and {B} visited the {place}, and {S} showed a {object} to",
    "When {A} and {B} got to the {place}, {S} sent a {object} to",
)


@dataclass(frozen=True)
class IOI(BuiltinTask):
    def words(self) -> list[str]:
        return list(self.templates) + NAMES + PLACES + OBJECTS

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        rng = self._rng(seed)
        names = lex.keep(NAMES, 3, self.name, "names")
        places = lex.keep(PLACES, 1, self.name, "places")
        objects = lex.keep(OBJECTS, 1, self.name, "objects")
        out = []
        for i in range(n):
            template = self.templates[rng.randrange(len(self.templates))]
            io, s, third = rng.sample(names, 3)
            a, b = (io, s) if i % 2 == 0 else (s, io)  # alternate ABBA and BABA orders
            slots = dict(A=a, B=b, place=rng.choice(places), object=rng.choice(objects))
            out.append(Example(clean=template.format(S=s, **slots), corrupted=template.format(S=third, **slots),
                               answer=[" " + io], wrong=[" " + s]))
        return out


TASK = IOI(name="ioi", templates=TEMPLATES, metric="logit_diff", reference="Wang et al. 2022",
           description="indirect object identification: 'When Mary and John went to the store, John gave a drink "
                       "to' -> Mary; corrupted names a third person")
