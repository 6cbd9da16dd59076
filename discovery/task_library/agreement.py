"""Subject-verb agreement: "The author near the doctors" -> " is" (not " are"). Corrupted: the
subject's number flipped ("The authors near the doctors"). The attractor noun's number is random.
Metric: logit of the agreeing verb minus the other form."""

from __future__ import annotations

from dataclasses import dataclass

from .base import BuiltinTask, Example, Lexicon
from .words import NOUN_PAIRS, PREPOSITIONS, VERB_PAIRS

TEMPLATES = ("The {subject} {prep} the {attractor}",)


@dataclass(frozen=True)
class Agreement(BuiltinTask):
    def words(self) -> list[str]:
        return (list(self.templates) + [w for p in NOUN_PAIRS for w in p] + [w for p in VERB_PAIRS for w in p]
                + PREPOSITIONS)

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        rng = self._rng(seed)
        nouns = lex.keep(NOUN_PAIRS, 2, self.name, "noun pairs")
        verbs = lex.keep(VERB_PAIRS, 1, self.name, "verb pairs")
        preps = lex.keep(PREPOSITIONS, 1, self.name, "prepositions")
        out = []
        for i in range(n):
            subject, attractor = rng.sample(nouns, 2)
            number = i % 2  # 0 singular, 1 plural subject in the clean prompt, alternating
            verb, prep, attr = rng.choice(verbs), rng.choice(preps), attractor[rng.randrange(2)]
            fill = lambda s: self.templates[0].format(subject=s, prep=prep, attractor=attr)  # noqa: E731
            out.append(Example(clean=fill(subject[number]), corrupted=fill(subject[1 - number]),
                               answer=[" " + verb[number]], wrong=[" " + verb[1 - number]]))
        return out


TASK = Agreement(name="subject-verb-agreement", templates=TEMPLATES, metric="logit_diff",
                 reference="Linzen et al. 2016; Finlayson et al. 2021",
                 description="'The author near the doctors' -> is, not are; corrupted flips the subject's number")
