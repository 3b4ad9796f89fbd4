"""Property-based tests of the scorer (tinyslm.scoring), with hypothesis.

Whatever a model writes, extraction and comparison must return a verdict: never raise, never hang, never
run the text. Strategies build what breaks scorers: the answer markers and LaTeX pieces in random order,
nested braces and fractions, numbers with thousands separators, and huge digit strings. A separate
wall-clock test feeds the pathological inputs (a 5,001-digit 10**5000, "9" * 100,000, 50,000 nested
braces) that random generation would rarely reach.

Settings: no example database (nothing is written to the checkout), a per-example deadline well above
the milliseconds an example takes (it catches a regular expression gone quadratic, not a busy CI
machine), and moderate example counts: the whole file runs in a few seconds.
"""

from __future__ import annotations

import builtins
import time
from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyslm.scoring import symbolic as scoring
from tinyslm.scoring.equivalence import is_equivalent, normalize_number, score_output
from tinyslm.scoring.extract import ANSWER_STYLES, Extraction, extract_answer, last_boxed

CHEAP = settings(
    max_examples=100,
    deadline=timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# The symbolic check runs math-verify (milliseconds, up to MATH_TIMEOUT_S each): fewer examples.
SYMBOLIC = settings(
    max_examples=30,
    deadline=timedelta(seconds=6),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MATH_TIMEOUT_S = 0.5

PIECES = [
    "\\boxed{",
    "\\fbox{",
    "\\boxed ",
    "}",
    "{",
    "\\{",
    "\\}",
    "####",
    "The answer is ",
    "Final Answer: ",
    "The final answer is ",
    " is ",
    "$",
    "$$",
    "\\$",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "\\frac",
    "\\dfrac{",
    "\\sqrt",
    "^",
    "_",
    "\\left(",
    "\\right)",
    "\\text{",
    "\\,",
    "\\!",
    "\\ ",
    "~",
    "{,}",
    ",\\!",
    ", ",
    ",",
    " ",
    "\n",
    "Question:",
    "<|im_end|>",
    "1,000",
    "1 000",
    "0,111",
    "3:30 p.m.",
    "%",
    "\\%",
    "^\\circ",
    "-",
    "−",
    ".",
    "x",
    "\\pi",
    "\\infty",
    "(",
    ")",
    "[",
    "]",
    "=",
    "e",
    "/",
    "I hope it is correct.",
    "\u2009",
    "\x00",
]
ALPHABET = "0123456789-+.,/:%$^_{}()[]\\ \nxeb#*=!~abcfrt\u2212\u00a0\u2009"

answer_text = st.lists(st.one_of(st.text(ALPHABET, max_size=6), st.sampled_from(PIECES)), max_size=30).map(
    "".join
)

leaf = st.sampled_from(["1", "2", "x", "\\pi", "-3", "0.5", "1,000", "2 500", "\\sqrt{2}"])
nested = st.recursive(
    leaf,
    lambda inner: st.one_of(
        inner.map(lambda a: "{" + a + "}"),
        inner.map(lambda a: "\\boxed{" + a + "}"),
        inner.map(lambda a: "\\left(" + a + "\\right)"),
        st.tuples(inner, inner).map(lambda ab: f"\\frac{{{ab[0]}}}{{{ab[1]}}}"),
        st.tuples(inner, inner).map(lambda ab: f"({ab[0]}, {ab[1]})"),
        st.tuples(inner, inner).map(lambda ab: f"{ab[0]}^{{{ab[1]}}}"),
        st.tuples(inner, inner).map(lambda ab: f"{ab[0]} + {ab[1]}"),
    ),
    max_leaves=25,
)
huge_number = st.one_of(
    st.builds(lambda d, n: d * n, st.sampled_from("0123456789"), st.integers(1, 20_000)),
    st.integers(1, 6000).map(lambda n: "1" + "0" * n),
    st.lists(st.integers(0, 999), min_size=1, max_size=3000).map(
        lambda g: "7" + "".join(f" {x:03d}" for x in g)
    ),
    st.lists(st.integers(0, 999), min_size=1, max_size=3000).map(
        lambda g: "7" + "".join(f",{x:03d}" for x in g)
    ),
)
any_text = st.one_of(answer_text, nested, huge_number, st.text(max_size=60))
gold_text = st.one_of(
    st.sampled_from(
        [
            "18",
            "11.0",
            "9 (apples)",
            "2:3",
            "Yes",
            "\\frac{1}{2}",
            "-2, 1",
            "(1,2), (3,4)",
            "\\{1, 2\\}",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            "10,\\!000",
            "[1, 2)",
            "x^2+1",
        ]
    ),
    answer_text,
    nested,
)
style = st.sampled_from(ANSWER_STYLES)


@pytest.fixture(scope="module", autouse=True)
def _warm_math_verify() -> None:
    """Import math-verify once, before any deadline counts (the import takes about a second)."""
    scoring._math_verify()


def _check_score(s: dict[str, Any]) -> None:
    assert set(s) == {"extracted", "marked", "correct", "strict_correct"}
    assert s["extracted"] is None or isinstance(s["extracted"], str)
    assert all(isinstance(s[k], bool) for k in ("marked", "correct", "strict_correct"))
    assert s["strict_correct"] == (s["correct"] and s["marked"])


# --------------------------------------------------------------------------------------------------
# Never raises, always a well-formed verdict
# --------------------------------------------------------------------------------------------------


@CHEAP
@given(text=any_text, style=style)
def test_extraction_always_answers(text: str, style: str) -> None:
    ext = extract_answer(text, style)
    assert isinstance(ext, Extraction) and isinstance(ext.marked, bool)
    assert ext.text is None or isinstance(ext.text, str)
    assert ext == extract_answer(text, style)  # deterministic
    boxed = last_boxed(text)
    assert boxed is None or boxed in text


@CHEAP
@given(text=any_text)
def test_number_reading_always_answers(text: str) -> None:
    value = normalize_number(text)
    assert value is None or isinstance(value, Fraction)
    if value is not None:  # the size guards hold: no number of more than 80 digits gets through
        assert len(str(abs(value.numerator))) <= 81 and len(str(value.denominator)) <= 81


@CHEAP
@given(output=any_text, gold=gold_text)
def test_number_scoring_always_answers(output: str, gold: str) -> None:
    _check_score(score_output(output, gold, "number"))
    assert isinstance(is_equivalent(output, gold, "number"), bool)


@SYMBOLIC
@given(pred=st.one_of(answer_text, nested), gold=gold_text)
def test_math_comparison_always_answers(pred: str, gold: str) -> None:
    start = time.monotonic()
    assert isinstance(is_equivalent(pred, gold, "math", timeout_s=MATH_TIMEOUT_S), bool)
    assert time.monotonic() - start < MATH_TIMEOUT_S + 2  # cheap checks plus one bounded symbolic check


@SYMBOLIC
@given(output=st.one_of(answer_text, nested), gold=gold_text)
def test_math_scoring_always_answers(output: str, gold: str) -> None:
    _check_score(score_output(output, gold, "math"))


@CHEAP
@given(a=any_text, style=style)
def test_an_answer_equals_itself_or_is_no_answer(a: str, style: str) -> None:
    """Reflexivity where it is cheap to decide: a plain number always equals its own spelling."""
    if normalize_number(a) is not None:
        assert is_equivalent(a, a, style if style == "number" else "number")


# --------------------------------------------------------------------------------------------------
# Thousands separators and lists, as properties
# --------------------------------------------------------------------------------------------------

SEPARATORS = [",", " ", "\u2009", "\u00a0", "\\,", "\\ ", "~", "\\!", "{,}", ",\\!"]


@CHEAP
@given(n=st.integers(0, 10**15), sep=st.sampled_from(SEPARATORS), s=style)
def test_every_grouped_spelling_is_the_number(n: int, sep: str, s: str) -> None:
    written = f"{n:,}".replace(",", sep)
    assert normalize_number(written) == n
    assert is_equivalent(written, str(n), s)
    assert score_output(f"So the total is {written}.\n#### {written}", str(n), s)["correct"]
    if sep not in (",", "{,}", ",\\!"):  # a comma list in running text is read differently (see below)
        assert score_output(f"It costs {written} dollars in all.", str(n), s)["correct"]


@CHEAP
@given(a=st.integers(1, 999), b=st.integers(0, 999), s=style)
def test_a_comma_and_a_space_make_a_list(a: int, b: int, s: str) -> None:
    written = f"{a}, {b:03d}"
    assert normalize_number(written) is None
    assert not is_equivalent(written, f"{a}{b:03d}", s)


@CHEAP
@given(b=st.integers(0, 999), s=style)
def test_a_leading_zero_group_is_no_thousands_group(b: int, s: str) -> None:
    assert normalize_number(f"0,{b:03d}") is None
    assert not score_output(f"#### 0,{b:03d}", str(b), s)["correct"] or b == 0


@CHEAP
@given(a=st.integers(1, 999), b=st.integers(0, 99_999).filter(lambda b: not 100 <= b <= 999), s=style)
def test_a_group_after_a_separator_has_three_digits(a: int, b: int, s: str) -> None:
    written = f"{a} {b}"
    assert normalize_number(written) is None
    assert not is_equivalent(written, f"{a}{b}", s)


# --------------------------------------------------------------------------------------------------
# Never executes model text
# --------------------------------------------------------------------------------------------------

SENTINEL = "tinyslm_property_sentinel"


@SYMBOLIC
@given(before=answer_text, after=answer_text, s=style)
def test_model_text_never_reaches_eval_or_exec(before: str, after: str, s: str) -> None:
    """eval/exec are wrapped: any call whose code mentions the sentinel (model text) fails the test."""
    payload = f"__import__('os').system('{SENTINEL}')"
    reached: list[str] = []
    real_eval, real_exec = builtins.eval, builtins.exec

    def guard(real: Any) -> Any:
        def wrapper(code: Any, *args: Any, **kwargs: Any) -> Any:
            if SENTINEL in str(code):
                reached.append(str(code)[:200])
                raise RuntimeError("model text reached eval/exec")
            return real(code, *args, **kwargs)

        return wrapper

    builtins.eval, builtins.exec = guard(real_eval), guard(real_exec)
    try:
        for output in (f"{before}{payload}{after}", f"The answer is {payload}", f"$\\boxed{{{payload}}}$"):
            score_output(output, "5", s)
            is_equivalent(payload, before or "5", s, timeout_s=MATH_TIMEOUT_S)
    finally:
        builtins.eval, builtins.exec = real_eval, real_exec
    assert reached == []


# --------------------------------------------------------------------------------------------------
# Pathological inputs, by wall clock
# --------------------------------------------------------------------------------------------------

PATHOLOGICAL = {
    "10**5000": "1" + "0" * 5000,
    "nines": "9" * 100_000,
    "marked nines": "#### " + "9" * 100_000,
    "boxed nines": "\\boxed{" + "9" * 100_000 + "}",
    "grouped": "1" + " 000" * 10_000,
    "grouped, one digit too many": "1" + " 111" * 10_000 + "1",
    "comma groups": "1" + ",000" * 10_000,
    "thin-space groups": "1" + "\\,000" * 10_000,
    "comma runs": "0,1" * 10_000,
    "lists": "1, " * 10_000,
    "digits apart": "1 2 " * 10_000,
    "braces": "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",
    "open boxes": "\\boxed{" * 20_000,
    "parentheses": "The answer is " + "(" * 50_000,
    "fractions": "\\frac{" * 5000 + "1" + "}{2}" * 5000,
    "escaped dollars": "$\\$" * 10_000,
    "final answers": "Final Answer: The final answer is " * 5000,
    "is": "$x$ is " * 5000,
    "many boxes": "\\boxed{1}" * 10_000,
    "box per part": "\\boxed{(1,2)}" * 20 + " Final answer: ",
    "towers": "\\boxed{9^{9^{9^{9}}}}",
}
GOLDS = ["5", "-2, 1", "(1,2), (3,4), (5,6), (7,8)"]
PER_INPUT_S = 3.0  # each input, all styles and golds: milliseconds to a second on a busy 2-core machine


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_inputs_are_bounded(name: str) -> None:
    text = PATHOLOGICAL[name]
    start = time.monotonic()
    for s in ANSWER_STYLES:
        for gold in GOLDS:
            _check_score(score_output(text, gold, s))
        assert isinstance(is_equivalent(text, "5", s, timeout_s=MATH_TIMEOUT_S), bool)
        assert isinstance(is_equivalent("5", text, s, timeout_s=MATH_TIMEOUT_S), bool)
        assert isinstance(is_equivalent(text[:900], "-2, 1", s, timeout_s=MATH_TIMEOUT_S), bool)
    normalize_number(text)
    last_boxed(text)
    elapsed = time.monotonic() - start
    assert elapsed < PER_INPUT_S, f"{name}: {elapsed:.2f}s"
