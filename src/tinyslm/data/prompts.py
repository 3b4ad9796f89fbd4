"""Prompt building: chat vs base formatting, zero-shot and k-shot.

Pure functions. The training code builds its prompts with :func:`build_prompt` too (zero-shot, plus the
target from :func:`format_target`), so a fine-tuned model is asked exactly what it was trained on and
is scored by the same extractor.
"""

from __future__ import annotations

from typing import Any

from tinyslm.data.benchmarks import Example
from tinyslm.scoring.extract import last_boxed
from tinyslm.scoring.gold import gold_from_gsm8k_answer

INSTRUCTIONS = {
    "number": (
        "Solve the following math problem step by step. "
        'End your response with the final numerical answer on its own line, in the form "#### <number>".'
    ),
    "math": ("Solve the following math problem step by step. Put your final answer within \\boxed{}."),
}

# Base models see "Question: ...\nAnswer:"; generation stops at the next "Question:".
BASE_QUESTION = "Question: "
BASE_ANSWER = "\nAnswer:"


def is_chat_tokenizer(tokenizer: Any) -> bool:
    """A model is treated as a chat model when its tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_target(example: Example, answer_style: str) -> str:
    """The worked solution a model should produce for ``example``: ends in ``#### N`` or a ``\\boxed{}``.

    Used for few-shot exemplars and as the training target.
    """
    sol = (example.solution or "").strip()
    if answer_style == "math":
        if last_boxed(sol) is None:
            sol = (
                f"{sol}\nThe final answer is $\\boxed{{{example.reference}}}$."
                if sol
                else f"$\\boxed{{{example.reference}}}$"
            )
        return sol
    if "####" in sol:
        body, _, _ = sol.rpartition("####")
        return f"{body.rstrip()}\n#### {gold_from_gsm8k_answer(sol)}"
    return f"{sol}\n#### {example.reference}" if sol else f"#### {example.reference}"


def user_message(question: str, answer_style: str) -> str:
    return f"{INSTRUCTIONS[answer_style]}\n\n{question.strip()}"


def build_messages(example: Example, answer_style: str, exemplars: list[Example]) -> list[dict[str, str]]:
    """Multi-turn chat: each exemplar is a user turn and an assistant turn, then the question."""
    msgs: list[dict[str, str]] = []
    for ex in exemplars:
        msgs.append({"role": "user", "content": user_message(ex.question, answer_style)})
        msgs.append({"role": "assistant", "content": format_target(ex, answer_style)})
    msgs.append({"role": "user", "content": user_message(example.question, answer_style)})
    return msgs


def build_base_prompt(example: Example, answer_style: str, exemplars: list[Example]) -> str:
    parts = [
        f"{BASE_QUESTION}{ex.question.strip()}{BASE_ANSWER} {format_target(ex, answer_style)}\n\n"
        for ex in exemplars
    ]
    parts.append(f"{BASE_QUESTION}{example.question.strip()}{BASE_ANSWER}")
    return "".join(parts)


def build_prompt(
    tokenizer: Any, example: Example, answer_style: str, exemplars: list[Example] | None = None
) -> str:
    """The exact prompt text for one example (stored with its prediction)."""
    exemplars = exemplars or []
    if is_chat_tokenizer(tokenizer):
        return tokenizer.apply_chat_template(
            build_messages(example, answer_style, exemplars), tokenize=False, add_generation_prompt=True
        )
    return build_base_prompt(example, answer_style, exemplars)
