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

import itertools
import logging
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

from tinyslm.core.errors import UserError

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
MAX_NUMBER_CHARS = 200  # longest string normalize_number will look at
MAX_DIGITS = 80  # most digits in one number
MAX_TEXT_ANSWER_CHARS = 200  # longest non-numeric answer compared as text
MAX_MATH_CHARS = 1000  # longest answer handed to the symbolic checker
MAX_BRACE_DEPTH = 40  # deepest {...}, (...), [...] nesting handed to the symbolic checker
_MAX_BOXED_CHARS = 5000  # longest \boxed{...} content scanned for its closing brace
_MAX_BOXED_TRIES = 16  # how many \boxed occurrences (from the end) are tried
_MAX_SPAN_CHARS = 1000  # longest answer span taken after a marker
_MAX_MARKER_TRIES = 50  # how many "####" / "The answer is" occurrences are tried
WORKER_GRACE_S = 2.0  # extra wall time the helper process gets before it is killed


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
SPACE_SEPS = ("[ \u00a0\u2009\u202f]", r"\\,", r"\\!", r"\\ ", "~")
_GROUPED = (
    r"[1-9]\d{0,2}(?:"
    + "|".join(
        [rf"(?:{sep}\d{{3}})+(?!,?\d)" for sep in _COMMA_SEPS]
        + [rf"(?:{sep}\d{{3}})+(?!\d|-[A-Za-z])" for sep in SPACE_SEPS]
    )
    + ")"
)
# An integer part: a grouped number, or plain digits not followed by ",digit" (so "1,2" and "0,111" are
# never read as their first part alone; :data:`_NUMBER_TOKEN` takes such runs whole, as non-numbers).
_INT = rf"(?:{_GROUPED}|\d+(?!,?\d))"
NUMBER_PATTERN = rf"(?:{_INT}(?:\.\d+)?|\.\d+)"
NOT_DIGIT = re.compile(r"[^\d.]")  # deleting it from a grouped number leaves its digits
THOUSANDS_COMMA = re.compile(r",\s*\\!\s*")  # MATH's 10,\!000, also written 11,\! 111

# One number as written in running text: ratio/clock time, or an optionally signed, optionally
# currency-prefixed integer/decimal/fraction/percentage, or a LaTeX \frac with digit arguments, or a
# run of digits and commas that is no grouped number ("0,111", "1,2,3": taken whole so that neither
# "111" nor "3" is read out of it; it is then no number at all).
# The look-behind keeps "16-3" from yielding "-3" and "v2"/"1.2.3" from yielding numbers mid-token.
_NUMBER_TOKEN = re.compile(
    r"(?<![\w.])(?:"
    r"\d{1,2}(?::\d{2}){1,2}\s?[ap]\.?m\.?(?![a-z])"  # 3:30 p.m.
    r"|\d+(?::\d+)+(?!\d)"  # 2:3, 14:55
    rf"|[-−]?(?:\\?\$)?[-−]?(?:\\[dt]?frac\{{\d+\}}\{{\d+\}}|\\[dt]?frac\d\d|{NUMBER_PATTERN}(?:/{NUMBER_PATTERN})?)(?:\s?\\?%)?"
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


def check_style(style: str) -> None:
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


def boxes_from_end(text: str) -> Iterator[_Box]:
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
    box = next(boxes_from_end(text), None)
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
_PROSE = re.compile(
    r"(?<![\\A-Za-z])[A-Za-z]{2,}(?:[ ,]+[A-Za-z]{2,}){2}"
)  # three words in a row, not \commands


def _late_number(span: str) -> str | None:
    found = _number_from_span(span)
    return found if found and _DIGIT.search(found) else None


def _late_math(span: str) -> str | None:
    found = _math_from_span(span)
    return found if found and not _PROSE.search(found) else None


def find_answer(output: str, style: str) -> _Found:
    check_style(style)
    if not isinstance(output, str):
        output = "" if output is None else str(output)
    text = _cut_run_on(output)
    number = style == "number"
    read = _number_from_span if number else _math_from_span

    if number:
        found = _first_marked(text, _HASH_MARKER, _number_from_span)
        if found is not None:
            return _Found(Extraction(found, True), text, None)
    box = next(boxes_from_end(text), None)
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
    return find_answer(output, style).extraction
