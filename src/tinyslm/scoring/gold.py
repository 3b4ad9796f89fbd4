"""Gold answers from dataset records: GSM8K's ``#### N`` and MATH's last ``\\boxed{}``."""

from __future__ import annotations

from tinyslm.core.errors import UserError
from tinyslm.scoring.extract import last_boxed

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
