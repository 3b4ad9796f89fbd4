"""Numbers and equivalence: is an extracted answer the gold? Numbers exactly (a rational with no
finite decimal compared to a decimal within REL_TOL), text by key, math by a LaTeX key, then symbolically;
and the one-box-per-part rule for multi-part golds.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from fractions import Fraction
from typing import NamedTuple

from tinyslm.core.errors import UserError
from tinyslm.scoring.extract import (
    MAX_BRACE_DEPTH,
    MAX_DIGITS,
    MAX_MATH_CHARS,
    MAX_NUMBER_CHARS,
    MAX_TEXT_ANSWER_CHARS,
    NOT_DIGIT,
    NUMBER_PATTERN,
    REL_TOL,
    SPACE_SEPS,
    THOUSANDS_COMMA,
    boxes_from_end,
    check_style,
    find_answer,
)
from tinyslm.scoring.symbolic import symbolic_equal

logger = logging.getLogger(__name__)

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
    rf"|(?P<num>{NUMBER_PATTERN})(?P<exp>[eE][-+]?\d{{1,2}})?"
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
    s = _LEFT_RIGHT.sub("", THOUSANDS_COMMA.sub(",", s.replace("{,}", ",")))  # 10,\!000 and 11,\! 111
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
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
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
        num, den = (
            (m.group("fn"), m.group("fd")) if m.group("fn") is not None else (m.group("fn1"), m.group("fd1"))
        )
        if len(num) + len(den) > MAX_DIGITS or int(den) == 0:
            return None
        value, decimal = Fraction(int(num), int(den)), False
    else:
        num = NOT_DIGIT.sub("", m.group("num"))
        den = m.group("den")
        if len(num) + len(den or "") > MAX_DIGITS:
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
    if len(pred) > MAX_TEXT_ANSWER_CHARS or len(gold) > MAX_TEXT_ANSWER_CHARS:
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
    r"(?<![\d.])[1-9]\d{0,2}(?:" + "|".join(rf"(?:{sep}\d{{3}})+(?!\d|-[A-Za-z])" for sep in SPACE_SEPS) + ")"
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
    s = THOUSANDS_COMMA.sub("{,}", s)
    s = _SPACE_GROUPED.sub(lambda m: NOT_DIGIT.sub("", m.group(0)), s)
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
    if len(pred) > MAX_MATH_CHARS or len(gold) > MAX_MATH_CHARS:
        return False
    p_key, g_key = _latex_key(pred), _latex_key(gold)
    if p_key and p_key == g_key:
        return True
    g_num, p_num = _parse_number(g_key, units=False), _parse_number(p_key, units=False)
    if g_num is not None and p_num is not None:
        return _numbers_match(p_num, g_num)  # decisive: both are plain numbers
    if (g_num is not None and _APART in p_key) or (p_num is not None and _APART in g_key):
        return False  # one number against digits kept apart ("1 2", "32, 349"); math-verify reads "1 2" as 3
    if _brace_depth(pred) > MAX_BRACE_DEPTH or _brace_depth(gold) > MAX_BRACE_DEPTH:
        return False
    if _EXPLOSIVE.search(pred) or _EXPLOSIVE.search(gold):
        return False  # identical spellings were accepted above; MATH has 3 such golds (2^{2005}, ...)
    return symbolic_equal(pred, gold, timeout_s)


def is_equivalent(pred: str | None, gold: str, style: str, timeout_s: float = 5.0) -> bool:
    """True when the extracted answer ``pred`` means the same as ``gold``.

    ``"number"``: both are read with :func:`normalize_number` and compared exactly (see :data:`REL_TOL`
    for the one tolerance). A gold that is not a number (ASDiv "2:3", "3:30 p.m.", "Yes") is compared as
    text, case- and punctuation-insensitively; ratios element-wise. A percentage is the number written:
    "50%" equals 50, not 0.5.

    ``"math"``: normalised-string equality, then plain numbers as above (``\\frac{1}{2}`` = 0.5,
    ``10\\%`` = 10), then math-verify (tuples, intervals, ``(x+1)^2`` = ``x^2+2x+1``, ``x = 5`` = 5,
    ``\\text{(C)}`` = C), bounded by ``timeout_s`` seconds of wall time (see :func:`symbolic_equal`).

    Never raises on string input: anything unexpected is logged and counts as not equivalent. An
    unknown ``style`` is a :class:`UserError` (a typo would otherwise silently score every answer wrong).
    """
    check_style(style)
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
        logger.warning(
            "answer check failed; counted as wrong (pred=%.80r, gold=%.80r)", pred, gold, exc_info=True
        )
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
    found = find_answer(output, style)
    ext = found.extraction
    extracted, correct = ext.text, is_equivalent(ext.text, reference, style)
    if not correct and style == "math" and found.box is not None:
        parts = _boxed_parts(found.text, reference)
        if parts is not None:
            extracted, correct = ", ".join(parts), True
    return {
        "extracted": extracted,
        "marked": ext.marked,
        "correct": correct,
        "strict_correct": correct and ext.marked,
    }


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
    g = THOUSANDS_COMMA.sub("{,}", _LEFT_RIGHT.sub("", gold)).strip().strip("$").strip()
    if len(g) > MAX_MATH_CHARS or _parse_number(_latex_key(g), units=False) is not None:
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
        boxes = [b.content for b in itertools.islice(boxes_from_end(text), len(parts))][::-1]
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
