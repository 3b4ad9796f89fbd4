"""Tests for answer extraction and checking (tinyslm.scoring).

The outputs below are the shapes small models really produce: GSM8K chain of thought ending in
"#### 18", "The answer is $18.", a bare "So she makes $18 every day.", \\boxed answers, runs that keep
generating new "Question:" blocks or repeat their last line, answers with units, currency, percent
signs, trailing zeros, and outputs with no answer at all. The whole file runs in well under 30 s.
"""

from __future__ import annotations

import decimal
import json
import random
import re
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from tinyslm.core.errors import UserError
from tinyslm.scoring import equivalence as scoring_equivalence
from tinyslm.scoring import extract as scoring_extract
from tinyslm.scoring import symbolic as scoring_symbolic
from tinyslm.scoring.equivalence import is_equivalent, normalize_number, score_output
from tinyslm.scoring.extract import ANSWER_STYLES, Extraction, extract_answer, last_boxed
from tinyslm.scoring.gold import gold_from_gsm8k_answer, gold_from_math_solution

JANET = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast and bakes muffins with 4.\n"
    "So she has 16 - 3 - 4 = 9 eggs left.\n"
    "She sells them for $2 each, so she makes 9 * 2 = $18 every day."
)


# --------------------------------------------------------------------------------------------------
# Gold answers from dataset records
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n#### 18", "18"),
        ("The profit is $<<200000-130000=70000>>70,000\n#### 70,000", "70000"),
        ("It fell by 10 degrees.\n#### -10", "-10"),
        ("first #### 3 then the real line\n####  1,450,000 ", "1450000"),
    ],
)
def test_gold_from_gsm8k_answer(answer: str, gold: str) -> None:
    assert gold_from_gsm8k_answer(answer) == gold


def test_gold_from_gsm8k_answer_without_marker_is_a_user_error() -> None:
    with pytest.raises(UserError, match="####"):
        gold_from_gsm8k_answer("The answer is 18.")


@pytest.mark.parametrize(
    ("solution", "gold"),
    [
        ("so the answer is $\\boxed{\\frac{14}{3}}$.", "\\frac{14}{3}"),
        (
            "polar coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
        ),
        # MATH solutions sometimes box an intermediate result first: the LAST box is the answer.
        ("$x = \\boxed{\\frac{11}{2}}$ ... &=\\boxed{161}.\n\\end{align*}", "161"),
        ("The set is $\\boxed{\\{1, 2\\}}$.", "\\{1, 2\\}"),
        ("Hence $\\fbox{7}$ is it.", "7"),
        ("The answer is $\\boxed{\\text{(C)}}$.", "\\text{(C)}"),
        ("no box here, the answer is 7", ""),
    ],
)
def test_gold_from_math_solution(solution: str, gold: str) -> None:
    assert gold_from_math_solution(solution) == gold


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("\\boxed{5}", "5"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{3}, finally \\boxed{18}", "18"),
        ("\\boxed 5$", "5"),
        # "Put your final answer within \boxed{}" echoed after the answer: the empty box is skipped.
        ("\\boxed{42}. (I put the final answer within \\boxed{}.)", "42"),
        # Output cut at the token limit inside the last box: fall back to the previous complete one.
        ("\\boxed{12} ... so the answer is \\boxed{\\frac{1}{", "12"),
        ("\\boxed{(-\\infty, 3]}", "(-\\infty, 3]"),
        ("no box", None),
        ("", None),
    ],
)
def test_last_boxed(text: str, content: str | None) -> None:
    assert last_boxed(text) == content


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("18", Fraction(18)),
        ("$1,234.50", Fraction(2469, 2)),
        ("11.0", Fraction(11)),
        ("11.", Fraction(11)),
        ("$11.00", Fraction(11)),
        ("\\$11.00", Fraction(11)),
        ("11 apples", Fraction(11)),
        ("9 (apples)", Fraction(9)),
        ("14  (seats)", Fraction(14)),
        ("5 (pieces of candy)", Fraction(5)),
        ("18 years old", Fraction(18)),
        ("1,000", Fraction(1000)),
        ("1,450,000", Fraction(1450000)),
        ("50%", Fraction(50)),
        ("50\\%", Fraction(50)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac12", Fraction(1, 2)),
        ("-(1/3)", Fraction(-1, 3)),
        (".5", Fraction(1, 2)),
        ("-5", Fraction(-5)),
        ("−5", Fraction(-5)),  # unicode minus
        ("x = 12", Fraction(12)),
        ("Total: $12", Fraction(12)),
        ("**18**", Fraction(18)),
        ("\\boxed{18}", Fraction(18)),
        ("\\text{18 dollars}", Fraction(18)),
        ("30^\\circ", Fraction(30)),
        ("1.5e3", Fraction(1500)),
    ],
)
def test_normalize_number(text: str, value: Fraction) -> None:
    assert normalize_number(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "apples",
        "1,2",  # not a thousands separator: a list
        "18 + 2",
        "5 apples and 3 pears",
        "2:3",  # a ratio is not one number (compared as text, see below)
        "3:30 p.m.",
        "1/0",
        "\\frac{1}{0}",
        "1e999999999",
        "7" * 10_000,
        "--5",
        "2 1/2",
    ],
)
def test_normalize_number_rejects(text: str) -> None:
    assert normalize_number(text) is None


# --------------------------------------------------------------------------------------------------
# Extraction, style "number"
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "text", "marked"),
    [
        (JANET + "\n#### 18", "18", True),
        (JANET + "\nThe answer is $18.", "$18", True),
        (JANET, "$18", False),  # no marker: the last number
        (JANET + "\nThe final answer is \\boxed{18}.", "18", True),
        (JANET + "\n#### $18.00", "$18.00", True),
        (JANET + "\n#### 18 dollars", "18", True),
        ("The answer is: 18", "18", True),
        ("So the answer is 5 + 13 = 18.", "18", True),
        ("The answer is the sum of 8 and 10, which is 18.", "18", True),
        ("Final Answer: The final answer is $18$. I hope it is correct.", "$18", True),
        ("**Final Answer:** 18", "18", True),
        ("The temperature dropped 12 degrees, so it is now -5 degrees.\n#### -5", "-5", True),
        ("The discount is 25%.\n#### 25%", "25%", True),
        ("He needs 1,000 bricks.\n#### 1,000", "1,000", True),
        ("Each gets 3/4 of a pie.\n#### 3/4", "3/4", True),
        ("####\n18", "18", True),  # marker alone on its line
        # ASDiv: ratios, clock times and names are answers too.
        ("The answer is 2:3.", "2:3", True),
        ("The answer is 3:30 p.m.", "3:30 p.m.", True),
        ("The answer is Mrs. Hilt. She has 5 more.", "Mrs. Hilt", True),
        ("Step 1: 16 - 3 - 4 = 9 eggs.\nStep 2: 9 * 2 = 18.\n**Answer:** $18", "$18", False),
        ("The answer is: $\\boxed{18}$", "18", True),
        ("\\boxed{18 \\text{ dollars}}", "18", True),
        ("#### 18.00\n#### 18.00\n#### 18.00", "18.00", True),
        ("I am not sure how to solve this problem.", None, False),
        ("", None, False),
    ],
)
def test_extract_number_style(output: str, text: str | None, marked: bool) -> None:
    assert extract_answer(output, "number") == Extraction(text, marked)


def test_first_hash_marker_wins_over_run_on() -> None:
    """Small models keep writing the next few-shot question and answer it; the first #### is the answer."""
    output = (
        JANET
        + "\n#### 18\n\nQuestion: Tom has 3 apples and buys 4 more. How many does he have?\n"
        + "Answer: He has 3 + 4 = 7 apples.\n#### 7"
    )
    assert extract_answer(output, "number") == Extraction("18", True)


def test_first_hash_marker_wins_even_without_a_question_header() -> None:
    output = JANET + "\n#### 18\n#### 18\n#### 36\n#### 72"  # a degenerate loop
    assert extract_answer(output, "number").text == "18"


def test_run_on_after_unmarked_answer_is_cut() -> None:
    output = "She makes $18 every day.\n\nQ: A farmer has 7 cows. How many legs?\nA: 7 * 4 = 28."
    assert extract_answer(output, "number") == Extraction("$18", False)


def test_first_answer_is_wins_in_a_repetition_loop() -> None:
    output = "The answer is 18. " * 50 + "The answer is 36."
    assert extract_answer(output, "number") == Extraction("18", True)


def test_chat_end_of_turn_token_ends_the_answer() -> None:
    output = "#### 18<|im_end|>\n<|im_start|>user\nAnother question with 99 in it"
    assert extract_answer(output, "number").text == "18"
    assert extract_answer("so 18 eggs<|im_end|>junk 99", "number").text == "18"


def test_restated_problem_at_the_start_is_not_cut() -> None:
    output = "Problem: Janet has 16 eggs and eats 3.\nSolution: 16 - 3 = 13.\n#### 13"
    assert extract_answer(output, "number") == Extraction("13", True)


def test_numbered_sub_questions_are_not_run_on() -> None:
    """A real MATH solution (row 3883) walks through "Question 5:", "Question 6:" before its box."""
    output = (
        "Question 5: yes, as $\\frac{1}{2}j = \\frac{j}{2}$.\n\nQuestion 6: yes.\n\nThe sum is $\\boxed{14}$."
    )
    assert extract_answer(output, "math") == Extraction("14", True)


def test_hash_marker_preferred_over_boxed_and_answer_is() -> None:
    assert extract_answer("The answer is 5.\n\\boxed{6}\n#### 7", "number").text == "7"
    assert extract_answer("The answer is 5.\n\\boxed{6}", "number").text == "6"


# --------------------------------------------------------------------------------------------------
# Extraction, style "math"
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "text", "marked"),
    [
        (
            "We get $r = 3$ and $\\theta = \\frac{\\pi}{2}$, so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            True,
        ),
        ("First $\\boxed{2}$ is wrong; the real answer is $\\boxed{\\dfrac{9}{7}}$.", "\\dfrac{9}{7}", True),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}", True),
        ("The answer is 3.5.", "3.5", True),
        ("The final answer is x = 2. Done.", "x = 2", True),
        ("#### 42", "42", True),
        ("Solving, we find $x = 5$.", "x = 5", False),  # last math span
        ("Solving gives 12, then 14.", "14", False),  # last number
        ("No idea.", None, False),
        # the box is complete, the run-on problem after it is not an answer
        ("So $\\boxed{5}$.\n\nProblem: Find $\\boxed{7}$ ...", "5", True),
    ],
)
def test_extract_math_style(output: str, text: str | None, marked: bool) -> None:
    assert extract_answer(output, "math") == Extraction(text, marked)


# --------------------------------------------------------------------------------------------------
# Equivalence, style "number"
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        # SVAMP/MAWPS golds are floats written "11.0": this is the bug we must not have.
        ("11", "11.0"),
        ("11.0", "11.0"),
        ("$11.00", "11.0"),
        ("11 apples", "11.0"),
        ("11.", "11.0"),
        ("\\boxed{11}", "11.0"),
        ("18", "18"),
        ("1000", "1,000"),
        ("1,000", "1000"),
        ("$1,000.00", "1000"),
        ("-10", "-10"),
        ("25%", "25"),
        ("11.5", "11.5"),
        ("23.86", "23.86"),
        # ASDiv golds carry units in parentheses
        ("9", "9 (apples)"),
        ("$5.00", "5 (dollars)"),
        ("14", "14  (seats)"),
        ("-1/3", "-(1/3)"),
        ("2.5", "5/2"),
        ("3/4", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        # non-terminating rational vs the decimal a dataset stores: within REL_TOL
        ("1/3", "0.3333333"),
        ("0.3333", "1/3"),
        ("2/3", "0.6666666667"),  # MAWPS stores 2/3 like this
        # non-numeric ASDiv golds: text, case- and punctuation-insensitive; ratios element-wise
        ("2:3", "2:3"),
        ("2 : 3", "2:3"),
        ("3:30 PM", "3:30 p.m."),
        ("yes", "Yes"),
        ("Mrs Hilt", "Mrs. Hilt"),
        ("They are equal.", "They are equal"),
    ],
)
def test_number_equivalent(pred: str, gold: str) -> None:
    assert is_equivalent(pred, gold, "number")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (None, "18"),
        ("", "18"),
        ("17", "18"),
        ("18.01", "18"),
        ("10001", "10000"),  # Qwen's grader (isclose rel_tol=1e-4) says equal; an exact answer is exact
        ("0.33", "1/3"),  # too few digits to stand for 1/3
        ("4.67", "\\frac{14}{3}"),
        ("0.5", "50%"),  # a percentage is the number written; see is_equivalent's docstring
        ("3:2", "2:3"),
        ("4:6", "2:3"),  # ratios are not reduced (ASDiv golds such as clock times share the form)
        ("no", "Yes"),
        ("Red and Blue", "Red"),
        ("eighteen", "18"),
        ("18 + 2", "20"),
        ("1,2", "12"),
    ],
)
def test_number_not_equivalent(pred: str | None, gold: str) -> None:
    assert not is_equivalent(pred, gold, "number")


# --------------------------------------------------------------------------------------------------
# Equivalence, style "math"
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("\\dfrac12", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "0.5"),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("[2, 5)", "[2,5)"),
        ("(-\\infty, 3]", "(-\\infty,3]"),
        ("x^2+2x+1", "(x+1)^2"),
        ("(x+2)(x+5)", "x^2+7x+10"),
        ("C", "\\text{(C)}"),
        ("(C)", "\\text{(C)}"),
        ("30", "30^\\circ"),
        ("30^{\\circ}", "30"),
        ("x = 5", "5"),
        ("10", "10\\%"),
        ("18.90", "\\$18.90"),
        ("\\sqrt{117}", "3\\sqrt{13}"),
        ("14/3", "\\frac{14}{3}"),
        ("4.6667", "\\frac{14}{3}"),
        ("18", "18\\text{ cm}^2"),
        ("10000", "10,\\!000"),
        ("\\{1, 2\\}", "\\{2, 1\\}"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ],
)
def test_math_equivalent(pred: str, gold: str) -> None:
    assert is_equivalent(pred, gold, "math")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("\\frac{1}{3}", "\\frac{1}{2}"),
        ("(2,1)", "(1,2)"),
        ("[2,5]", "[2,5)"),
        ("x^2+2x+2", "(x+1)^2"),
        ("5", "5x"),  # in math style trailing letters are not units
        ("D", "\\text{(C)}"),
        ("4.67", "\\frac{14}{3}"),
        ("2\\sqrt{13}", "3\\sqrt{13}"),
        ("", "5"),
        (None, "5"),
    ],
)
def test_math_not_equivalent(pred: str | None, gold: str) -> None:
    assert not is_equivalent(pred, gold, "math")


# --------------------------------------------------------------------------------------------------
# score_output
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "reference", "style", "expected"),
    [
        (JANET + "\n#### 18", "18", "number", ("18", True, True, True)),
        (JANET, "18", "number", ("$18", False, True, False)),  # right, but not in the asked format
        (JANET + "\n#### 17", "18", "number", ("17", True, False, False)),
        ("I cannot answer this.", "18", "number", (None, False, False, False)),
        ("She has 11.0 apples left.\n#### 11.0", "11", "number", ("11.0", True, True, True)),
        ("Each box holds 9 apples.\n#### 9", "9 (apples)", "number", ("9", True, True, True)),
        ("So $x = \\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", "math", ("\\dfrac{1}{2}", True, True, True)),
        ("Thus we get $\\frac{1}{2}$.", "\\frac{1}{2}", "math", ("\\frac{1}{2}", False, True, False)),
    ],
)
def test_score_output(output: str, reference: str, style: str, expected: tuple) -> None:
    s = score_output(output, reference, style)
    assert set(s) == {"extracted", "marked", "correct", "strict_correct"}
    assert (s["extracted"], s["marked"], s["correct"], s["strict_correct"]) == expected


@pytest.mark.parametrize("style", ["numbers", "", "MATH"])
def test_unknown_style_is_a_user_error(style: str) -> None:
    """A typo in a config must fail loudly, not score every answer as wrong."""
    assert style not in ANSWER_STYLES
    for call in (
        lambda: extract_answer("#### 5", style),
        lambda: is_equivalent("5", "5", style),
        lambda: score_output("#### 5", "5", style),
    ):
        with pytest.raises(UserError, match="answer style"):
            call()


# --------------------------------------------------------------------------------------------------
# lm-evaluation-harness parity (gsm8k.yaml): where it is right we agree, where it is wrong we differ
# --------------------------------------------------------------------------------------------------
#
# lm-eval's gsm8k task, re-stated from its YAML: the target is the full GSM8K answer; "strict-match"
# takes the FIRST match of `#### (\-?[0-9\.\,]+)`, "flexible-extract" the LAST match of
# `(-?[$0-9.,]{2,})|(-?[0-9]+)`; no match gives "[invalid]". exact_match then deletes the regexes
# `,`  `\$`  `(?s).*#### `  `\.$` from prediction and target, lower-cases both, and compares strings.

_LM_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")


def _lm_eval_exact_match(pred: str, target: str) -> bool:
    for rx in _LM_IGNORE:
        pred, target = re.sub(rx, "", pred), re.sub(rx, "", target)
    return pred.lower() == target.lower()


def _lm_eval_strict(output: str) -> str:
    found = re.findall(r"#### (\-?[0-9\.\,]+)", output)
    return found[0].strip() if found else "[invalid]"


def _lm_eval_flexible(output: str) -> str:
    found = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", output)
    return next(g for g in found[-1] if g).strip() if found else "[invalid]"


@pytest.mark.parametrize(
    ("output", "gold"),
    [
        (JANET + "\n#### 18", "18"),
        (JANET, "18"),  # flexible: "$18." -> "18"
        ("So the answer is 18.", "18"),
        ("The house cost $80,000 and the profit was $70,000.\n#### 70,000", "70000"),
        ("It got 10 degrees colder.\n#### -10", "-10"),
        ("She spends 5 + 3 = 8 dollars.\n#### 8 dollars", "8"),
        ("The discount is 25%.\n#### 25%", "25"),
    ],
)
def test_where_lm_eval_accepts_we_accept(output: str, gold: str) -> None:
    target = f"worked solution\n#### {gold}"
    lm_ok = _lm_eval_exact_match(_lm_eval_strict(output), target) or _lm_eval_exact_match(
        _lm_eval_flexible(output), target
    )
    assert lm_ok, "precondition: lm-eval accepts this case"
    assert score_output(output, gold, "number")["correct"]


@pytest.mark.parametrize(
    ("output", "gold", "lm_strict", "lm_flexible", "ours"),
    [
        # strict-match compares strings: "11.0" != "11". Numbers are numbers, so we say right.
        ("He has 11.0 apples.\n#### 11.0", "11", False, False, True),
        # trailing zeros: lm-eval keeps "18.00"; we read 18.
        ("She makes $18.00 every day.", "18", False, False, True),
        # an ellipsis is a flexible-extract "number" ("..." -> ".." after `\.$`), so the answer is lost.
        ("The answer is 18. I hope that helps...", "18", False, False, True),
        # a number after the answer line: flexible takes it; strict and we take the #### line.
        ("#### 18\nThat is 2 more than 16.", "18", True, False, True),
        # run-on: a model that does not stop answers the next question too; flexible scores that answer.
        (
            "The answer is 18.\n\nQuestion: Tom has 5 apples and eats 2. How many are left?\n"
            "Answer: 5 - 2 = 3. The answer is 3.",
            "18",
            False,
            False,
            True,
        ),
        (
            "The answer is 3.\n\nQuestion: Tom has 5 apples and eats 2. How many are left?\n"
            "Answer: 5 - 2 = 3. The answer is 3.",
            "3",
            False,
            True,
            True,
        ),
        # hedging: flexible credits the last of two candidates; we take the first number of the marked
        # line, so "18 or 19" is wrong for gold 19. Intentional: a hedge is not an answer.
        ("#### 18 or 19", "19", False, True, False),
    ],
)
def test_where_we_intentionally_differ_from_lm_eval(
    output: str, gold: str, lm_strict: bool, lm_flexible: bool, ours: bool
) -> None:
    target = f"worked solution\n#### {gold}"
    assert _lm_eval_exact_match(_lm_eval_strict(output), target) is lm_strict
    assert _lm_eval_exact_match(_lm_eval_flexible(output), target) is lm_flexible
    assert score_output(output, gold, "number")["correct"] is ours


# --------------------------------------------------------------------------------------------------
# Pathological inputs: bounded time, never an exception
# --------------------------------------------------------------------------------------------------

PATHOLOGICAL = [
    "2^{2^{2^{2^{2^{2^{2}}}}}}",
    "$\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}$",
    "10^{10^{10^{10}}}",
    "\\boxed{9^{9^{9}}}",
    "\\boxed{\\binom{10^{9}}{10^{5}}}",
    "\\boxed{100000!}",
    "7" * 10_000,
    "#### " + "9" * 10_000,
    "1e999999999",
    "The answer is 1e999999999.",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "\\boxed{" * 5000,
    "{" * 5000 + "1",
    "x" * 1_000_000,
    "The answer is " + "1+" * 300_000 + "1",
    "$" * 100_000,
    "\n" * 200_000 + "Question:",
    "#### " * 100_000,
    "1," * 300_000,
    "\\frac{" * 2000 + "1" + "}{2}" * 2000,
    "(x+1)^{10000}",
    "\x00\ud800 \u202e #### \U0001f600",
]


def test_pathological_inputs_finish_fast_and_never_raise() -> None:
    start = time.monotonic()
    for text in PATHOLOGICAL:
        for style in ANSWER_STYLES:
            s = score_output(text, "5", style)
            assert isinstance(s["correct"], bool)
            assert is_equivalent(text, "5", style) in (True, False)
            assert is_equivalent("5", text, style) in (True, False)
        normalize_number(text)
        last_boxed(text)
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"pathological inputs took {elapsed:.1f}s"


def test_fuzzed_strings_never_raise() -> None:
    rng = random.Random(1234)
    alphabet = "0123456789-+.,/:%$^_{}()[]\\ \nxe#*=!abcfrtext\u2212"
    for i in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        normalize_number(text)
        last_boxed(text)
        score_output(text, "12", "number")
        is_equivalent(text, "9 (apples)", "number")
        if i % 20 == 0:  # the symbolic path costs milliseconds per call
            score_output(text, "\\frac{1}{2}", "math")


def test_model_text_never_reaches_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sympy's parse_expr eval()s its input; we only hand model text to math-verify's LaTeX parser."""
    # A relative marker path: tmp_path holds digits ("pytest-5/"), which the payload's "answer" would
    # then contain, and gold "5" would be matched by the path, not by an eval (a flaky failure).
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    payload = "__import__('os').system('touch pwned')"
    for style in ANSWER_STYLES:
        assert not is_equivalent(payload, "5", style)
        assert not score_output(f"The answer is {payload}", "5", style)["correct"]
        assert not score_output(f"$\\boxed{{{payload}}}$", "0", style)["correct"]
    assert not marker.exists()


def test_number_scoring_is_cheap() -> None:
    """The number path runs on every prediction: thousands per second, no parser, no subprocess."""
    outputs = [JANET + f"\n#### {i}" for i in range(2000)]
    start = time.monotonic()
    n_correct = sum(score_output(o, "18", "number")["correct"] for o in outputs)
    elapsed = time.monotonic() - start
    assert n_correct == 1
    assert elapsed < 2, f"{elapsed:.2f}s for 2,000 outputs"


@pytest.mark.parametrize("bad", [None, 5, 5.0, b"5", ["5"]])
def test_non_string_inputs_do_not_raise(bad: object) -> None:
    assert normalize_number(bad) is None  # type: ignore[arg-type]
    assert is_equivalent(bad, "5", "number") in (True, False)  # type: ignore[arg-type]
    assert is_equivalent("5", bad, "math") in (True, False)  # type: ignore[arg-type]
    assert extract_answer(bad, "number").text in (None, "5", "5.0")  # type: ignore[arg-type]


def test_slow_symbolic_check_is_cut_at_timeout() -> None:
    """(x+1)^{999} passes the cheap guards but keeps sympy busy for minutes: the deadline stops it."""
    start = time.monotonic()
    assert not is_equivalent("(x+1)^{999}", "x^2+1", "math", timeout_s=0.5)
    assert time.monotonic() - start < 3
    assert is_equivalent("(x+1)^2", "x^2+2x+1", "math")  # and the next check still works


def test_an_outer_alarm_survives_a_check() -> None:
    """pytest-timeout and friends use SIGALRM too: our deadline must hand theirs back intact."""
    if not hasattr(signal, "setitimer"):
        pytest.skip("no setitimer on this platform")
    fired: list[int] = []

    def outer(signum: int, frame: object) -> None:
        fired.append(signum)

    previous = signal.signal(signal.SIGALRM, outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
        assert is_equivalent("x^2+2x+1", "(x+1)^2", "math")
        assert not is_equivalent("(x+1)^{999}", "x^2+1", "math", timeout_s=0.2)
        assert signal.getsignal(signal.SIGALRM) is outer
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < remaining <= 100
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_checks_off_the_main_thread_are_bounded_too() -> None:
    """Signals only work on the main thread; there the check runs in a helper process with a hard limit."""
    results: dict[str, object] = {}

    def work() -> None:
        t0 = time.monotonic()
        results["equal"] = is_equivalent("x^2+2x+1", "(x+1)^2", "math")
        results["different"] = is_equivalent("[2,5]", "[2,5)", "math")
        t1 = time.monotonic()
        results["slow"] = is_equivalent("(x+1)^{999}", "x^2+1", "math", timeout_s=0.5)
        results["slow_s"] = time.monotonic() - t1
        results["after"] = is_equivalent("\\sqrt{117}", "3\\sqrt{13}", "math")  # a fresh helper
        results["number"] = is_equivalent("$11.00", "11.0", "number")  # never needs the helper
        results["total_s"] = time.monotonic() - t0

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert results["equal"] is True
    assert results["different"] is False
    assert results["slow"] is False
    assert results["slow_s"] < 0.5 + scoring_extract.WORKER_GRACE_S + 1
    assert results["after"] is True
    assert results["number"] is True


# --------------------------------------------------------------------------------------------------
# Every gold answer of the real datasets is understood
# --------------------------------------------------------------------------------------------------


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _plain(value: Fraction) -> str:
    """A number written the plain way a model would: "9", "11.5", "-1/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    if scoring_equivalence._terminates(value):
        with decimal.localcontext(prec=100):
            return str(decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator))
    return f"{value.numerator}/{value.denominator}"


def test_every_number_gold_is_understood(data_dir: Path) -> None:
    start = time.monotonic()
    golds = {
        "gsm8k": [gold_from_gsm8k_answer(r["answer"]) for r in _jsonl(data_dir / "gsm8k" / "test.jsonl")],
        "svamp": [str(r["Answer"]) for r in json.loads((data_dir / "svamp" / "SVAMP.json").read_text())],
        "asdiv": [str(r["answer"]) for r in _jsonl(data_dir / "asdiv" / "test.jsonl")],
        "mawps": [str(r["target"]) for r in _jsonl(data_dir / "mawps" / "test.jsonl")],
    }
    for name, rows in golds.items():
        assert rows, name
        not_self_equal = [g for g in rows if not is_equivalent(g, g, "number")]
        assert not not_self_equal, f"{name}: {not_self_equal[:20]}"
        numeric = [(g, normalize_number(g)) for g in rows]
        non_numeric = [g for g, v in numeric if v is None]
        print(f"{name}: {len(rows)} golds, {len(non_numeric)} non-numeric")
        if name == "asdiv":  # names, "Yes", clock times and ratios: 120 of 2,215
            assert len(non_numeric) <= 0.07 * len(rows), non_numeric
        else:
            assert not non_numeric, f"{name}: {non_numeric[:20]}"
        # The gold against the same number written plainly ("9 (apples)" vs "9", "51.0" vs "51").
        wrong = [g for g, v in numeric if v is not None and not is_equivalent(_plain(v), g, "number")]
        assert not wrong, f"{name}: {wrong[:20]}"
    # The GSM8K worked solutions themselves are model-shaped outputs ending in "#### N".
    for r in _jsonl(data_dir / "gsm8k" / "test.jsonl")[:400]:
        assert score_output(r["answer"], gold_from_gsm8k_answer(r["answer"]), "number")["strict_correct"], r
    elapsed = time.monotonic() - start
    print(f"number golds checked in {elapsed:.2f}s")
    assert elapsed < 20


def test_every_math_gold_is_understood(data_dir: Path) -> None:
    start = time.monotonic()
    math500 = _jsonl(data_dir / "math500" / "test.jsonl")
    math = _jsonl(data_dir / "math" / "test.jsonl")
    failures: list[str] = []
    golds = [r["answer"] for r in math500] + [gold_from_math_solution(r["solution"]) for r in math]
    assert all(golds), "every MATH solution has a \\boxed{} answer"
    failures += [f"self: {g!r}" for g in golds if not is_equivalent(g, g, "math")]
    # The boxed answer of each MATH-500 solution against its separately written `answer` field: these
    # differ in spelling ("\dfrac" vs "\frac", "\$" or not) and go through the real comparison.
    failures += [
        f"solution vs answer: {r['answer']!r}"
        for r in math500
        if not is_equivalent(gold_from_math_solution(r["solution"]), r["answer"], "math")
    ]
    # Extraction from real solution text (several boxes, nested braces) finds the gold again.
    failures += [
        f"extract: row {i}"
        for i, r in enumerate(math)
        if not score_output(r["solution"], golds[500 + i], "math")["strict_correct"]
    ]
    # math-verify understands the golds: all of MATH-500 and every 20th MATH gold.
    parse_failures = [g for g in [r["answer"] for r in math500] + golds[500::20] if not _sympy_parsed(g)]
    n_checked = len(golds) * 2 + len(math500) + len(math)
    n_failed = len(failures) + len(parse_failures)
    elapsed = time.monotonic() - start
    print(f"math golds: {n_failed} failures in {n_checked} checks, {elapsed:.2f}s")
    for f in failures + [f"parse: {g!r}" for g in parse_failures]:
        print("  ", f)
    assert len(failures) <= 0.01 * len(golds)
    assert len(parse_failures) <= 0.01 * (len(math500) + len(golds[500::20]))
    assert elapsed < 30


def _sympy_parsed(gold: str) -> bool:
    return any(not isinstance(x, str) for x in scoring_symbolic._parse_math(gold))


# --------------------------------------------------------------------------------------------------
# Thousands separators: a comma, {,} or ,\! and space-like separators (space, thin space, \, \ ~ \!)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2 500", Fraction(2500)),
        ("4\u2009250", Fraction(4250)),  # thin space
        ("7\u00a0300", Fraction(7300)),  # no-break space
        ("12\\,600", Fraction(12600)),
        ("12\\ 600", Fraction(12600)),
        ("12~600", Fraction(12600)),
        ("12\\!600", Fraction(12600)),
        ("12{,}600", Fraction(12600)),
        ("12,\\!600", Fraction(12600)),
        ("3 000 250", Fraction(3000250)),
        ("\\$6\\,400", Fraction(6400)),
        ("2 500.75", Fraction(250075, 100)),
        ("8 400 marbles", Fraction(8400)),
    ],
)
def test_space_grouped_numbers(text: str, value: Fraction) -> None:
    assert normalize_number(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "7 12",  # the group after a separator has exactly three digits
        "7 1200",
        "45 67",
        "7\\,12",
        "6 500 12",
        "0,250",  # a leading group 0 is no thousands group
        "0 250",
        "05,250",
        "4, 250",  # a comma and a space: a list
        "4, 250, 600",
        "4,250 600",  # one number uses one separator
        "4,25",
    ],
)
def test_not_grouped_numbers(text: str) -> None:
    assert normalize_number(text) is None


@pytest.mark.parametrize(
    ("output", "gold"),
    [
        ("So the farm has 2 500 chickens.\n#### 2 500", "2500"),
        ("The trip costs 12 600 dollars in total.", "12600"),  # unmarked: the last number
        ("The answer is $4\\,250$.", "4250"),
        ("The answer is 12{,}600.", "12600"),
        ("They sold 3 000 250 tickets.", "3000250"),
        ("#### 7\u2009300", "7300"),
    ],
)
def test_grouped_numbers_are_one_answer_in_number_style(output: str, gold: str) -> None:
    assert score_output(output, gold, "number")["correct"]


@pytest.mark.parametrize(
    ("output", "gold"),
    [
        ("The trip costs 12 600 dollars in total.", "12600"),
        ("So we need $6{,}400$ tiles... wait, we need 6{,}400 tiles.", "6400"),
        ("We count 12\\,600 paths", "12600"),
        ("The answer is 12\\,600.", "12600"),
    ],
)
def test_grouped_numbers_are_one_answer_in_math_style(output: str, gold: str) -> None:
    assert score_output(output, gold, "math")["correct"]


@pytest.mark.parametrize(
    ("output", "gold", "style"),
    [
        ("She ran 2 100-meter races.", "2100", "number"),  # 100 belongs to "100-meter"
        ("The numbers are 4, 250 and 6.", "4250", "number"),
        ("#### 0,250", "250", "number"),
        ("#### 0,250", "250", "math"),
        ("The values are 7 and 1 2.", "12", "number"),
    ],
)
def test_lists_and_short_groups_are_not_grouped_numbers(output: str, gold: str, style: str) -> None:
    assert not score_output(output, gold, style)["correct"]


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("45, 678", "45678"),  # a comma followed by a space is a list, in LaTeX too
        ("45, 678", "45,678"),
        ("0,250", "250"),
        ("7 12", "712"),
        ("1 2", "3"),  # math-verify alone reads "1 2" as 3
        ("7\\,12", "712"),
    ],
)
def test_math_lists_are_not_numbers(pred: str, gold: str) -> None:
    assert not is_equivalent(pred, gold, "math")


def test_boxed_list_with_comma_space_is_not_a_thousands_number() -> None:
    assert not score_output("So the two answers are $\\boxed{45, 678}$.", "45678", "math")["correct"]


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("45,678", "45678"),
        ("45{,}678", "45678"),
        ("45,\\! 678", "45678"),
        ("45 678", "45678"),
        ("\\frac 3 4", "0.75"),
        ("(3, 100)", "(3,100)"),  # inside brackets a comma always separates, with or without a space
        ("\\left( 12, 345 \\right)", "(12,345)"),
    ],
)
def test_math_grouped_numbers_still_equal(pred: str, gold: str) -> None:
    assert is_equivalent(pred, gold, "math")


# --------------------------------------------------------------------------------------------------
# An escaped dollar is a currency sign, never a math delimiter
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "text", "marked"),
    [
        ("Final Answer: The final answer is $\\$14.50$. I hope it is correct.", "\\$14.50", True),
        ("The pen costs \\$3 and the book \\$11, so she pays \\$14 in all.", "\\$14", False),
        (
            "The price is \\$3 per pound, so the cost is $4 \\cdot \\$3 = \\$12$.",
            "4 \\cdot \\$3 = \\$12",
            False,
        ),
    ],
)
def test_escaped_dollar_is_currency_in_math_style(output: str, text: str, marked: bool) -> None:
    assert extract_answer(output, "math") == Extraction(text, marked)


def test_escaped_dollar_answer_is_right_in_math_style() -> None:
    assert score_output(
        "Final Answer: The final answer is $\\$14.50$. I hope it is correct.", "14.50", "math"
    )["strict_correct"]
    assert score_output("The pen costs \\$3 and the book \\$11, so she pays \\$14 in all.", "\\$14", "math")[
        "correct"
    ]


# --------------------------------------------------------------------------------------------------
# Final-answer sentences ("... is N") in the math style
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "text"),
    [
        ("Final Answer: The smallest such $k$ is 12. I hope it is correct.", "12"),
        ("Final Answer: The value of $x$ is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("Final Answer: The area of the triangle is -7.5.", "-7.5"),
        ("The final answer is: the number of ways is 210.", "210"),
        # nothing answer-like after "is": the sentence stays as it is
        ("Final Answer: The sum is odd.", "The sum is odd"),
    ],
)
def test_math_final_answer_sentence(output: str, text: str) -> None:
    assert extract_answer(output, "math") == Extraction(text, True)


# --------------------------------------------------------------------------------------------------
# The last marker wins: a final-answer line after the last box overrides the box
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "style", "text"),
    [
        (
            "Here $\\boxed{15}$ counts the pairs.\n\nFinal Answer: The final answer is $16$. I hope it is correct.",
            "math",
            "16",
        ),
        ("So $n = \\boxed{4}$ at first, and after the correction:\nThe final answer is 9.", "math", "9"),
        ("The total is \\boxed{24}.\n#### 25", "math", "25"),
        ("The total is \\boxed{24}, then I double-check.\nThe final answer is 26.", "number", "26"),
        # a box after the final-answer line is later still
        ("The final answer is 3. Let me box it: $\\boxed{4}$.", "math", "4"),
        # "the answer is" (not "final") after a box is prose, not an answer line
        ("So $\\boxed{12}$. Note that the answer is independent of $x$.", "math", "12"),
        ("So $\\boxed{12}$.\n\nFinal answer: we are done with this problem.", "math", "12"),
        ("So \\boxed{12}.\nFinal answer: we are done with this problem.", "number", "12"),
    ],
)
def test_last_marker_wins(output: str, style: str, text: str) -> None:
    assert extract_answer(output, style) == Extraction(text, True)


# --------------------------------------------------------------------------------------------------
# One box per part of a multi-part gold
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "gold", "extracted"),
    [
        ("The roots are $x = \\boxed{-5}$ and $x = \\boxed{3}$.", "-5, 3", "-5, 3"),
        ("The roots are $x = \\boxed{3}$ and $x = \\boxed{-5}$.", "-5, 3", "3, -5"),  # a list is a set
        ("The solutions are $\\boxed{(2, 7)}$ and $\\boxed{(0, -1)}$.", "(0,-1), (2,7)", "(2, 7), (0, -1)"),
        ("So $\\boxed{\\frac{1}{2}}$ and $\\boxed{4}$.", "\\{4, \\tfrac12\\}", "\\frac{1}{2}, 4"),
        # the final k boxes: an earlier intermediate box does not count
        (
            "First $\\boxed{10}$ is the discriminant; the roots are $\\boxed{-5}$, $\\boxed{3}$.",
            "3, -5",
            "-5, 3",
        ),
        # a tuple is ordered: r first, then theta
        (
            "$r = \\boxed{6}$ and $\\theta = \\boxed{\\frac{\\pi}{3}}$",
            "\\left( 6, \\frac{\\pi}{3} \\right)",
            "6, \\frac{\\pi}{3}",
        ),
    ],
)
def test_one_box_per_part(output: str, gold: str, extracted: str) -> None:
    s = score_output(output, gold, "math")
    assert s == {"extracted": extracted, "marked": True, "correct": True, "strict_correct": True}


@pytest.mark.parametrize(
    ("output", "gold"),
    [
        ("The roots are $\\boxed{-5}$ and $\\boxed{4}$.", "-5, 3"),  # one part wrong
        ("The roots are $\\boxed{3}$ and $\\boxed{3}$.", "-5, 3"),  # one box cannot state two parts
        ("The root is $\\boxed{3}$.", "-5, 3"),  # fewer boxes than parts
        ("$\\boxed{-5}$, then $\\boxed{3}$, then $\\boxed{8}$.", "-5, 3"),  # the final two boxes are 3, 8
        ("$\\theta = \\boxed{\\frac{\\pi}{3}}$ and $r = \\boxed{6}$", "\\left( 6, \\frac{\\pi}{3} \\right)"),
        ("$\\boxed{1}$ and $\\boxed{2}$", "[1, 2)"),  # an interval is one part
        ("$\\boxed{58}$ and $\\boxed{500}$", "58,500"),  # a number is one part
        ("$\\boxed{10}$ and $\\boxed{000}$", "10,\\!000"),
    ],
)
def test_one_box_per_part_rejects(output: str, gold: str) -> None:
    s = score_output(output, gold, "math")
    assert not s["correct"] and not s["strict_correct"]
    assert s["extracted"] == last_boxed(output)  # otherwise the last box is the answer


def test_one_box_per_part_only_for_boxes() -> None:
    """The rule reads boxes: an answer taken from a final-answer line is compared as it stands."""
    output = "$\\boxed{-5}$ and $\\boxed{3}$.\nFinal Answer: The final answer is $3$."
    assert score_output(output, "-5, 3", "math") == {
        "extracted": "3",
        "marked": True,
        "correct": False,
        "strict_correct": False,
    }


# --------------------------------------------------------------------------------------------------
# tiny-slm score: bad prediction files are one error line naming file:line
# --------------------------------------------------------------------------------------------------


def _score_cli(tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from tinyslm.cli import main

    src = tmp_path / "theirs.jsonl"
    src.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    rc = main(
        ["score", "--benchmark", "gsm8k", "--predictions", str(src), "--output", str(tmp_path / "out.jsonl")]
    )
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [
                '{"id": "p1", "output": "#### 4", "reference": "4"}',
                "",
                '{"id": "p2", "output": "#### 9", "reference": "9"}',
                '{"id": "p1", "output": "#### 5", "reference": "5"}',
            ],
            "theirs.jsonl:4: duplicate id 'p1' (first on line 1)",
        ),
        (
            [
                '{"id": 7, "output": "#### 4", "reference": "4"}',
                '{"id": "7", "output": "#### 4", "reference": "4"}',
            ],
            "theirs.jsonl:2: duplicate id '7' (first on line 1)",
        ),
        (
            [
                '{"id": "p1", "output": "#### 4", "reference": "4"}',
                '{"id": "p2", "output": "None", "reference": null}',
            ],
            "theirs.jsonl:2: reference is null (id 'p2')",
        ),
        (
            ['{"id": "p1", "output": "#### 4", "reference": "  "}'],
            "theirs.jsonl:1: reference must be a non-empty",
        ),
        (
            ['{"id": "p1", "output": "#### 4", "reference": ["4"]}'],
            "theirs.jsonl:1: reference must be a non-empty",
        ),
        (['{"id": null, "output": "#### 4", "reference": "4"}'], "theirs.jsonl:1: id must be"),
        (
            ['{"id": "p1", "output": {"text": "4"}, "reference": "4"}'],
            "theirs.jsonl:1: output must be a string",
        ),
        (
            ['{"id": "p1", "output": "#### 4", "reference": "4"}', "[1, 2]"],
            "theirs.jsonl:2: expected a JSON object",
        ),
    ],
)
def test_score_command_rejects_bad_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], message: str
) -> None:
    rc, err = _score_cli(tmp_path, lines, capsys)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-scored is written


def test_score_command_accepts_numeric_references_and_null_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ['{"id": 1, "output": "#### 4", "reference": 4}', '{"id": 2, "output": null, "reference": "9"}']
    rc, _ = _score_cli(tmp_path, lines, capsys)
    assert rc == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["correct"] for o in out] == [True, False]


def test_a_swallowed_deadline_fires_again() -> None:
    """sympy has bare ``except:`` clauses, and Python ignores an exception raised in a gc callback or a
    ``__del__``: one swallowed deadline must not leave a check unbounded."""
    if not hasattr(signal, "setitimer"):
        pytest.skip("no setitimer on this platform")

    def stubborn() -> str:
        end = time.monotonic() + 5
        try:
            while time.monotonic() < end:
                pass
        except BaseException:  # swallows the first deadline
            pass
        while time.monotonic() < end:
            pass
        return "finished"

    start = time.monotonic()
    assert scoring_symbolic._with_alarm(stubborn, 0.2) is None
    assert time.monotonic() - start < 2
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # nothing left armed
    assert scoring_symbolic._with_alarm(lambda: "quick", 0.2) == "quick"
    time.sleep(0.4)  # no stray alarm fires after a check that finished in time


def test_deep_parentheses_never_reach_the_symbolic_checker() -> None:
    """Nesting counts (, [ and { alike: 5,000 open parentheses are no answer, decided without sympy."""
    start = time.monotonic()
    assert not is_equivalent("(" * 5000 + "1", "-2, 1", "math")
    assert not score_output("The answer is " + "[(" * 2500, "5", "math")["correct"]
    assert time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    ("output", "style", "text"),
    [
        ("Final Answer: Final Answer: $\\frac{2}{3}$", "math", "\\frac{2}{3}"),
        ("The answer is The answer is 14.", "number", "14"),
        ("Final Answer: The final answer is " * 200, "math", None),  # a loop states no answer
    ],
)
def test_a_marked_span_ends_at_the_next_marker(output: str, style: str, text: str | None) -> None:
    assert extract_answer(output, style).text == text


def test_a_deadline_swallowed_in_del_never_reaches_the_unraisable_hook(monkeypatch) -> None:
    """A deadline that lands in a ``__del__`` is swallowed and goes to ``sys.unraisablehook``; the re-firing
    alarm must still stop the check, and neither that deadline nor a re-fire may reach the previous hook
    (pytest's hook imports tracemalloc, and a re-fire inside it failed a CI run)."""
    import sys

    from tinyslm.scoring import symbolic as scoring_symbolic

    seen: list[str] = []

    def outer(u: object) -> None:
        seen.append(type(u.exc_value).__name__)

    monkeypatch.setattr(sys, "unraisablehook", outer)

    class Slow:
        def __del__(self) -> None:
            t = time.monotonic()
            while time.monotonic() - t < 0.4:  # busy past the deadline: the deadline lands in here
                pass

    def check() -> bool:
        Slow()  # freed at once, so __del__ runs inside the check
        t = time.monotonic()
        while time.monotonic() - t < 5:  # the re-fired alarm stops this
            pass
        return True

    start = time.monotonic()
    assert scoring_symbolic._with_alarm(check, 0.1) is None
    assert time.monotonic() - start < 2
    assert seen == []
    assert sys.unraisablehook is outer
