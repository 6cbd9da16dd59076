"""Docstring (Heimersheim & Janiak 2023): predict the next argument name in a Sphinx-style docstring,

    def load(self, file, size, mode, port):
        \"\"\"total number field

        :param file: new list
        :param size: old entry
        :param        -> " mode"

Corrupted: the arguments in the signature are renamed, so only the docstring's own names remain.
Metric: logit of the right argument minus the mean logit of the other arguments."""

from __future__ import annotations

from dataclasses import dataclass

from .base import BuiltinTask, Example, Lexicon
from .words import ARG_NAMES, FILLER, FUNCTION_NAMES

TEMPLATES = (
    'def {fn}(self, {a0}, {a1}, {a2}, {a3}):\n    """{d0} {d1} {d2}\n\n    :param {a0}: {d3} {d4}\n'
    '    :param {a1}: {d5} {d6}\n    :param',
    'def {fn}(self, {a0}, {a1}, {a2}, {a3}):\n    """{d0} {d1}\n\n    :param {a0}: {d3} {d4} {d5}\n'
    '    :param {a1}: {d6}\n    :param',
)


@dataclass(frozen=True)
class Docstring(BuiltinTask):
    def words(self) -> list[str]:
        return list(self.templates) + ARG_NAMES + FUNCTION_NAMES + FILLER

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        rng = self._rng(seed)
        args = lex.keep(ARG_NAMES, 8, self.name, "argument names")
        fns = lex.keep(FUNCTION_NAMES, 1, self.name, "function names")
        filler = lex.keep(FILLER, 1, self.name, "description words")
        out = []
        for _ in range(n):
            template = self.templates[rng.randrange(len(self.templates))]
            names = rng.sample(args, 8)
            real, renamed = names[:4], names[4:]
            desc = {f"d{i}": rng.choice(filler) for i in range(7)}
            fn = rng.choice(fns)
            # The docstring documents the real a0 and a1 in both prompts; only the signature changes.
            fill = lambda sig: template.format(  # noqa: E731
                fn=fn, **desc, **{f"a{i}": sig[i] for i in range(4)}).replace(
                f":param {sig[0]}:", f":param {real[0]}:").replace(f":param {sig[1]}:", f":param {real[1]}:")
            out.append(Example(clean=fill(real), corrupted=fill(renamed), answer=[" " + real[2]],
                               wrong=[" " + real[0], " " + real[1], " " + real[3]]))
        return out


TASK = Docstring(name="docstring", templates=TEMPLATES, metric="logit_diff", reference="Heimersheim & Janiak 2023",
                 description="predict the next argument name in a docstring; corrupted renames the signature's "
                             "arguments")
