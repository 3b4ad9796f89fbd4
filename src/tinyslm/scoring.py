"""Answer extraction and answer checking: the part of an evaluation users either trust or don't.

Two answer styles exist (:data:`ANSWER_STYLES`):

* ``"number"`` (GSM8K, SVAMP, ASDiv, MAWPS, Orca-Math): the answer is a number, compared *as a number*
  with :class:`fractions.Fraction`, so ``"11"``, ``"11.0"``, ``"$11.00"``, ``"11 apples"`` and ``"11."``
  all equal the SVAMP gold ``"11.0"``. String comparison (what lm-evaluation-harness does after a few
  regex substitutions) marks ``#### 11.0`` wrong against ``11``; that is the bug this module must not have.
* ``"math"`` (MATH, MATH-500): the answer is LaTeX. Cheap checks first (normalised string, then number),
  then symbolic equivalence through math-verify, under a hard time bound.

Reading order: extraction (where is the answer in a model output?), numbers, the two equivalence
checks, the time-bounded symbolic check, and the gold-answer helpers used when loading datasets.

Nothing here calls ``eval``/``exec``/``sympify`` on model text: numbers are parsed by a regular grammar,
and LaTeX goes only through math-verify's parser. Every public function is pure (apart from a cache of
parsed gold answers and a lazily started helper process for calls made off the main thread).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from tinyslm.errors import UserError

logger = logging.getLogger(__name__)

ANSWER_STYLES = ("number", "math")  # number: GSM8K/SVAMP/ASDiv/MAWPS/Orca-Math; math: MATH/MATH-500

# Relative tolerance, used ONLY when one side is a rational with no finite decimal expansion (1/3, 14/3)
# and the other side is written as a decimal (0.3333333): then no decimal can be exactly equal, so
# "equal up to the digits written" is the best possible test. It is the tolerance of Qwen2.5-Math's
# grader (math.isclose(rel_tol=1e-4)); unlike that grader we never apply it to two exact values, so
# 10000 vs 10001 or 18 vs 18.001 stay wrong.
REL_TOL = Fraction(1, 10_000)

# Size guards. No real answer comes near these; pathological outputs (a 10,000-digit number, a 1 MB
# string, 5,000 nested braces) are rejected by them in microseconds instead of being handed to a parser.
_MAX_NUMBER_CHARS = 200  # longest string normalize_number will look at
_MAX_DIGITS = 80  # most digits in one number
_MAX_TEXT_ANSWER_CHARS = 200  # longest non-numeric answer compared as text
_MAX_MATH_CHARS = 1000  # longest answer handed to the symbolic checker
_MAX_BRACE_DEPTH = 40  # deepest {...}, (...), [...] nesting handed to the symbolic checker
_MAX_BOXED_CHARS = 5000  # longest \boxed{...} content scanned for its closing brace
_MAX_BOXED_TRIES = 16  # how many \boxed occurrences (from the end) are tried
_MAX_SPAN_CHARS = 1000  # longest answer span taken after a marker
_MAX_MARKER_TRIES = 50  # how many "####" / "The answer is" occurrences are tried
_WORKER_GRACE_S = 2.0  # extra wall time the helper process gets before it is killed


@dataclass(frozen=True)
class Extraction:
    """Where a model's answer was found.

    ``marked`` is True when the answer came from an explicit marker (``#### X``, the last ``\\boxed{X}``,
    "The answer is X"); a run that is right without a marker is right by luck of the fallback, which is
    why :func:`score_output` reports ``strict_correct`` separately.
    """

    text: str | None  # the extracted answer string (None when nothing found)
    marked: bool


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------

# Small models keep generating after their answer: a new "Question:" block of a few-shot prompt, a
# chat turn, an end-of-turn token printed as text. Everything from there on is run-on, not an answer.
# Numbered headers ("Question 5:") are not run-on: MATH solutions use them for their own sub-questions.
_END_OF_TURN = re.compile(r"<\|(?:im_end|endoftext|eot_id|end)\|>|</s>")
_RUN_ON_HEADER = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?(?:\*\*)?(?:Question|Problem|Q|Human|User)[ \t]*(?:\*\*)?[ \t]*:",
    re.MULTILINE,
)
_DIGIT = re.compile(r"\d")

_HASH_MARKER = re.compile(r"####")
# "The answer is X", "the final answer is X", "Final Answer: The final answer is X" (Minerva format),
# "Final answer: X". Case-insensitive.
_ANSWER_IS = re.compile(
    r"\bfinal\s+answer\s*:\s*(?:\**\s*)?(?:the\s+final\s+answer\s+is\b\s*:?)?"
    r"|\b(?:the\s+)?(?:final\s+|correct\s+)?answer\s+is\b\s*:?",
    re.IGNORECASE,
)

# Thousands separators. Digits are grouped by a comma (``1,000``), by LaTeX's ``{,}`` or ``,\!``
# (MATH writes ``10,\!000``), or by a space: a plain, no-break or thin space, or LaTeX's ``\,``,
# ``\ ``, ``~``, ``\!``. A grouped number is a leading group of 1-3 digits that does not start with 0,
# then groups of EXACTLY three digits with one and the same separator, not followed by a further digit:
# ``1 000`` and ``10\,000`` are one number each, ``3 1000``, ``1 2`` and ``0,111`` are not. A comma
# followed by a space is a list (``1, 2, 3``; ``32, 349``), never a separator. After a space-like
# separator the last group must not run into a hyphenated word: in "2 100-page books" the 100 belongs to
# "page", so that is 2, then 100.
_COMMA_SEPS = (",", r"\{,\}", r",\\!")
_SPACE_SEPS = ("[ \u00a0\u2009\u202f]", r"\\,", r"\\!", r"\\ ", "~")
_GROUPED = r"[1-9]\d{0,2}(?:" + "|".join(
    [rf"(?:{sep}\d{{3}})+(?!,?\d)" for sep in _COMMA_SEPS]
    + [rf"(?:{sep}\d{{3}})+(?!\d|-[A-Za-z])" for sep in _SPACE_SEPS]
) + ")"
# An integer part: a grouped number, or plain digits not followed by ",digit" (so "1,2" and "0,111" are
# never read as their first part alone; :data:`_NUMBER_TOKEN` takes such runs whole, as non-numbers).
_INT = rf"(?:{_GROUPED}|\d+(?!,?\d))"
_NUM = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
_NOT_DIGIT = re.compile(r"[^\d.]")  # deleting it from a grouped number leaves its digits
_THOUSANDS_COMMA = re.compile(r",\s*\\!\s*")  # MATH's 10,\!000, also written 11,\! 111

# One number as written in running text: ratio/clock time, or an optionally signed, optionally
# currency-prefixed integer/decimal/fraction/percentage, or a LaTeX \frac with digit arguments, or a
# run of digits and commas that is no grouped number ("0,111", "1,2,3": taken whole so that neither
# "111" nor "3" is read out of it; it is then no number at all).
# The look-behind keeps "16-3" from yielding "-3" and "v2"/"1.2.3" from yielding numbers mid-token.
_NUMBER_TOKEN = re.compile(
    r"(?<![\w.])(?:"
    r"\d{1,2}(?::\d{2}){1,2}\s?[ap]\.?m\.?(?![a-z])"  # 3:30 p.m.
    r"|\d+(?::\d+)+(?!\d)"  # 2:3, 14:55
    rf"|[-−]?(?:\\?\$)?[-−]?(?:\\[dt]?frac\{{\d+\}}\{{\d+\}}|\\[dt]?frac\d\d|{_NUM}(?:/{_NUM})?)(?:\s?\\?%)?"
    r"|\d+(?:,\d+)+"  # 0,111 / 1,2,3: not a number
    r")",
    re.IGNORECASE,
)
# A LaTeX math span: $$..$$, $..$, \(..\), \[..\] (bounded, so a stray "$" cannot make a scan quadratic).
# An escaped dollar "\$" is a currency sign, never a delimiter: it neither opens nor closes a span, and
# "$\$18.90$" is the span "\$18.90".
_IN_DOLLARS = r"(?:[^$\\]|\\.){1,1000}?"
_MATH_SPAN = re.compile(
    rf"(?<!\\)\$\$(?P<a>{_IN_DOLLARS})\$\$|(?<!\\)\$(?P<b>{_IN_DOLLARS})\$"
    r"|\\\((?P<c>.{1,1000}?)\\\)|\\\[(?P<d>.{1,1000}?)\\\]",
    re.DOTALL,
)
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "a.m", "p.m", "no", "approx"})
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _check_style(style: str) -> None:
    """A misspelt style would silently score everything wrong, so it is a loud error, never a False."""
    if style not in ANSWER_STYLES:
        raise UserError(f"unknown answer style {style!r}; expected one of {', '.join(ANSWER_STYLES)}")


def _cut_run_on(output: str) -> str:
    """Drop what a model generated after its own answer block.

    End-of-turn tokens always end the answer. A new "Question:"/"Q:"/"Problem:" header ends it only
    when the text before it already contains a digit, so a model that starts by restating the problem
    ("Problem: ... Solution: ...") is not cut to nothing.
    """
    m = _END_OF_TURN.search(output)
    if m:
        output = output[: m.start()]
    digit = _DIGIT.search(output)
    if digit is None:
        return output
    h = _RUN_ON_HEADER.search(output, digit.end())
    return output[: h.start()] if h else output


class _Box(NamedTuple):
    content: str
    start: int  # where "\boxed" starts
    end: int  # just after the closing brace


_BARE_BOX = re.compile(r"[^\s$]{1,100}")


def _boxes_from_end(text: str) -> Iterator[_Box]:
    """The complete, non-empty boxes of ``text``, last first (see :func:`last_boxed`).

    A box that encloses a later one (``\\boxed{\\boxed{5}}``) is the same answer and is not yielded again.
    """
    end = len(text)
    inner_start = len(text) + 1
    for _ in range(_MAX_BOXED_TRIES):
        pos_b, pos_f = text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end)
        pos = max(pos_b, pos_f)
        if pos < 0:
            return
        end = pos
        i = pos + (len("\\boxed") if pos == pos_b else len("\\fbox"))
        j = i
        while j < len(text) and text[j] in " \t":
            j += 1
        box = None
        if j < len(text) and text[j] == "{":
            content = _balanced(text, j)
            if content is not None and content.strip():
                box = _Box(content.strip(), pos, j + len(content) + 2)
        elif j > i and pos == pos_b:
            m = _BARE_BOX.match(text, j)
            if m:
                box = _Box(m.group(0), pos, m.end())
        if box is not None and box.end <= inner_start:
            inner_start = box.start
            yield box


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, else None.

    Escaped braces (``\\{``, ``\\}``) do not count, so ``\\boxed{\\{1,2\\}}`` is ``\\{1,2\\}``. An empty
    ``\\boxed{}`` is skipped: small models often echo the instruction "put your answer within \\boxed{}".
    A last box that never closes (output cut at the token limit) falls back to the one before it.
    ``\\boxed 5`` (no braces) is read up to the next space or ``$``. Scans are bounded
    (:data:`_MAX_BOXED_TRIES` boxes, :data:`_MAX_BOXED_CHARS` characters each), so a megabyte of
    unclosed braces costs milliseconds.
    """
    if not isinstance(text, str) or not text:
        return None
    box = next(_boxes_from_end(text), None)
    return None if box is None else box.content


def _balanced(text: str, open_at: int) -> str | None:
    """The text inside the brace group that opens at ``open_at``, or None if it does not close in time."""
    depth = 0
    stop = min(len(text), open_at + _MAX_BOXED_CHARS)
    k = open_at
    while k < stop:
        c = text[k]
        if c == "\\":
            k += 2  # skip the escaped character (\{, \}, \\)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : k]
        k += 1
    return None


def _span_after(text: str, start: int) -> str:
    """The rest of the line after a marker (or the next line, when the marker ends its line)."""
    span = text[start : start + _MAX_SPAN_CHARS].split("\n", 1)
    if not span[0].strip() and len(span) > 1:
        span = span[1].split("\n", 1)
    return span[0].strip()


def _first_sentence(span: str) -> str:
    """Cut ``span`` at the first sentence end, ignoring periods of "Mrs." and "p.m." and of decimals."""
    for m in _SENTENCE_END.finditer(span):
        word = re.search(r"([A-Za-z.]+)$", span[: m.start()])
        if m.group(0) == "." and word and word.group(1).lower().lstrip(".") in _ABBREVIATIONS:
            continue
        return span[: m.start()]
    return span


def _clean_text_answer(span: str) -> str:
    return span.strip().strip("*_\"'`").strip().rstrip(".!?,;:").strip()


def _number_from_span(span: str) -> str | None:
    """The number a marked span states.

    "5 + 3 = 8" states 8 (the result after the last "="); "the sum of 3 and 4, which is 7" states 7 (the
    first number after the last "is"); otherwise the first number ("$18 per day for 7 days" is 18). A
    span with no number at all is returned as short text (ASDiv has answers like "Mrs. Hilt", "Yes"),
    or None when it is prose rather than an answer.
    """
    sentence = _first_sentence(span)
    for sep in (r"=", r"\bis\b"):
        parts = re.split(sep, sentence)
        if len(parts) > 1:
            m = _NUMBER_TOKEN.search(parts[-1])
            if m:
                return m.group(0).strip()
    m = _NUMBER_TOKEN.search(sentence)
    if m:
        return m.group(0).strip()
    text = _clean_text_answer(sentence)
    if text and len(text) <= 60 and len(text.split()) <= 6:
        return text
    return None


def _leading_math(s: str) -> str | None:
    """The content of the math span ``s`` opens with (``$x$ ...`` -> ``x``), else None."""
    if s.startswith(("$", "\\(", "\\[")):
        m = _MATH_SPAN.match(s)
        if m:
            return next(g for g in m.groups() if g is not None).strip()
    return None


# What an answer stated after "is" starts with: a math span, a LaTeX command, a number, a bracket
# opening one. "it is correct" or "is positive" do not qualify (they stay whole sentences).
_STATED = re.compile(r"(?:\$|\\|[-−+]?\.?\d|[-−]\s*[\\$]|[(\[]\s*[-−]?[\d\\$.])")
_IS = re.compile(r"\bis\b", re.IGNORECASE)


def _stated_after_is(sentence: str) -> str | None:
    """The answer of a sentence "The largest $n$ is 34": what follows its last "is" outside math spans."""
    masked = _MATH_SPAN.sub(lambda m: "_" * len(m.group(0)), sentence)
    last = _last_match(_IS, masked)
    if last is None:
        return None
    rest = sentence[last.end() :].strip().lstrip(":").strip()
    if not _STATED.match(rest):
        return None
    inner = _leading_math(rest)
    return inner if inner is not None else _clean_text_answer(rest)


def _math_from_span(span: str) -> str | None:
    """The LaTeX answer a marked span states.

    The first math span if the span opens with one; else, in a sentence such as "The largest $n$ is 34"
    (the Minerva prompt's "Final Answer:" line, written freely), what follows its last "is"; else its
    first sentence.
    """
    s = span.strip().lstrip(":").strip().strip("*").strip()
    inner = _leading_math(s)
    if inner is not None:
        return inner or None
    sentence = _first_sentence(s)
    s = _stated_after_is(sentence) or _clean_text_answer(sentence)
    return s or None


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def _last_number(text: str) -> str | None:
    m = _last_match(_NUMBER_TOKEN, text)
    return m.group(0).strip() if m else None


def _first_marked(text: str, marker: re.Pattern[str], read: Callable[[str], str | None]) -> str | None:
    """The answer after the FIRST occurrence of ``marker`` that states one (of the first 50).

    A span ends where the marker comes again: in a loop "Final Answer: Final Answer: ..." no marker
    states an answer, rather than each stating the 1,000-character rest of the line.
    """
    for m in itertools.islice(marker.finditer(text), _MAX_MARKER_TRIES):
        span = _span_after(text, m.end())
        again = marker.search(span)
        found = read(span[: again.start()] if again else span)
        if found:
            return found
    return None


class _Found(NamedTuple):
    extraction: Extraction
    text: str  # the output with run-on text cut (see :func:`_cut_run_on`)
    box: _Box | None  # the box the answer was read from, when it was


# A final-answer line, the kind that overrides an earlier box: "Final Answer: ...", "The final answer
# is ...", "#### ...". A plain "the answer is" after a box is too often prose ("the answer is the same
# for every n") to override it.
_FINAL_ANSWER = re.compile(
    r"\bfinal\s+answer\s*:\s*(?:\**\s*)?(?:the\s+final\s+answer\s+is\b\s*:?)?"
    r"|\b(?:the\s+)?final\s+answer\s+is\b\s*:?|####",
    re.IGNORECASE,
)
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,}){2}")  # three words in a row, not \commands


def _late_number(span: str) -> str | None:
    found = _number_from_span(span)
    return found if found and _DIGIT.search(found) else None


def _late_math(span: str) -> str | None:
    found = _math_from_span(span)
    return found if found and not _PROSE.search(found) else None


def _extract(output: str, style: str) -> _Found:
    _check_style(style)
    if not isinstance(output, str):
        output = "" if output is None else str(output)
    text = _cut_run_on(output)
    number = style == "number"
    read = _number_from_span if number else _math_from_span

    if number:
        found = _first_marked(text, _HASH_MARKER, _number_from_span)
        if found is not None:
            return _Found(Extraction(found, True), text, None)
    box = next(_boxes_from_end(text), None)
    if box is not None:
        late = _first_marked(text[box.end :], _FINAL_ANSWER, _late_number if number else _late_math)
        if late is not None:
            return _Found(Extraction(late, True), text, None)
        found = (_number_from_span(box.content) or box.content) if number else box.content
        return _Found(Extraction(found, True), text, box)
    found = _first_marked(text, _ANSWER_IS, read)
    if found is None and not number:
        found = _first_marked(text, _HASH_MARKER, read)
    if found is not None:
        return _Found(Extraction(found, True), text, None)
    if not number:
        span = _last_match(_MATH_SPAN, text)
        if span is not None:
            inner = next(g for g in span.groups() if g is not None).strip()
            if inner:
                return _Found(Extraction(inner, False), text, None)
    return _Found(Extraction(_last_number(text), False), text, None)


def extract_answer(output: str, style: str) -> Extraction:
    """Find the answer in a model output.

    Run-on text is dropped first (see :func:`_cut_run_on`). Then, for ``"number"``: the FIRST ``#### X``,
    else the LAST ``\\boxed{X}``, else the first "The answer is X", else (unmarked) the last number.
    For ``"math"``: the LAST ``\\boxed{X}``, else the first "The answer is X" / ``#### X``, else
    (unmarked) the last ``$...$`` span, else the last number. In both styles a final-answer line
    ("The final answer is X", "Final Answer: ...", ``#### X``) written AFTER the last box overrides
    it: the last marker wins (lm-eval's Minerva prompt asks for a box in the solution and then that line).

    Why first ``####`` but last ``\\boxed``: ``#### X`` is the GSM8K answer LINE; the generation is
    normally stopped right after it, and whatever follows is a small model repeating itself or writing
    the next few-shot question and answering that (its own "#### 7"). A boxed answer is written once
    at the end of a solution by models trained on MATH-style data; earlier boxes are intermediate
    results, and a later run-on problem is already cut off. "The answer is" follows ``####`` (first),
    which is also what lm-evaluation-harness's strict-match filter takes.
    """
    return _extract(output, style).extraction


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------


class _Num(NamedTuple):
    value: Fraction
    decimal: bool  # written with a decimal point or exponent (so it may be a rounded value)


_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|boxed|fbox)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[!,;:> ]|\\q?quad\b|~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ\b|\\degree\b")
_NUMBER_FULL = re.compile(
    r"(?P<sign>[-+−]?)\s*(?:[$€£¥₹])?\s*(?P<sign2>[-−]?)\s*"
    r"(?:\\frac\{(?P<fn>\d+)\}\{(?P<fd>\d+)\}|\\frac(?P<fn1>\d)(?P<fd1>\d)"
    rf"|(?P<num>{_NUM})(?P<exp>[eE][-+]?\d{{1,2}})?"
    r"(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?)"
    r"\s*%?(?P<rest>.*)",
    re.DOTALL,
)
# What may follow a number and still leave it "a number": unit words ("apples", "(dollars)",
# "sq. ft", "km/h", "years old"). No digits, no operators: "18 + 2" and "5 apples and 3 pears" are not numbers.
_UNIT_WORDS = re.compile(r"\s*(?:[A-Za-z(][A-Za-z .'/()-]{0,40})?")
# "x = 12", "Total: 12", "Answer: 12": a short label before the number.
_LABEL = re.compile(r"[A-Za-z][A-Za-z _]{0,30}[=:]\s*")
_PAREN_NUMBER = re.compile(r"([-+−]?)\s*\((.*)\)")


def _strip_number_markup(s: str) -> str:
    """Remove the LaTeX and markdown that can surround a number: $, \\$, \\(..\\), \\text{}, \\%, degrees."""
    s = _LEFT_RIGHT.sub("", _THOUSANDS_COMMA.sub(",", s.replace("{,}", ",")))  # 10,\!000 and 11,\! 111
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for _ in range(3):
        s2 = _WRAPPERS.sub(r" \1 ", s)
        if s2 == s:
            break
        s = s2
    s = _SPACING.sub(" ", s)  # a space, not nothing: "1\,000" is 1000 (grouped), "1\,2" is no number
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\(", "").replace("\\)", "")
    s = s.replace("$", "").replace("**", "")  # a currency sign carries no value
    return s.strip().rstrip(".").strip()


def _parse_number(text: str, units: bool) -> _Num | None:
    """Parse one number; ``units`` allows trailing unit words and a leading label (number style only).

    In math style "5x" must not read as 5, so there ``units`` is False.
    """
    if not isinstance(text, str) or len(text) > _MAX_NUMBER_CHARS:
        return None
    s = _strip_number_markup(text)
    if units:
        s = _LABEL.sub("", s, count=1) if _LABEL.match(s) else s
    m = _PAREN_NUMBER.fullmatch(s)
    if m:  # ASDiv writes "-(1/3)"
        inner = _parse_number(m.group(2), units=False)
        if inner is None:
            return None
        return _Num(-inner.value, inner.decimal) if m.group(1) in ("-", "−") else inner
    m = _NUMBER_FULL.fullmatch(s)
    if not m:
        return None
    rest = m.group("rest")
    if rest.strip() and not (units and _UNIT_WORDS.fullmatch(rest)):
        return None
    if m.group("sign") and m.group("sign2"):
        return None
    negative = (m.group("sign") or m.group("sign2")) in ("-", "−")
    if m.group("fn") is not None or m.group("fn1") is not None:
        num, den = (m.group("fn"), m.group("fd")) if m.group("fn") is not None else (m.group("fn1"), m.group("fd1"))
        if len(num) + len(den) > _MAX_DIGITS or int(den) == 0:
            return None
        value, decimal = Fraction(int(num), int(den)), False
    else:
        num = _NOT_DIGIT.sub("", m.group("num"))
        den = m.group("den")
        if len(num) + len(den or "") > _MAX_DIGITS:
            return None
        value = Fraction(num + (m.group("exp") or ""))
        decimal = "." in num or m.group("exp") is not None
        if den is not None:
            d = Fraction(den)
            if d == 0:
                return None
            value, decimal = value / d, decimal or "." in den
    return _Num(-value if negative else value, decimal)


def normalize_number(text: str) -> Fraction | None:
    """The value of a number as a model or a dataset writes it, or None if ``text`` is not one number.

    ``"$1,234.50"`` -> 2469/2, ``"11.0"`` -> 11, ``"50%"`` -> 50 (the number written, not 0.5),
    ``"3/4"`` and ``"\\frac{3}{4}"`` -> 3/4, ``"12 apples"`` / ``"9 (apples)"`` -> 12 / 9, ``"x = 5"`` -> 5,
    ``"-(1/3)"`` -> -1/3. Commas count only as thousands separators (``"1,000"``; ``"1,2"`` is not a
    number). Inputs longer than 200 characters or with more than 80 digits are not numbers, and
    exponents are limited to two digits, so ``"1e999999999"`` or a 10,000-digit string cost nothing.
    Never raises.
    """
    try:
        n = _parse_number(text, units=True)
    except Exception:  # a bug here must not take down a whole evaluation
        logger.debug("normalize_number failed", exc_info=True)
        return None
    return None if n is None else n.value


def _terminates(q: Fraction) -> bool:
    """True when ``q`` has a finite decimal expansion (denominator of the form 2^a 5^b)."""
    d = q.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _numbers_match(pred: _Num, gold: _Num) -> bool:
    """Exact equality; :data:`REL_TOL` only between a written decimal and a non-terminating rational."""
    if pred.value == gold.value:
        return True
    if (pred.decimal and not _terminates(gold.value)) or (gold.decimal and not _terminates(pred.value)):
        return abs(pred.value - gold.value) <= REL_TOL * max(abs(pred.value), abs(gold.value))
    return False


# --------------------------------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s:]")
_COLON_SPACES = re.compile(r"\s*:\s*")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")
_RATIO = re.compile(r"\d+(?::\d+)+")


def _text_key(s: str) -> str:
    """Loose form of a non-numeric answer: case, punctuation, spacing, a leading article do not matter."""
    s = re.sub(r"[.'’]", "", _strip_number_markup(s).lower())  # "p.m." = "pm", "Cesar's" = "Cesars"
    s = _COLON_SPACES.sub(":", _PUNCT.sub(" ", s))
    return _ARTICLE.sub("", " ".join(s.split()))


def _number_equivalent(pred: str, gold: str) -> bool:
    g = _parse_number(gold, units=True)
    if g is not None:
        p = _parse_number(pred, units=True)
        return p is not None and _numbers_match(p, g)
    # Non-numeric golds (a few hundred ASDiv rows): ratios "2:3", clock times "3:30 p.m.", names, "Yes".
    if len(pred) > _MAX_TEXT_ANSWER_CHARS or len(gold) > _MAX_TEXT_ANSWER_CHARS:
        return False
    g_key, p_key = _text_key(gold), _text_key(pred)
    if _RATIO.fullmatch(g_key) and _RATIO.fullmatch(p_key):  # element-wise: "02:3" == "2:3", never reduced
        return [int(x) for x in g_key.split(":")] == [int(x) for x in p_key.split(":")]
    return bool(g_key) and g_key == p_key


_LATEX_UNITS = re.compile(r"\\(?:text|mbox|mathrm)\{\s+[^{}]*\}(?:\^\{?\d\}?)?")
_LATEX_DROP = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\\$|\\%|%|\$")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=(?!=)")
_CHOICE = re.compile(r"\(?([A-E])\)?")


# Digit runs that spacing alone keeps apart. LaTeX ignores spaces, and the key below drops them all;
# done blindly, that turns the list "32, 349" into the number 32,349 and "1 2" into 12. So first a comma
# followed by \! is made MATH's thousands comma ("10,\!000", also written "11,\! 111"), digit groups
# split by a space-like separator are joined (the rule of :data:`_GROUPED`), and then any spacing still
# standing between two digits, or after a comma before a three-digit group, becomes :data:`_APART`, a
# character the number grammar rejects: such an answer is no number, nor spelt like one.
_APART = "\u2063"  # INVISIBLE SEPARATOR: not whitespace, not in any answer
_SPACE_GROUPED = re.compile(
    r"(?<![\d.])[1-9]\d{0,2}(?:" + "|".join(rf"(?:{sep}\d{{3}})+(?!\d|-[A-Za-z])" for sep in _SPACE_SEPS) + ")"
)
_SPACE_LIKE = r"(?:\s|\\[!,;:> ]|\\q?quad(?![A-Za-z])|~)+"
_LIST_COMMA = re.compile(rf"(?<=\d),{_SPACE_LIKE}(?=\d{{3}}(?!\d))")
_SPACED_DIGITS = re.compile(rf"(?<=\d){_SPACE_LIKE}(?=\d)")
_COMMAND_DIGIT = re.compile(r"\\[A-Za-z]+\s*\d$")  # "\frac 1 2": 1 is an argument, the space is LaTeX's


def _keep_digit_runs_apart(s: str) -> str:
    """Remove thousands separators; mark the digits that other spacing separates (see :data:`_APART`).

    A comma and a space are marked only outside brackets: inside them a comma always separates
    ("(3, 100)" is the pair "(3,100)"), where at top level "3,100" would read as one number.
    """
    s = _THOUSANDS_COMMA.sub("{,}", s)
    s = _SPACE_GROUPED.sub(lambda m: _NOT_DIGIT.sub("", m.group(0)), s)
    depth = list(itertools.accumulate((c in "([{") - (c in ")]}") for c in s))
    s = _LIST_COMMA.sub(lambda m: m.group(0) if depth[m.start()] > 0 else "," + _APART, s)

    def apart(m: re.Match[str], text: str = s) -> str:
        return m.group(0) if _COMMAND_DIGIT.search(text, max(0, m.start() - 40), m.start()) else _APART

    return _SPACED_DIGITS.sub(apart, s)


def _latex_key(s: str) -> str:
    """A normalised LaTeX string for the cheap "same answer, other spelling" test (Hendrycks-style).

    Drops ``\\left``/``\\right``, spacing commands, ``$``, ``\\%``, degrees, unit text (``\\text{ cm}``),
    ``\\text{}`` wrappers, a trailing period, a leading ``x =``, and all whitespace; unifies ``\\dfrac``/
    ``\\tfrac`` with ``\\frac``; reduces a choice ``(C)`` to ``C``. Thousands separators are removed, but
    digits that spacing keeps apart stay apart (see :data:`_APART`).
    """
    s = _keep_digit_runs_apart(s.strip())
    s = _LATEX_UNITS.sub("", s)
    s = _DEGREES.sub("", s)
    s = _LATEX_DROP.sub("", s)
    s = _SPACING.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    for _ in range(3):
        s2 = _WRAPPERS.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = "".join(s.split()).rstrip(".")
    if s.count("=") == 1 and _ASSIGNMENT.match(s):
        s = s.split("=", 1)[1]
    m = _CHOICE.fullmatch(s)
    return m.group(1) if m else s


def _brace_depth(s: str) -> int:
    """Deepest nesting of ``{``, ``(`` and ``[`` (50,000 open parentheses reach sympy's recursion limit)."""
    depth = best = 0
    for c in s:
        if c in "{([":
            depth += 1
            best = max(best, depth)
        elif c in "})]":
            depth -= 1
    return best


# Short inputs that make sympy compute astronomically large integers or expansions: an exponent that
# itself contains an exponent (2^{2^{2^2}}), an exponent of 4+ digits, a 4+ digit factorial or
# binomial argument. They are compared as strings only.
_EXPLOSIVE = re.compile(
    r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\\binom\s*\{[^{}]*\^|\^\s*\{?\s*\d{4,}|\d{4,}\s*!|\\binom\s*\{[^{}]*\d{4,}|\d{101,}|\d[eE][-+]?\d{3,}"
)


def _math_equivalent(pred: str, gold: str, timeout_s: float) -> bool:
    if len(pred) > _MAX_MATH_CHARS or len(gold) > _MAX_MATH_CHARS:
        return False
    p_key, g_key = _latex_key(pred), _latex_key(gold)
    if p_key and p_key == g_key:
        return True
    g_num, p_num = _parse_number(g_key, units=False), _parse_number(p_key, units=False)
    if g_num is not None and p_num is not None:
        return _numbers_match(p_num, g_num)  # decisive: both are plain numbers
    if (g_num is not None and _APART in p_key) or (p_num is not None and _APART in g_key):
        return False  # one number against digits kept apart ("1 2", "32, 349"); math-verify reads "1 2" as 3
    if _brace_depth(pred) > _MAX_BRACE_DEPTH or _brace_depth(gold) > _MAX_BRACE_DEPTH:
        return False
    if _EXPLOSIVE.search(pred) or _EXPLOSIVE.search(gold):
        return False  # identical spellings were accepted above; MATH has 3 such golds (2^{2005}, ...)
    return _symbolic_equal(pred, gold, timeout_s)


def is_equivalent(pred: str | None, gold: str, style: str, timeout_s: float = 5.0) -> bool:
    """True when the extracted answer ``pred`` means the same as ``gold``.

    ``"number"``: both are read with :func:`normalize_number` and compared exactly (see :data:`REL_TOL`
    for the one tolerance). A gold that is not a number (ASDiv "2:3", "3:30 p.m.", "Yes") is compared as
    text, case- and punctuation-insensitively; ratios element-wise. A percentage is the number written:
    "50%" equals 50, not 0.5.

    ``"math"``: normalised-string equality, then plain numbers as above (``\\frac{1}{2}`` = 0.5,
    ``10\\%`` = 10), then math-verify (tuples, intervals, ``(x+1)^2`` = ``x^2+2x+1``, ``x = 5`` = 5,
    ``\\text{(C)}`` = C), bounded by ``timeout_s`` seconds of wall time (see :func:`_symbolic_equal`).

    Never raises on string input: anything unexpected is logged and counts as not equivalent. An
    unknown ``style`` is a :class:`UserError` (a typo would otherwise silently score every answer wrong).
    """
    _check_style(style)
    if pred is None or gold is None:
        return False
    try:
        pred, gold = str(pred).strip(), str(gold).strip()
        if not pred or not gold:
            return False
        if style == "number":
            return _number_equivalent(pred, gold)
        return _math_equivalent(pred, gold, timeout_s)
    except UserError:
        raise
    except Exception:
        logger.warning("answer check failed; counted as wrong (pred=%.80r, gold=%.80r)", pred, gold, exc_info=True)
        return False


def score_output(output: str, reference: str, style: str) -> dict:
    """Extract and check one model output: ``{"extracted", "marked", "correct", "strict_correct"}``.

    ``strict_correct`` is True only when the answer was marked (``####``, ``\\boxed``, "The answer is")
    AND correct: the format-following score, comparable to lm-evaluation-harness's strict-match.

    One box per part (math style): when the answer came from the last box, is wrong as it stands, and
    the gold has k >= 2 parts (see :func:`_gold_parts`), the output's final k boxes are compared with
    the parts: as a set for a list or set gold ("-2, 1" by ``\\boxed{-2}`` and ``\\boxed{1}``), in order
    for a tuple gold. If they match, the answer is correct and ``extracted`` lists those boxes.
    """
    found = _extract(output, style)
    ext = found.extraction
    extracted, correct = ext.text, is_equivalent(ext.text, reference, style)
    if not correct and style == "math" and found.box is not None:
        parts = _boxed_parts(found.text, reference)
        if parts is not None:
            extracted, correct = ", ".join(parts), True
    return {"extracted": extracted, "marked": ext.marked, "correct": correct, "strict_correct": correct and ext.marked}


_MAX_PARTS = 8  # most parts a gold may be split into for the one-box-per-part rule
_PARTS_TIMEOUT_S = 5.0  # wall time for all the comparisons of that rule together
_OPENERS, _CLOSERS = frozenset("([{"), frozenset(")]}")
_THREE_DIGITS = re.compile(r"\d{3}(?!\d)")


def _split_top_level(s: str) -> list[str] | None:
    """``s`` cut at its commas outside any bracket (``\\{`` and ``\\}`` count as brackets); None if unbalanced.

    A comma between digits with a three-digit group after it and no space ("58,500") is a thousands
    separator, not a cut.
    """
    parts, depth, start, k = [], 0, 0, 0
    while k < len(s):
        c = s[k]
        if c == "\\" and k + 1 < len(s) and s[k + 1] in "{}":
            c, k = s[k + 1], k + 1
        if c in _OPENERS:
            depth += 1
        elif c in _CLOSERS:
            depth -= 1
            if depth < 0:
                return None
        elif c == "," and depth == 0 and not (k > 0 and s[k - 1].isdigit() and _THREE_DIGITS.match(s, k + 1)):
            parts.append(s[start:k])
            start = k + 1
        k += 1
    parts.append(s[start:])
    return None if depth else [x.strip() for x in parts]


def _closes_at_end(s: str, open_len: int) -> bool:
    """True when the bracket opening ``s`` (``open_len`` characters) is closed by its last character(s)."""
    return _split_top_level(s[open_len:-open_len]) is not None


def _gold_parts(gold: str) -> tuple[list[str], bool] | None:
    """The parts of a gold with k >= 2 of them, and whether their order matters; None for a one-part gold.

    A bare list at top level ("-2, 1", "(1,2), (3,4)") and a set ``\\{1, 2\\}`` are unordered; a tuple
    ``(3, \\frac{\\pi}{2})`` is ordered. Intervals (``[1, 2)``, ``[0, 1]``) and numbers ("58,500",
    ``10,\\!000``) are one part.
    """
    g = _THOUSANDS_COMMA.sub("{,}", _LEFT_RIGHT.sub("", gold)).strip().strip("$").strip()
    if len(g) > _MAX_MATH_CHARS or _parse_number(_latex_key(g), units=False) is not None:
        return None
    ordered = False
    if g.startswith("\\{") and g.endswith("\\}") and _closes_at_end(g, 2):
        g = g[2:-2]
    elif g.startswith("(") and g.endswith(")") and _closes_at_end(g, 1):
        g, ordered = g[1:-1], True
    parts = _split_top_level(g)
    if parts is None or not 2 <= len(parts) <= _MAX_PARTS or not all(parts):
        return None
    return parts, ordered


def _boxed_parts(text: str, gold: str) -> list[str] | None:
    """The final k boxes of ``text`` (in text order) when they state the k parts of ``gold``, else None."""
    try:
        split = _gold_parts(gold)
        if split is None:
            return None
        parts, ordered = split
        boxes = [b.content for b in itertools.islice(_boxes_from_end(text), len(parts))][::-1]
        if len(boxes) < len(parts):
            return None
        deadline = time.monotonic() + _PARTS_TIMEOUT_S

        def same(box: str, part: str) -> bool:
            left = deadline - time.monotonic()
            return left > 0 and is_equivalent(box, part, "math", timeout_s=left)

        if ordered:
            return boxes if all(same(b, p) for b, p in zip(boxes, parts, strict=True)) else None
        unused = list(boxes)
        for part in parts:  # greedy matching is exact: equivalence is an equivalence relation
            hit = next((b for b in unused if same(b, part)), None)
            if hit is None:
                return None
            unused.remove(hit)
        return boxes
    except Exception:
        logger.warning("multi-box check failed; counted as wrong (gold=%.80r)", gold, exc_info=True)
        return None


# --------------------------------------------------------------------------------------------------
# Time-bounded symbolic check (math-verify)
# --------------------------------------------------------------------------------------------------

T = TypeVar("T")


class _Deadline(BaseException):
    """Raised by our SIGALRM handler.

    A BaseException on purpose: math-verify and sympy wrap their work in ``except Exception``, which
    would swallow an ordinary exception and carry on with the next (equally slow) comparison.
    """


_MATH_VERIFY: Any = None


def _math_verify() -> Any:
    """Import and warm up math-verify on first use (a second or so; number-style runs never pay it)."""
    global _MATH_VERIFY
    if _MATH_VERIFY is None:
        try:
            import math_verify
        except ImportError as e:
            raise UserError("math-verify is required for MATH scoring: pip install 'math-verify>=0.7'") from e

        class _DropNoTimeoutWarning(logging.Filter):
            # We pass timeout=None on purpose (we bound time ourselves); math-verify warns about that once.
            def filter(self, record: logging.LogRecord) -> bool:
                return not str(record.msg).startswith("Timeout is disabled")

        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropNoTimeoutWarning())
        # The first parse builds math-verify's parser tables (about a second): do it now, outside any
        # answer's deadline, or the first MATH answer of a run could be timed out on a busy machine.
        config = [math_verify.LatexExtractionConfig()]
        math_verify.verify(math_verify.parse("$x^2+1$", extraction_config=config, parsing_timeout=None),
                           math_verify.parse("$(x+1)^2$", extraction_config=config, parsing_timeout=None),
                           timeout_seconds=None)
        _MATH_VERIFY = math_verify
    return _MATH_VERIFY


def _as_latex(s: str) -> str:
    """Wrap an answer in ``$...$`` for math-verify's LaTeX extractor (unescaped ``$`` inside removed)."""
    return "$" + re.sub(r"(?<!\\)\$", "", s) + "$"


@functools.lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> tuple:
    """Gold answers repeat across models, shots and samples: parse each once."""
    return tuple(_parse_math(gold))


def _parse_math(s: str) -> list:
    """math-verify's parse of one answer (untimed; callers bound the time). Used by the tests too.

    LaTeX extraction only: math-verify's plain-expression extractor goes through sympy's ``parse_expr``,
    which ``eval``s its input, and model text must never reach an ``eval``. Answers are wrapped in
    ``$...$``, so the LaTeX extractor sees everything anyway.
    """
    mv = _math_verify()
    return mv.parse(_as_latex(s), extraction_config=[mv.LatexExtractionConfig()], parsing_timeout=None)


def _verify_now(pred: str, gold: str) -> bool:
    mv = _math_verify()
    g = list(_parse_gold(gold))
    if not g:
        return False
    p = _parse_math(pred)
    return bool(p) and bool(mv.verify(g, p, timeout_seconds=None))


def _can_use_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


_REFIRE_S = 0.1  # after the deadline, the alarm fires again this often until the check has stopped


def _with_alarm(fn: Callable[[], T], timeout_s: float) -> T | None:
    """Run ``fn`` with a SIGALRM deadline; None when it ran out of time.

    One deadline covers the whole check (parse gold, parse prediction, every comparison), unlike
    math-verify's own per-step ``timeout_seconds``, which can add up to several times the limit and takes
    whole seconds only. An alarm someone else had set (pytest-timeout, say) is re-armed afterwards with
    its remaining time. Limitation of any signal deadline: it is checked between Python bytecodes, so a
    single huge C-level operation (a 10^9-digit power) would not be interrupted; :data:`_EXPLOSIVE` and
    the size guards keep such inputs away from sympy.

    The alarm repeats every :data:`_REFIRE_S` seconds after the deadline: a :class:`_Deadline` raised
    inside a bare ``except:`` (sympy has some), a ``__del__`` or a gc callback is swallowed, and one
    swallowed alarm must not leave the check unbounded. Such a swallowed deadline reaches
    ``sys.unraisablehook``, which is wrapped for the check's duration: ours are dropped, and no re-fire
    lands inside another hook. ``active`` turns the handler into a no-op as soon as ``fn`` has stopped,
    and both exits restore the previous handler, timer and hook (once).
    """
    active = [True]
    restored = [False]
    in_hook = [False]

    def on_alarm(signum: int, frame: Any) -> None:
        if active[0] and not in_hook[0]:
            raise _Deadline

    def unraisable(u: Any) -> None:
        # A deadline swallowed by a __del__ or gc callback is ours and already handled by the re-firing
        # alarm: drop it. Anything else goes to the previous hook, with the alarm held off meanwhile, so
        # a re-fire cannot break the hook itself (pytest's imports tracemalloc there).
        if isinstance(u.exc_value, _Deadline):
            return
        in_hook[0] = True
        try:
            old_hook(u)
        finally:
            in_hook[0] = False

    def restore() -> None:
        active[0] = False
        if restored[0]:
            return
        restored[0] = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
        sys.unraisablehook = old_hook
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - start), 0.001)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)

    start = time.monotonic()
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.01), _REFIRE_S)
    try:
        try:
            return fn()
        finally:
            restore()
    except _Deadline:  # also one that fired while the finally above was starting: restore once more
        restore()
        return None


def _symbolic_equal(pred: str, gold: str, timeout_s: float) -> bool:
    """math-verify's verdict within ``timeout_s`` seconds of wall time; False when it runs out.

    On the main thread (the normal case: the eval loop scores as it generates) the check runs in-process
    under one SIGALRM deadline: a few milliseconds, no process overhead. Signals only work on the main
    thread, and math-verify's own timeouts use them, so off the main thread (a thread pool, a server)
    the check goes to a helper process that runs the same code under its own alarm and is killed if it
    does not answer in ``timeout_s`` + 2 s. Size caps alone are no substitute: ``9^{9^{9}}`` or
    ``\\binom{10^9}{10^5}`` are a dozen characters and keep sympy busy for minutes.
    """
    if _can_use_alarm():
        _math_verify()  # import and warm up outside the deadline
        result = _with_alarm(lambda: _verify_now(pred, gold), timeout_s)
    else:
        result = _worker_check(pred, gold, timeout_s)
    if result is None:
        logger.warning("math answer check timed out after %.1fs; counted as wrong (pred=%.80r, gold=%.80r)",
                       timeout_s, pred, gold)
        return False
    return result


# The helper process: one JSON request per stdin line, one "R <json>" reply per stdout line.


class _Worker:
    """A python subprocess running :func:`_worker_main`, used one request at a time under a lock."""

    def __init__(self) -> None:
        self.owner = os.getpid()  # a fork()ed child (a data-loader worker, say) must not share our pipes
        src = str(Path(__file__).resolve().parents[1])
        code = f"import sys; sys.path.insert(0, {src!r}); from tinyslm.scoring import _worker_main; _worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True, name="tinyslm-scoring-reader").start()
        if self._reply(60.0) != "ready":
            self.kill()
            raise RuntimeError("math answer checker process did not start")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("R "):
                self.replies.put(line[2:].strip())
        self.replies.put(None)

    def _reply(self, wait_s: float) -> str | None:
        try:
            return self.replies.get(timeout=wait_s)
        except queue.Empty:
            return None

    def check(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "timeout_s": timeout_s}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply(timeout_s + _WORKER_GRACE_S)
        if reply is None:
            raise TimeoutError
        return json.loads(reply)["ok"]

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


_WORKER: _Worker | None = None
_WORKER_LOCK = threading.Lock()


def _worker_check(pred: str, gold: str, timeout_s: float) -> bool | None:
    """Ask the helper process; None when it timed out (it is then killed and restarted on next use)."""
    global _WORKER
    with _WORKER_LOCK:
        try:
            if _WORKER is None or _WORKER.owner != os.getpid():
                _WORKER = _Worker()
            return _WORKER.check(pred, gold, timeout_s)
        except Exception as e:  # timeout, dead process, broken pipe: start afresh next time
            if not isinstance(e, TimeoutError):
                logger.warning("math answer checker process failed (%s); counted as wrong", e)
            if _WORKER is not None and _WORKER.owner == os.getpid():
                _WORKER.kill()
            _WORKER = None
            return None


@atexit.register
def _stop_worker() -> None:
    if _WORKER is not None and _WORKER.owner == os.getpid():
        _WORKER.kill()


def _worker_main() -> None:
    """Entry point of the helper process (its main thread, so the alarm deadline works here)."""
    try:
        import resource

        limit = 4 << 30  # a runaway sympy computation dies of MemoryError instead of swapping the machine
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ImportError, ValueError, OSError):
        pass
    logging.disable(logging.CRITICAL)
    _math_verify()
    print("R ready", flush=True)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if _can_use_alarm():
                ok = _with_alarm(lambda r=req: _verify_now(r["pred"], r["gold"]), float(req["timeout_s"]))
            else:
                ok = _verify_now(req["pred"], req["gold"])
        except Exception:
            ok = False
        print("R " + json.dumps({"ok": bool(ok)}), flush=True)


# --------------------------------------------------------------------------------------------------
# Gold answers from dataset records
# --------------------------------------------------------------------------------------------------


def gold_from_gsm8k_answer(answer: str) -> str:
    """The gold of a GSM8K worked answer: the text after the last ``####``, stripped, commas removed.

    ``"... #### 1,000"`` -> ``"1000"``. A record without ``####`` is malformed: :class:`UserError`.
    """
    if "####" not in answer:
        raise UserError(f"GSM8K answer has no '####' line: {answer[-80:]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def gold_from_math_solution(solution: str) -> str:
    """The gold of a MATH solution: the content of its LAST ``\\boxed{...}`` (or ``\\fbox{...}``).

    Returns ``""`` when there is none, so the dataset loader can report the file and line.
    """
    return last_boxed(solution) or ""
