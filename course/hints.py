"""Hints in levels, in the learner's language.

A check names two hints (each a string, or ``{"en": ..., "es": ...}``):

* ``hint`` (level 1) points at *what* to look at — a shape, a bucket, a rule of thumb — and never
  at the code. It is printed with the check's own diagnosis (which value, by what factor) when a
  check fails on a learner's answer; tests/course/test_hints.py asserts that no level-1 hint
  contains a line of the solution.
* ``formula`` (level 2) gives the formula or the recipe. It is printed only after the same check
  has failed twice in this kernel, or when the learner asks: ``checks.hint("ex3-merge")``.

Neither is printed on an exercise that has not been attempted (the stub still raises): the
learner is told it is not done yet, nothing more.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Union

Text = Union[str, Mapping[str, str]]
LANGUAGES = ("en", "es")

_state = {"language": "en"}

# the fixed words of every check line, per language
FRAMES: dict[str, dict[str, str]] = {
    "en": {
        "hint": "Hint: {text}",
        "more": "(stuck? checks.hint({name!r}) shows the formula)",
        "formula": "Formula: {text}",
        "depends": "this fails because {what} ({dep}) is wrong; fix that first",
        "depends_not_run": "this fails because {what} ({dep}) has not run yet; run that check first",
        "not_done": "not done yet: {place} still raises NotImplementedError; write your code in its exercise "
                    "cell, delete the raise line, and run that cell again",
        "not_defined": "not done yet: `{name}` is not defined; fill in the exercise cell above and run it "
                       "before this check",
        "not_done_place": "the exercise cell above",
        "no_hints": "{name} has no hint.",
        "not_run": "{name} has not run in this kernel yet; run its check cell first.",
        "show": "Hints for {name}:",
    },
    "es": {
        "hint": "Pista: {text}",
        "more": "(¿atascado? checks.hint({name!r}) muestra la fórmula)",
        "formula": "Fórmula: {text}",
        "depends": "esto falla porque {what} ({dep}) está mal; corrige eso primero",
        "depends_not_run": "esto falla porque {what} ({dep}) aún no se ha ejecutado; ejecuta antes esa comprobación",
        "not_done": "aún sin hacer: {place} sigue lanzando NotImplementedError; escribe tu código en su celda "
                    "de ejercicio, borra la línea del raise y vuelve a ejecutar esa celda",
        "not_defined": "aún sin hacer: `{name}` no está definido; completa la celda de ejercicio de arriba y "
                       "ejecútala antes de esta comprobación",
        "not_done_place": "la celda de ejercicio de arriba",
        "no_hints": "{name} no tiene pista.",
        "not_run": "{name} aún no se ha ejecutado en este kernel; ejecuta primero su celda de comprobación.",
        "show": "Pistas para {name}:",
    },
}


def set_language(language: str | None) -> None:
    """The language of hints and check frames: "en" or "es" (anything else: English)."""
    _state["language"] = language if language in LANGUAGES else "en"


def language() -> str:
    return _state["language"]


def text(t: Text | None, lang: str | None = None) -> str | None:
    """A hint in ``lang`` (default: the learner's); English when that language is missing."""
    if t is None or isinstance(t, str):
        return t
    lang = lang or language()
    return t.get(lang) or t.get("en") or next(iter(t.values()), None)


def frame(key: str, lang: str | None = None, **fields: object) -> str:
    return FRAMES[lang or language()][key].format(**fields)


@dataclass
class Hints:
    hint: Text | None = None
    formula: Text | None = None


_REGISTRY: dict[str, Hints] = {}
_FAILS: Counter[str] = Counter()


def register(name: str, hint: Text | None, formula: Text | None) -> None:
    """Remember a check's hints, so that ``show(name)`` can print them later in the kernel."""
    _REGISTRY[name] = Hints(hint, formula)


def reset() -> None:
    _REGISTRY.clear()
    _FAILS.clear()


def on_wrong(name: str, message: str) -> tuple[str, int]:
    """The message of a check that failed on an attempted answer, and the hint level it shows:
    level 1 on the first failure, level 2 (the formula) from the second failure in this kernel."""
    _FAILS[name] += 1
    h = _REGISTRY.get(name, Hints())
    hint, formula = text(h.hint), text(h.formula)
    second = formula is not None and _FAILS[name] >= 2
    extras = [frame("hint", text=hint)] if hint else []
    extras += [frame("formula", text=formula) if second else frame("more", name=name)] if formula else []
    if not extras:
        return message, 0
    return " ".join([message.rstrip(".") + ".", *extras]), 2 if second else 1 if hint else 0


def show(name: str) -> int:
    """Print every hint of check ``name`` (``checks.hint``); return the level shown (0: none)."""
    if name not in _REGISTRY:
        print(frame("not_run", name=name))
        return 0
    h = _REGISTRY[name]
    lines = [frame("hint", text=text(h.hint))] if text(h.hint) else []
    lines += [frame("formula", text=text(h.formula))] if text(h.formula) else []
    if not lines:
        print(frame("no_hints", name=name))
        return 0
    print("\n".join([frame("show", name=name), *("  " + line for line in lines)]))
    return 2 if text(h.formula) else 1
