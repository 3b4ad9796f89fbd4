"""Prompt building: chat template for chat models, Question/Answer for base models, k-shot as turns."""

from __future__ import annotations

from tinyslm.data.benchmarks import Example
from tinyslm.data.prompts import build_base_prompt, build_messages, build_prompt, format_target

Q = Example(
    id="t1", question="Tom has 3 apples and buys 4 more. How many apples does he have?", reference="7"
)
SHOT = Example(id="s1", question="What is 2 + 2?", reference="4", solution="2 + 2 = 4.\n#### 4")
MATH_SHOT = Example(id="m1", question="Compute $1/2 + 1/2$.", reference="1", solution="We get $\\boxed{1}$.")


def test_zero_shot_chat_prompt_uses_the_template(real_tokenizer):
    p = build_prompt(real_tokenizer, Q, "number")
    assert p.startswith("<|im_start|>")
    assert p.rstrip().endswith("<|im_start|>assistant")
    assert Q.question in p and "#### <number>" in p


def test_math_prompt_asks_for_boxed(real_tokenizer):
    p = build_prompt(real_tokenizer, Q, "math")
    assert "\\boxed{}" in p and "####" not in p


def test_k_shot_chat_is_multi_turn():
    msgs = build_messages(Q, "number", [SHOT, SHOT])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"].endswith("#### 4")
    assert Q.question in msgs[-1]["content"]


def test_base_prompt_is_question_answer():
    assert build_base_prompt(Q, "number", []) == f"Question: {Q.question}\nAnswer:"
    two = build_base_prompt(Q, "number", [SHOT])
    assert two.startswith("Question: What is 2 + 2?\nAnswer: 2 + 2 = 4.\n#### 4\n\nQuestion: Tom")


def test_base_model_gets_base_prompt():
    class NoTemplate:
        chat_template = None

    assert build_prompt(NoTemplate(), Q, "number") == f"Question: {Q.question}\nAnswer:"


def test_targets_end_in_the_answer_marker():
    assert format_target(SHOT, "number").endswith("#### 4")
    assert format_target(Example("x", "q", "12", "Add them: 12"), "number").endswith("\n#### 12")
    assert format_target(MATH_SHOT, "math") == "We get $\\boxed{1}$."
    assert format_target(Example("x", "q", "\\frac{1}{2}", "Half."), "math").endswith(
        "$\\boxed{\\frac{1}{2}}$."
    )
