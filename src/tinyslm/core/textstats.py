"""Properties of generated text that the report and the diagnostics both count.

Pure functions over one model output; no model, no tokenizer. Word-level, because a user reading a
prediction sees words, and the same loop must count the same way whatever tokenizer produced it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

REPEATS = 4  # "the same n-gram repeated 4+ times in a row" (the study's repetition-loop definition)

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class RepetitionLoop:
    ngram: str  # the repeated words, joined by single spaces
    n: int  # words in the n-gram
    repeats: int  # consecutive copies found (>= the threshold asked for)
    start_word: int  # index of the first copy's first word


def find_repetition_loop(text: str, min_repeats: int = REPEATS, max_n: int = 64) -> RepetitionLoop | None:
    """The shortest n-gram (1 <= n <= max_n words) that occurs ``min_repeats`` or more times back to back.

    For each n, position i starts a run of k copies exactly when words[j] == words[j + n] for the
    (k - 1) * n positions j from i on; so one pass per n over that equality array suffices
    (O(words x max_n)). Whitespace is normalised; punctuation stays part of a word, so "5 + 5 + 5 + 5"
    counts only if the same tokens come back.
    """
    words = _WORD.findall(text)
    need_copies = max(2, min_repeats)
    for n in range(1, min(max_n, len(words) // need_copies) + 1):
        run = 0
        for j in range(len(words) - n):
            run = run + 1 if words[j] == words[j + n] else 0
            if run >= (need_copies - 1) * n:
                # words[start .. j + n] is periodic with period n; extend it to count every copy.
                start, end = j + 1 - run, j
                while end + 1 + n < len(words) and words[end + 1] == words[end + 1 + n]:
                    end += 1
                copies = (end - start + 1 + n) // n
                return RepetitionLoop(" ".join(words[start : start + n]), n, copies, start)
    return None


def has_repetition_loop(text: str, min_repeats: int = REPEATS) -> bool:
    """Whether ``text`` repeats some n-gram ``min_repeats``+ times in a row (see find_repetition_loop)."""
    return find_repetition_loop(text, min_repeats) is not None


# ---------------------------------------------------------------------------------------------------
# Arithmetic the model wrote: "a op b = c", checked with exact rational arithmetic.

# A number as models write it: optional sign, "$", thousands commas, decimals, "%" ("$1,200", "-3.5", "20%").
_NUM = r"(?:-\s?)?(?:\$\s?)?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)%?"
# "x"/"X" is multiplication only between numbers ("3 x 4"), never a variable ("2x + 3").
_OP = r"[+\-−*/×÷]|(?<=[\d\s])[xX](?=[\s\d$.])"
_EQUATION = re.compile(rf"(?P<a>{_NUM})\s*(?P<op>{_OP})\s*(?P<b>{_NUM})\s*=\s*(?P<c>{_NUM})")
# What may not touch an equation: before it an operator (it is the tail of a longer chain "2 + 3 + 4 = 9"),
# after it more digits or another operator ("= 3/4", "= 6 + 1": the right side is an expression, not a number).
_CHAIN_BEFORE = re.compile(r"(?:[+\-−*/×÷^(]|\d\s*[xX])\s*$")
_GLUED_BEFORE = re.compile(r"[\w.,$]$")
_CONTINUES_AFTER = re.compile(r"\d|[.,]\d|\s*(?:[+\-−*/×÷^]|[xX]\s*\d)\s*[\d($.]")
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "X": "*", "/": "/", "÷": "/"}


@dataclass(frozen=True)
class Equation:
    """One binary equation ``a op b = c`` found in a text, with its verdict under exact arithmetic."""

    text: str  # as written, e.g. "$1,200 / 4 = $300"
    a: Fraction
    op: str  # normalised: + - * /
    b: Fraction
    c: Fraction
    verdict: str  # "true", "rounded" (c is the exact value rounded to c's decimals) or "false"

    @property
    def is_error(self) -> bool:
        return self.verdict == "false"


class _Number(NamedTuple):
    value: Fraction  # as written, "%" not applied
    percent: bool
    decimals: int


def _number(s: str) -> _Number:
    """Parse one number as written: "$1,200.50" -> 1200.5 with 2 decimals; "20%" -> 20, percent."""
    s = s.replace(" ", "")
    negative = s.startswith("-")
    s = s.lstrip("-").lstrip("$")
    percent = s.endswith("%")
    digits = s.rstrip("%").replace(",", "")
    value = Fraction(digits)  # Fraction("3.5") is exactly 7/2: no binary floating point anywhere
    return _Number(-value if negative else value, percent, len(digits.partition(".")[2]))


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None  # x / 0 has no value: whatever c says is false


def _verdict(a: _Number, op: str, b: _Number, c: _Number) -> str | None:
    """``true``, ``rounded`` or ``false``; None when the percent signs make the claim ambiguous.

    "%" is read two ways, and the equation holds if either reading does: as "/100" ("25% * 80 = 20") and as
    a unit ("0.25 * 100 = 25%"). "50 + 10% = 55" mixes a percentage into a sum of plain numbers, a shorthand
    for "50 increased by 10%"; it is neither true nor an arithmetic slip, so it is not judged (None).
    ``rounded``: c has decimals and lies within half a unit of its last digit from the exact value.
    """
    if op in "+-" and a.percent != b.percent:
        return None
    readings = []
    for scale in (Fraction(1, 100), Fraction(1)):
        x, y, z = (n.value * scale if n.percent else n.value for n in (a, b, c))
        readings.append((_apply(x, op, y), z))
    if any(exact == claimed for exact, claimed in readings):
        return "true"
    half_unit = Fraction(1, 2 * 10**c.decimals)
    if c.decimals and any(
        exact is not None and abs(exact - claimed) <= half_unit for exact, claimed in readings
    ):
        return "rounded"
    return "false"


def find_equations(text: str) -> list[Equation]:
    """Every ``a op b = c`` in ``text`` (op: + - * / × ÷ x), with its verdict.

    Numbers may carry a sign, ``$``, thousands commas, decimals and ``%``; GSM8K calculator annotations
    ``<<48/2=24>>`` are equations like any other. Only standalone binary equations count: the tail of a
    chain ("2 + 3 + 4 = 9" would otherwise yield "3 + 4 = 9") and equations whose right side goes on
    ("= 3/4", "= 6 + 1") are skipped, since a wrong verdict on them would blame the model for our parsing.
    ``c`` written with fewer decimals than the exact value ("10 / 3 = 3.33") is ``rounded``, not false;
    an integer ``c`` must be exact ("7 / 2 = 3" is false).
    """
    found = []
    for m in _EQUATION.finditer(text):
        before, after = text[: m.start()], text[m.end() :]
        if _GLUED_BEFORE.search(before) or _CHAIN_BEFORE.search(before) or _CONTINUES_AFTER.match(after):
            continue
        if m["a"].lstrip().startswith("-") and re.search(r"[\w)%]\s*$", before):
            continue  # "20 - 10 - 3": that minus is an operator, not the sign of a
        a, b, c = _number(m["a"]), _number(m["b"]), _number(m["c"])
        op = _OPS[m["op"]]
        verdict = _verdict(a, op, b, c)
        if verdict is not None:
            found.append(Equation(m[0].strip(), a.value, op, b.value, c.value, verdict))
    return found


def arithmetic_errors(text: str) -> list[Equation]:
    """The equations of ``text`` that are false under exact rational arithmetic (see find_equations)."""
    return [e for e in find_equations(text) if e.is_error]
